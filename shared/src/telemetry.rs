//! Log setup shared by both binaries: human-readable lines on stderr, level from
//! `--log-level`/`LOG_LEVEL` (a full `tracing` filter such as `info,ouroboros_agent=debug` works
//! too).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `filter` has been validated by [`parse_filter`].
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // A second call (tests) leaves the first subscriber in place.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Validates a log level or filter for clap: `trace`, `debug`, `info`, `warn`, `error`, `off`,
/// or a `tracing` filter directive list.
pub fn parse_filter(value: &str) -> Result<String, String> {
    let level = value.trim().to_ascii_lowercase();
    if level.is_empty() {
        return Err("expected one of trace, debug, info, warn, error, off".to_owned());
    }
    // Ouroboros accepted "warning" and "critical" (Python names).
    let level = match level.as_str() {
        "warning" => "warn".to_owned(),
        "critical" => "error".to_owned(),
        _ => level,
    };
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if LEVELS.contains(&level.as_str()) {
        return Ok(level);
    }
    // Anything else must be a directive list (`info,ouroboros_agent=debug`); a bare word would
    // silently be taken as a target name.
    if !level.contains('=') {
        return Err(format!(
            "{level:?} is not a level: expected one of trace, debug, info, warn, error, off"
        ));
    }
    EnvFilter::try_new(&level)
        .map(|_| level)
        .map_err(|e| format!("not a level or filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_python_names_are_accepted() {
        assert_eq!(parse_filter("INFO"), Ok("info".to_owned()));
        assert_eq!(parse_filter("warning"), Ok("warn".to_owned()));
        assert!(parse_filter("info,ouroboros_agent=debug").is_ok());
        assert!(parse_filter("").is_err());
        assert!(parse_filter("verbose").is_err());
        assert!(parse_filter("info,x=loud").is_err());
    }
}
