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

/// The first non-empty line of clap's rendered error, e.g.
/// `error: invalid value 'x' for '--listen <ADDR>': invalid socket address syntax`.
fn first_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim_end)
        .find(|l| !l.is_empty())
        .unwrap_or("error: invalid command line")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

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
