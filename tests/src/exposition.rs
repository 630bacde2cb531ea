//! Reading a Prometheus text exposition the way Prometheus does: a sample is its metric name,
//! its set of labels (their order on the line means nothing) and its value.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The name as written (`ouroboros_cycle_seconds_bucket` for a histogram bucket).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The label set `{name="value",...}` at the start of `text` (after its `{`), and the rest.
fn labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut out = BTreeMap::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(rest) = text.strip_prefix('}') {
            return Some((out, rest));
        }
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.insert(name.trim().to_owned(), value);
        text = &rest[end + 1..];
    }
}

/// Every sample of `text` (comments and blank lines left out; unreadable lines too).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let name_end = line.find(['{', ' '])?;
            let (name, rest) = line.split_at(name_end);
            let (labels, rest) = match rest.strip_prefix('{') {
                Some(inner) => labels(inner)?,
                None => (BTreeMap::new(), rest),
            };
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

/// The value of the sample `name` with exactly the labels `labels`, if `text` has it.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == wanted)
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_order_and_escapes_do_not_matter() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{outcome=\"ok\",host=\"a \\\"b\\\",c\\\\d\"} 2\n\
                    plain 1.5\n";
        assert_eq!(
            value(
                text,
                "x_total",
                &[("host", "a \"b\",c\\d"), ("outcome", "ok")]
            ),
            Some(2.0)
        );
        assert_eq!(value(text, "x_total", &[("host", "a")]), None);
        assert_eq!(value(text, "plain", &[]), Some(1.5));
        assert_eq!(samples(text).len(), 2);
    }
}
