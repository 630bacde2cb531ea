//! Notification URLs in Apprise's forms, parsed into a typed [`Service`] at startup. Each
//! parse also makes the URL's masked form (every secret replaced by `***`), the only form that
//! reaches a log line or an error.
//!
//! The URLs are split by hand ([`split_url`]): Apprise URLs are not WHATWG URLs. Passwords
//! hold raw `?`, `@` and `#`, Slack channels are written `/#ops` and Teams tokens hold `@`; a
//! URL parser would take those for a query, a fragment or the end of the credentials. Only
//! percent-decoding is left to a crate.

use percent_encoding::percent_decode_str;

use super::roots::{ApiRoots, api_root};
use super::target::{MailSecurity, MailTarget, Service};

/// A notifier URL that cannot be used. Every form names the URL masked, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("a notifier URL must look like SCHEME://…")]
    NoScheme,
    #[error("notifier {masked}: unknown scheme {scheme:?}")]
    UnknownScheme { masked: String, scheme: String },
    #[error("notifier {masked}: {why}")]
    Malformed { masked: String, why: String },
}

/// A service with its URL, masked for messages.
#[derive(Clone)]
pub struct Notifier {
    pub service: Service,
    pub scheme: String,
    /// The URL with every secret replaced by `***`.
    pub masked: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked)
    }
}

/// Percent-decoding of a URL part (user names and passwords may hold reserved characters).
/// A `%` not followed by two hex digits stays as it is; invalid UTF-8 becomes U+FFFD.
fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The parts of what follows `scheme://`: credentials, host and path, query. The query starts
/// at the first `?` that reads as parameters (an `=` before any `@`), so that an unencoded `?`
/// in a password does not cut the URL; the credentials end at the last `@` before the path.
/// (Hand-written on purpose: see the module's documentation.)
fn split_url(rest: &str) -> (Option<&str>, &str, &str) {
    let mut query_at = rest.len();
    for (i, _) in rest.match_indices('?') {
        let after = &rest[i + 1..];
        let is_query = match (after.find('='), after.find('@')) {
            (_, None) => true,
            (Some(eq), Some(at)) => eq < at,
            (None, Some(_)) => false,
        };
        if is_query {
            query_at = i;
            break;
        }
    }
    let (main, query) = (&rest[..query_at], rest.get(query_at + 1..).unwrap_or(""));
    let authority_end = main.find('/').unwrap_or(main.len());
    match main[..authority_end].rfind('@') {
        Some(at) => (Some(&main[..at]), &main[at + 1..], query),
        None => (None, main, query),
    }
}

/// `base` with the path between the host and the last segment, if any.
fn with_path(base: String, segments: &[&str]) -> String {
    let path = segments
        .get(1..segments.len().saturating_sub(1))
        .unwrap_or_default()
        .join("/");
    if path.is_empty() {
        base
    } else {
        format!("{base}/{path}")
    }
}

