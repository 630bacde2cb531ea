//! API roots that replace the services' own (`OUROBOROS_NOTIFY_API`, `--notify-api`): egress
//! proxies, and tests that point the services with fixed hosts at a local receiver.

use std::collections::BTreeMap;

/// API roots that replace the services' own (`discord=http://proxy:8080,slack=…`: egress
/// proxies, and tests): `OUROBOROS_NOTIFY_API`.
pub type ApiRoots = BTreeMap<String, String>;

/// The services whose API root `--notify-api` may move.
const FIXED_HOST_SERVICES: [&str; 6] = ["discord", "slack", "tgram", "pushover", "msteams", "ntfy"];

/// Parses `name=url,name=url`. Empty or blank: none. An empty item or an unknown service
/// name is refused (a misspelt service would otherwise keep its default root unnoticed).
pub fn parse_api_roots(text: &str) -> Result<ApiRoots, String> {
    if text.trim().is_empty() {
        return Ok(ApiRoots::new());
    }
    text.split(',')
        .map(str::trim)
        .map(|pair| {
            if pair.is_empty() {
                return Err(
                    "an empty item in the list (two commas in a row, or one at an end)".into(),
                );
            }
            let (name, url) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "{:?} is not SERVICE=URL",
                    ouroboros_shared::echo::text(pair)
                )
            })?;
            let name = name.trim();
            if !FIXED_HOST_SERVICES.contains(&name) {
                return Err(format!(
                    "{:?} is not one of {}",
                    ouroboros_shared::echo::name(name),
                    FIXED_HOST_SERVICES.join(", ")
                ));
            }
            reqwest::Url::parse(url.trim()).map_err(|e| format!("{name}=: {e}"))?;
            Ok((name.to_owned(), url.trim().trim_end_matches('/').to_owned()))
        })
        .collect()
}

/// The API root of a service with a fixed host.
pub(super) fn api_root(service: &str, roots: &ApiRoots) -> String {
    if let Some(url) = roots.get(service) {
        return url.clone();
    }
    match service {
        "discord" => "https://discord.com",
        "slack" => "https://hooks.slack.com",
        "tgram" => "https://api.telegram.org",
        "pushover" => "https://api.pushover.net",
        "ntfy" => "https://ntfy.sh",
        _ => "https://outlook.office.com",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_roots_replace_fixed_hosts_and_refuse_unknown_names() {
        let roots = parse_api_roots("discord=http://proxy:8080/, ntfy=http://n.lan")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            roots.get("discord").map(String::as_str),
            Some("http://proxy:8080")
        );
        let Ok(super::super::target::Service::Discord { base, .. }) =
            super::super::urls::Notifier::parse_with("discord://1/t", &roots).map(|n| n.service)
        else {
            panic!("not discord");
        };
        assert_eq!(base, "http://proxy:8080");
        assert!(parse_api_roots("").is_ok_and(|r| r.is_empty()));
        for (bad, says) in [
            ("discord=http://a,,slack=http://b", "an empty item"),
            ("discrod=http://a", "is not one of"),
            ("discord", "is not SERVICE=URL"),
            ("discord=not a url", "discord=:"),
        ] {
            let e = parse_api_roots(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad}"));
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
