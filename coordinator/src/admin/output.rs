//! Output of the admin commands: aligned tables for people, JSON for scripts.

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Whether output may be coloured: standard output is a terminal and `NO_COLOR` is not set
/// (<https://no-color.org>).
pub fn colour_enabled() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` in the colour its meaning calls for (a state name), when colour is enabled.
pub fn paint(text: &str, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match text {
        "connected" | "updated" | "completed" | "current" | "already-current" | "running" => "32",
        "failed"
        | "disconnected"
        | "rolled-back"
        | "rollback-failed"
        | "revert-failed"
        | "error"
        | "completed-with-failures" => "31",
        "paused" | "updating" | "reverting" | "rolling-back" | "update" | "skip" | "pending"
        | "reverted" | "refused" => "33",
        _ => return text.to_owned(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// Width on screen: ANSI colour sequences take none.
fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut escape = false;
    for c in text.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// Renders rows under headers, columns padded to their widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(visible_len(cell));
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(visible_len(cell)),
            ));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let t = table(
            &["HOST", "STATUS"],
            &[
                vec!["a-long-host".into(), "connected".into()],
                vec!["b".into(), "disconnected".into()],
            ],
        );
        assert_eq!(
            t,
            "HOST         STATUS\na-long-host  connected\nb            disconnected\n"
        );
        // Colour does not move the columns.
        let t = table(
            &["STATE", "X"],
            &[
                vec![paint("updated", true), "1".into()],
                vec![paint("failed", false), "2".into()],
            ],
        );
        assert_eq!(t, "STATE    X\n\x1b[32mupdated\x1b[0m  1\nfailed   2\n");
    }
}