impl Notifier {
    /// Parses one Apprise URL. The error names the URL with its secrets masked.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        Self::parse_with(text, &ApiRoots::new())
    }

    /// [`Notifier::parse`] with other API roots for the services with fixed hosts.
    pub fn parse_with(text: &str, roots: &ApiRoots) -> Result<Self, UrlError> {
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").ok_or(UrlError::NoScheme)?;
        let scheme = scheme.to_ascii_lowercase();
        let masked = mask(&scheme, rest);
        let bad = |why: &str| UrlError::Malformed {
            masked: masked.clone(),
            why: why.to_owned(),
        };
        let (userinfo, location, query) = split_url(rest);
        let params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_ascii_lowercase(), decode(v))
            })
            .collect();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let credentials = userinfo.map(|u| match u.split_once(':') {
            Some((user, pass)) => (decode(user), decode(pass)),
            None => (decode(u), String::new()),
        });
        let segments: Vec<&str> = location.split('/').filter(|s| !s.is_empty()).collect();
        let segment = |i: usize| segments.get(i).map(|s| (*s).to_owned()).unwrap_or_default();
        let host_port = segment(0);
        let need = |n: usize, what: &str| {
            if segments.len() < n {
                Err(bad(&format!("expected {what}")))
            } else {
                Ok(())
            }
        };
        let http_base =
            |secure: bool| format!("{}://{host_port}", if secure { "https" } else { "http" });
        let service = match scheme.as_str() {
            "json" | "jsons" => {
                need(1, "a host")?;
                let path = segments[1..].join("/");
                Service::Json {
                    url: format!("{}/{path}", http_base(scheme == "jsons")),
                    auth: credentials,
                }
            }
            "discord" => {
                need(2, "discord://WEBHOOK_ID/WEBHOOK_TOKEN")?;
                Service::Discord {
                    base: api_root("discord", roots),
                    id: segment(0),
                    token: segment(1),
                }
            }
            "slack" => {
                need(3, "slack://TOKEN_A/TOKEN_B/TOKEN_C")?;
                Service::Slack {
                    base: api_root("slack", roots),
                    tokens: [segment(0), segment(1), segment(2)],
                    channel: segments.get(3).map(|c| decode(c)),
                }
            }
            "tgram" => {
                need(2, "tgram://BOT_TOKEN/CHAT_ID")?;
                Service::Telegram {
                    base: api_root("tgram", roots),
                    token: segment(0),
                    chats: segments[1..].iter().map(|c| (*c).to_owned()).collect(),
                }
            }
            "ntfy" | "ntfys" => {
                need(1, "a topic")?;
                if segments.len() == 1 {
                    Service::Ntfy {
                        base: api_root("ntfy", roots),
                        topic: segment(0),
                        auth: credentials,
                    }
                } else {
                    Service::Ntfy {
                        base: http_base(scheme == "ntfys"),
                        topic: segments[1..].join("/"),
                        auth: credentials,
                    }
                }
            }
            "gotify" | "gotifys" => {
                need(2, "gotify://HOST/TOKEN")?;
                Service::Gotify {
                    base: with_path(http_base(scheme == "gotifys"), &segments),
                    token: segment(segments.len() - 1),
                }
            }
            "msteams" => {
                let (team, t) = match segments.len() {
                    3 => (None, &segments[..]),
                    n if n >= 4 => (Some(segments[0]), &segments[1..4]),
                    _ => return Err(bad("expected msteams://[TEAM/]TOKEN_A/TOKEN_B/TOKEN_C")),
                };
                let hook = format!("{}/IncomingWebhook/{}/{}", t[0], t[1], t[2]);
                let url = match (team, roots.get("msteams")) {
                    (_, Some(root)) => format!("{root}/webhookb2/{hook}"),
                    (Some(team), None) => {
                        format!("https://{team}.webhook.office.com/webhookb2/{hook}")
                    }
                    (None, None) => format!("https://outlook.office.com/webhook/{hook}"),
                };
                Service::Teams { url }
            }
            // `pover://` is Apprise's name for it.
            "pushover" | "pover" => {
                let Some((user, _)) = &credentials else {
                    return Err(bad("expected pushover://USER_KEY@APP_TOKEN"));
                };
                need(1, "pushover://USER_KEY@APP_TOKEN")?;
                Service::Pushover {
                    base: api_root("pushover", roots),
                    user: user.clone(),
                    token: segment(0),
                    device: segments.get(1).map(|d| (*d).to_owned()),
                }
            }
            "apprise" | "apprises" => {
                need(2, "apprise://HOST/TOKEN")?;
                Service::Apprise {
                    base: with_path(http_base(scheme == "apprises"), &segments),
                    token: segment(segments.len() - 1),
                }
            }
            "mailto" | "mailtos" => {
                need(1, "mailto://USER:PASSWORD@HOST")?;
                let security = if scheme == "mailtos" {
                    MailSecurity::Implicit
                } else {
                    MailSecurity::StartTls
                };
                let (host, port) = match host_port.rsplit_once(':') {
                    Some((h, p)) => (
                        h.to_owned(),
                        p.parse::<u16>()
                            .map_err(|_| bad("the port is not a number"))?,
                    ),
                    None => (
                        host_port.clone(),
                        match security {
                            MailSecurity::Implicit => 465,
                            MailSecurity::StartTls => 587,
                        },
                    ),
                };
                let default_from = match &credentials {
                    Some((u, _)) if u.contains('@') => u.clone(),
                    Some((u, _)) => format!("{u}@{host}"),
                    None => format!("ouroboros@{host}"),
                };
                let from = param("from").unwrap_or(default_from);
                let to: Vec<String> = param("to")
                    .map(|t| t.split(',').map(|a| a.trim().to_owned()).collect())
                    .unwrap_or_else(|| vec![from.clone()]);
                Service::Mail(MailTarget {
                    host,
                    port,
                    security,
                    credentials,
                    from,
                    to,
                })
            }
            other => {
                return Err(UrlError::UnknownScheme {
                    scheme: other.to_owned(),
                    masked,
                });
            }
        };
        Ok(Self {
            service,
            scheme,
            masked,
        })
    }
}

