//! What both binaries do with the command line before anything else: parse with clap and turn
//! a usage error into one line on stderr and exit code 64.

use crate::names::EXIT_USAGE;

/// Parses the command line; on `--help`/`--version` prints and exits 0, on any other error
/// prints one line naming the option and exits 64.
pub fn parse_or_exit<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(error) => std::process::exit(report(&error)),
    }
}

/// Prints a clap error the project's way and returns the exit code to use.
pub fn report(error: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                EXIT_USAGE
            } else {
                0
            }
        }
        _ => {
            eprintln!("{}", first_line(&error.render().to_string()));
            EXIT_USAGE
        }
    }
}

/// Clap's rendered error up to its usage hint, folded into one line, e.g.
/// `error: invalid value 'x' for '--listen <ADDR>': invalid socket address syntax` or
/// `error: the following required arguments were not provided: --coordinator <URL>`.
fn first_line(rendered: &str) -> String {
    let text = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        "error: invalid command line".to_owned()
    } else {
        text
    }
}

/// The multi-threaded async runtime both binaries run on; exits 1 with one line if the
/// operating system refuses it.
pub fn runtime_or_exit() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// Accepts the coordinator URL, `https://HOST[:PORT]`.
pub fn parse_https_url(value: &str) -> Result<String, String> {
    let uri: tonic::transport::Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("must start with https:// (the coordinator only speaks mutual TLS)".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// An error with all its sources, `outer: inner: innermost`, for one-line reports.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Booleans as the Docker CLI and Ouroboros read them: `1`/`true`/`yes`/`on` and
/// `0`/`false`/`no`/`off`/empty.
pub fn parse_flag(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true/false, 1/0)")),
    }
}

/// A comma- or space-separated list (Ouroboros' MONITOR and IGNORE).
pub fn parse_list(value: &str) -> Result<Vec<String>, String> {
    Ok(value
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_the_missing_arguments_into_the_line() {
        assert_eq!(
            first_line(
                "error: the following required arguments were not provided:\n  --coordinator <URL>\n  --key <FILE>\n\nUsage: x --coordinator <URL>\n\nFor more information, try '--help'.\n"
            ),
            "error: the following required arguments were not provided: --coordinator <URL> --key <FILE>"
        );
    }

    #[test]
    fn keeps_only_the_first_line() {
        assert_eq!(
            first_line(
                "\nerror: invalid value 'x' for '--a'\n\nFor more information, try '--help'.\n"
            ),
            "error: invalid value 'x' for '--a'"
        );
    }
}
