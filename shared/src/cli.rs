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

/// An error with all its sources, `outer: inner: innermost`, for one-line reports. A source
/// that says what was already said (libraries often wrap an error in one that displays the
/// same text, or include their cause in their own text) is left out, so that each failure
/// is named once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !part.is_empty() && !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
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

/// A comma- or space-separated list (Ouroboros' MONITOR and IGNORE). Empty or blank: no
/// items. Otherwise every item between commas must be there: `a,,b`, `,` or `a,` are
/// refused rather than read as fewer names (an empty MONITOR means every container).
pub fn parse_list(value: &str) -> Result<Vec<String>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    for part in value.split(',') {
        let before = items.len();
        items.extend(part.split_whitespace().map(str::to_owned));
        if items.len() == before {
            return Err("an empty item in the list (two commas in a row, or one at an end)".into());
        }
    }
    Ok(items)
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

    #[derive(Debug)]
    struct Link(&'static str, Option<Box<Link>>);
    impl std::fmt::Display for Link {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Link {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }
    fn chain(texts: &[&'static str]) -> Link {
        let (first, rest) = texts.split_first().unwrap();
        Link(first, (!rest.is_empty()).then(|| Box::new(chain(rest))))
    }

    #[test]
    fn an_error_chain_names_each_failure_once() {
        // tonic and hyper wrap their connect error in one that displays the same text.
        assert_eq!(
            error_chain(&chain(&[
                "transport error",
                "tcp connect error",
                "tcp connect error",
                "Connection refused (os error 111)"
            ])),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        // An outer error that already includes its cause.
        assert_eq!(
            error_chain(&chain(&[
                "transport error",
                "invalid peer certificate: BadSignature",
                "BadSignature"
            ])),
            "transport error: invalid peer certificate: BadSignature"
        );
        assert_eq!(error_chain(&chain(&["a", "b", "c"])), "a: b: c");
        assert_eq!(error_chain(&chain(&["a"])), "a");
    }

    #[test]
    fn lists_are_split_on_commas_and_spaces() {
        assert_eq!(parse_list(""), Ok(vec![]));
        assert_eq!(parse_list("  "), Ok(vec![]));
        assert_eq!(parse_list("a, b c,d").unwrap(), vec!["a", "b", "c", "d"]);
        assert_eq!(parse_list(" web ").unwrap(), vec!["web"]);
    }

    #[test]
    fn lists_with_an_empty_item_are_refused() {
        // An empty MONITOR watches everything: `,,,` must not quietly become one.
        for bad in [",", ",,,", "a,,b", "a,", ",a", "a, ,b", " , "] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
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
