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
