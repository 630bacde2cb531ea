//! What a notification URL stands for, once parsed: the service, where it is and its
//! credentials. [`Service`] and [`MailTarget`] have no `Debug`: they hold the secrets; the
//! masked URL goes with them in [`Notifier`](super::urls::Notifier).

/// A service to notify, parsed from its Apprise URL. No `Debug`: it holds the secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Service {
    /// `json://` / `jsons://`: Apprise's JSON webhook.
    Json {
        url: String,
        auth: Option<(String, String)>,
    },
    /// `discord://ID/TOKEN`.
    Discord {
        base: String,
        id: String,
        token: String,
    },
    /// `slack://A/B/C[/#channel]`.
    Slack {
        base: String,
        tokens: [String; 3],
        channel: Option<String>,
    },
    /// `tgram://BOT_TOKEN/CHAT_ID[/CHAT_ID…]`.
    Telegram {
        base: String,
        token: String,
        chats: Vec<String>,
    },
    /// `ntfy://[user:pass@]host[:port]/topic`, `ntfys://…`, `ntfy://topic` (ntfy.sh).
    Ntfy {
        base: String,
        topic: String,
        auth: Option<(String, String)>,
    },
    /// `gotify://host[:port][/path]/TOKEN`, `gotifys://…`.
    Gotify { base: String, token: String },
    /// `msteams://[TEAM/]A/B/C`: the webhook URL it stands for.
    Teams { url: String },
    /// `pushover://USER_KEY@APP_TOKEN[/DEVICE]`.
    Pushover {
        base: String,
        user: String,
        token: String,
        device: Option<String>,
    },
    /// `apprise://host[:port][/path]/TOKEN`, `apprises://…`: an Apprise API server.
    Apprise { base: String, token: String },
    /// `mailto://user:pass@host[:port]?to=…&from=…` (STARTTLS), `mailtos://…` (TLS).
    Mail(MailTarget),
}

/// How a mail server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailSecurity {
    /// `mailto://`: plain first, STARTTLS when the server offers it (port 587 by default).
    StartTls,
    /// `mailtos://`: TLS from the first byte (port 465 by default).
    Implicit,
}

/// Where and as whom `mailto://` and `mailtos://` send. Addresses are checked when the mail
/// transport is built.
#[derive(Clone, PartialEq, Eq)]
pub struct MailTarget {
    pub host: String,
    pub port: u16,
    pub security: MailSecurity,
    /// User name and password, percent-decoded.
    pub credentials: Option<(String, String)>,
    pub from: String,
    pub to: Vec<String>,
}
