//! What every admin command takes (`--server`, `--pki-dir`, `--output`, ...), the checks of
//! host and container names they share, and how a command fails: its message and exit code.

use std::path::PathBuf;

use clap::Args;
use ouroboros_shared::cli::parse_https_url;
use ouroboros_shared::host::HostName;
use ouroboros_shared::names::*;

use super::output::OutputFormat;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Coordinator URL.
    #[arg(long, env = ENV_SERVER, default_value = DEFAULT_SERVER, value_name = "URL", value_parser = parse_https_url)]
    pub server: String,
    /// Directory made by `pki init`; the CLI certificate is read from there by default.
    #[arg(long, env = ENV_PKI_DIR, default_value = DEFAULT_PKI_DIR, value_name = "DIR")]
    pub pki_dir: PathBuf,
    /// CA certificate [default: PKI_DIR/ca.pem].
    #[arg(long, env = ENV_CA, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate [default: PKI_DIR/cli.pem].
    #[arg(long, env = ENV_CERT, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key [default: PKI_DIR/cli-key.pem].
    #[arg(long, env = ENV_KEY, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only this host's containers; with --container, that one container now.
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub host: Option<HostName>,
    /// Only containers of this name or id (on every host, or on --host).
    #[arg(long, value_name = "NAME", value_parser = parse_container)]
    pub container: Option<String>,
    /// Image reference to recreate from [default: the container's configured reference];
    /// needs --host and --container.
    #[arg(long, value_name = "REF", value_parser = parse_image, requires_all = ["host", "container"])]
    pub image: Option<String>,
}

/// A container name or id, or a Swarm service's unit name (`service:NAME`).
pub fn parse_container(value: &str) -> Result<String, String> {
    let name = crate::detect::swarm::service_name(value);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(
            "a container name or id (letters, digits, '_', '.' and '-'), or service:NAME for a Swarm service"
                .into(),
        )
    }
}

pub fn parse_image(value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not an image reference".into());
    }
    Ok(value.to_owned())
}

pub fn parse_host(value: &str) -> Result<HostName, String> {
    HostName::parse(value).map_err(|e| e.to_string())
}

/// Admin commands: exit code of a usage error (as clap and most CLIs use).
pub const EXIT_ADMIN_USAGE: i32 = 2;
/// Admin commands: exit code when the coordinator cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 3;

/// A failure to report with its exit code: 64 for the operator's input, 1 otherwise.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }
    pub fn runtime(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
    /// The coordinator cannot be reached (admin commands exit 3).
    pub fn unreachable(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_UNREACHABLE,
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_and_service_unit_names_parse_and_nothing_else_with_a_colon() {
        assert_eq!(parse_container("web-1.a_b"), Ok("web-1.a_b".into()));
        // The CLI and MONITOR take a service's unit name.
        assert_eq!(parse_container("service:web"), Ok("service:web".into()));
        assert!(parse_container("service:").is_err());
        assert!(parse_container("web:1").is_err());
        assert!(parse_container("service:a/b").is_err());
        assert!(parse_container("").is_err());
    }
}
