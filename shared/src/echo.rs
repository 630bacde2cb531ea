//! User values echoed back in reasons and messages, bounded: a 10 KB label or a list of a
//! thousand names shows its start and how much more there is, never the whole of it, and
//! always on one line.

/// Most characters of one echoed value (a label, a reason from elsewhere).
pub const MAX_TEXT_CHARS: usize = 200;
/// Most characters of one name in an echoed list.
pub const MAX_NAME_CHARS: usize = 64;
/// Most names of an echoed list.
pub const MAX_NAMES: usize = 5;

/// `text` on one line (control characters escaped), cut after `max` characters with `…`.
pub fn clip(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One value, e.g. a label's text: at most [`MAX_TEXT_CHARS`] characters.
pub fn text(value: &str) -> String {
    clip(value, MAX_TEXT_CHARS)
}

/// One name: at most [`MAX_NAME_CHARS`] characters.
pub fn name(value: &str) -> String {
    clip(value, MAX_NAME_CHARS)
}

/// Names joined by `separator`: at most [`MAX_NAMES`] of them and about [`MAX_TEXT_CHARS`]
/// characters, then `… and N more`. The first name is always shown (cut to
/// [`MAX_NAME_CHARS`]).
pub fn join<I, S>(names: I, separator: &str) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    let mut chars = 0;
    let mut shown = 0;
    let mut left = 0;
    for item in names {
        let item = name(item.as_ref());
        let sep = if shown == 0 { "" } else { separator };
        let width = sep.chars().count() + item.chars().count();
        if left > 0 || shown == MAX_NAMES || (shown > 0 && chars + width > MAX_TEXT_CHARS) {
            left += 1;
            continue;
        }
        out.push_str(sep);
        out.push_str(&item);
        chars += width;
        shown += 1;
    }
    if left > 0 {
        out.push_str(&format!("{separator}… and {left} more"));
    }
    out
}

/// Names as a comma-separated list, bounded as [`join`] does.
pub fn list<I, S>(names: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    join(names, ", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_kept_and_long_ones_cut() {
        assert_eq!(text("web"), "web");
        let long = "x".repeat(10_000);
        let cut = text(&long);
        assert_eq!(cut.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(cut.ends_with('…'));
        // Cut on a character, never inside one.
        assert_eq!(clip("ééé", 2), "éé…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn echoes_stay_on_one_line() {
        assert_eq!(text("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(list(["x\ny"]), "x\\ny");
    }

    #[test]
    fn short_lists_are_whole() {
        assert_eq!(list(["db", "cache"]), "db, cache");
        assert_eq!(join(["a", "b", "a"], " -> "), "a -> b -> a");
        assert_eq!(list(Vec::<String>::new()), "");
    }

    #[test]
    fn long_lists_show_a_few_names_and_how_many_more() {
        let many: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        assert_eq!(list(&many), "c0, c1, c2, c3, c4, … and 995 more");
        // A 10 KB label of long names: bounded by characters before the name count.
        let label = vec!["n".repeat(60); 200].join(",");
        let shown = list(label.split(','));
        assert!(shown.chars().count() < MAX_TEXT_CHARS + 30, "{shown}");
        assert!(shown.ends_with("… and 197 more"), "{shown}");
        // One huge name is cut, and still shown.
        let one = list([&"z".repeat(10_000)]);
        assert_eq!(one.chars().count(), MAX_NAME_CHARS + 1);
    }
}