/// `scheme://…` with everything that may be secret replaced by `***`: credentials, and every
/// path segment but the host of services whose path is a token. The query is left out.
fn mask(scheme: &str, rest: &str) -> String {
    let (userinfo, location, _) = split_url(rest);
    let had_user = userinfo.is_some();
    let segments: Vec<&str> = location.split('/').filter(|s| !s.is_empty()).collect();
    // The first segment is a host only when something follows it (`ntfy://topic`,
    // `gotify://TOKEN` hold a secret there); a mail server is always a host.
    let mail = matches!(scheme, "mailto" | "mailtos");
    let keep_host = matches!(
        scheme,
        "json"
            | "jsons"
            | "ntfy"
            | "ntfys"
            | "gotify"
            | "gotifys"
            | "apprise"
            | "apprises"
            | "mailto"
            | "mailtos"
    );
    let mut shown = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if i == 0 && keep_host && (mail || segments.len() >= 2) {
            shown.push((*s).to_owned());
        } else {
            shown.push("***".to_owned());
        }
    }
    format!(
        "{scheme}://{}{}",
        if had_user { "***@" } else { "" },
        shown.join("/")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(url: &str) -> MailTarget {
        match Notifier::parse(url).map(|n| n.service) {
            Ok(Service::Mail(target)) => target,
            Ok(_) => panic!("{url}: not mail"),
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn every_scheme_parses_and_masks_its_secrets() {
        for (url, masked) in [
            (
                "json://hooks.lan:8080/ouroboros",
                "json://hooks.lan:8080/***",
            ),
            (
                "jsons://user:pw-sentinel@hooks.lan/x",
                "jsons://***@hooks.lan/***",
            ),
            ("discord://123/tok-sentinel", "discord://***/***"),
            ("slack://A/B/tok-sentinel/#ops", "slack://***/***/***/***"),
            ("tgram://bot-sentinel/42", "tgram://***/***"),
            ("ntfy://ntfy.lan/fleet", "ntfy://ntfy.lan/***"),
            (
                "ntfys://u:p-sentinel@ntfy.lan/fleet",
                "ntfys://***@ntfy.lan/***",
            ),
            (
                "gotify://gotify.lan/tok-sentinel",
                "gotify://gotify.lan/***",
            ),
            (
                "msteams://team/A/B/tok-sentinel",
                "msteams://***/***/***/***",
            ),
            (
                "pushover://user-sentinel@app-sentinel",
                "pushover://***@***",
            ),
            (
                "apprise://apprise.lan/tok-sentinel",
                "apprise://apprise.lan/***",
            ),
            (
                "mailto://u:pw-sentinel@smtp.lan?to=ops@lan",
                "mailto://***@smtp.lan",
            ),
            (
                "mailtos://u:pw-sentinel@smtp.lan:465",
                "mailtos://***@smtp.lan:465",
            ),
            ("ntfy://topic-sentinel", "ntfy://***"),
            (
                "mailtos://bob:pa?ss-sentinel@smtp.lan",
                "mailtos://***@smtp.lan",
            ),
            (
                "json://bob:p?ss-sentinel@hook.lan/x",
                "json://***@hook.lan/***",
            ),
            (
                "msteams://team/a1@a2-sentinel/b/c",
                "msteams://***/***/***/***",
            ),
            ("tgram://bot-sentinel/@channel", "tgram://***/***"),
            (
                "mailto://u:p-sentinel@smtp.lan?to=a@lan",
                "mailto://***@smtp.lan",
            ),
        ] {
            let n = Notifier::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(n.masked, masked, "{url}");
            assert!(!format!("{n:?}").contains("sentinel"), "{url}");
        }
        for (bad, says) in [
            ("irc://x/y", "unknown scheme"),
            (
                "discord://only-one-sentinel",
                "discord://WEBHOOK_ID/WEBHOOK_TOKEN",
            ),
            ("pushover://app", "USER_KEY@APP_TOKEN"),
            ("not a url", "SCHEME://"),
            ("mailto://u:p@smtp.lan:port", "not a number"),
            ("gotify://token-sentinel", "gotify://HOST/TOKEN"),
            ("msteams://a-sentinel/b-sentinel", "msteams://[TEAM/]"),
            ("json://u:p-sentinel@", "expected a host"),
        ] {
            let e = Notifier::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad}"));
            let e = e.to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("sentinel"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn tokens_and_channels_with_reserved_characters_keep_their_places() {
        let Ok(Service::Teams { url }) =
            Notifier::parse("msteams://team/a1@a2/b/c").map(|n| n.service)
        else {
            panic!("not teams");
        };
        assert_eq!(
            url,
            "https://team.webhook.office.com/webhookb2/a1@a2/IncomingWebhook/b/c"
        );
        let Ok(Service::Telegram { chats, .. }) =
            Notifier::parse("tgram://bot/@channel").map(|n| n.service)
        else {
            panic!("not telegram");
        };
        assert_eq!(chats, vec!["@channel".to_owned()]);
        // A Slack channel may come encoded (`%23ops`) or raw (`#ops`).
        for url in ["slack://A/B/C/%23ops", "slack://A/B/C/#ops"] {
            let Ok(Service::Slack { channel, .. }) = Notifier::parse(url).map(|n| n.service) else {
                panic!("{url}: not slack");
            };
            assert_eq!(channel.as_deref(), Some("#ops"), "{url}");
        }
        // Gotify and Apprise behind a path keep it in their base.
        let Ok(Service::Gotify { base, token }) =
            Notifier::parse("gotifys://lan:8443/push/gotify/tok").map(|n| n.service)
        else {
            panic!("not gotify");
        };
        assert_eq!(
            (base.as_str(), token.as_str()),
            ("https://lan:8443/push/gotify", "tok")
        );
    }

    #[test]
    fn credentials_are_percent_decoded_and_raw_question_marks_and_ats_survive() {
        let m = mail("mailtos://ops%40lan:p%3Aw@smtp.lan?to=a@lan,b@lan");
        assert_eq!(
            (m.host.as_str(), m.port, m.security),
            ("smtp.lan", 465, MailSecurity::Implicit)
        );
        assert_eq!(m.credentials, Some(("ops@lan".into(), "p:w".into())));
        assert_eq!(m.from, "ops@lan");
        assert_eq!(m.to, vec!["a@lan".to_owned(), "b@lan".to_owned()]);
        // Unencoded `?` and `@` in a password: the query starts at the `?` with an `=`, the
        // credentials end at the last `@`.
        let m = mail("mailto://bob:pa?ss@w0rd@smtp.lan:2525?to=ops@lan&from=me@lan");
        assert_eq!(m.credentials, Some(("bob".into(), "pa?ss@w0rd".into())));
        assert_eq!(
            (m.host.as_str(), m.port, m.security),
            ("smtp.lan", 2525, MailSecurity::StartTls)
        );
        assert_eq!(
            (m.from.as_str(), m.to.clone()),
            ("me@lan", vec!["ops@lan".into()])
        );
        // Defaults: STARTTLS on 587, from the user at the host, to the sender.
        let m = mail("mailto://bob:pw@smtp.lan");
        assert_eq!((m.port, m.from.as_str()), (587, "bob@smtp.lan"));
        assert_eq!(m.to, vec!["bob@smtp.lan".to_owned()]);
        let m = mail("mailto://smtp.lan?to=ops%2Boncall@lan");
        assert_eq!(
            (m.credentials, m.from.as_str()),
            (None, "ouroboros@smtp.lan")
        );
        assert_eq!(m.to, vec!["ops+oncall@lan".to_owned()]);
        // Basic credentials of a webhook, decoded; a user without password.
        let Ok(Service::Json { auth, url }) =
            Notifier::parse("json://u%20x:p%2Fw@hook.lan/x").map(|n| n.service)
        else {
            panic!("not json");
        };
        assert_eq!(url, "http://hook.lan/x");
        assert_eq!(auth, Some(("u x".into(), "p/w".into())));
        let Ok(Service::Ntfy { auth, .. }) =
            Notifier::parse("ntfys://tk@ntfy.lan/t").map(|n| n.service)
        else {
            panic!("not ntfy");
        };
        assert_eq!(auth, Some(("tk".into(), String::new())));
    }

    #[test]
    fn broken_percent_escapes_neither_panic_nor_leak() {
        assert_eq!(decode("p%a\u{e9}"), "p%a\u{e9}");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%41"), "%zzA");
        // A decoded byte sequence that is not UTF-8 becomes U+FFFD, not a panic.
        assert_eq!(decode("%ff"), "\u{fffd}");
        let n =
            Notifier::parse("json://u:p%a\u{e9}-sentinel@x/y").unwrap_or_else(|e| panic!("{e}"));
        assert!(!n.masked.contains("sentinel"));
    }

    #[test]
    fn pover_is_pushover() {
        let n =
            Notifier::parse("pover://user-sentinel@app-sentinel").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(n.service, Service::Pushover { .. }));
        assert_eq!(n.masked, "pover://***@***");
    }
}
