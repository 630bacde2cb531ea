//! [`HostName`]: the identity of one Docker host in the fleet, as written in its agent
//! certificate's subject alternative name.

use std::fmt;

/// A validated host name: a DNS name of letters, digits, `-` and `.`, stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

/// Why a host name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid host name {name:?}: {reason}")]
pub struct InvalidHostName {
    name: String,
    reason: &'static str,
}

impl HostName {
    /// Validates `name` as a DNS name (RFC 1123 labels, at most 253 characters).
    pub fn parse(name: &str) -> Result<Self, InvalidHostName> {
        let refuse = |reason| {
            Err(InvalidHostName {
                name: name.to_owned(),
                reason,
            })
        };
        if name.is_empty() {
            return refuse("it is empty");
        }
        if name.len() > 253 {
            return refuse("it is longer than 253 characters");
        }
        if name.parse::<std::net::IpAddr>().is_ok()
            || name
                .rsplit('.')
                .next()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return refuse(
                "an IP address (or an all-numeric last label) cannot name a host; use its host name",
            );
        }
        for label in name.split('.') {
            if label.is_empty() {
                return refuse("it has an empty label (leading, trailing or double dot)");
            }
            if label.len() > 63 {
                return refuse("a label is longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return refuse("only letters, digits, '-' and '.' are allowed");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return refuse("a label starts or ends with '-'");
            }
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostName {
    type Err = InvalidHostName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_names_and_lowercases_them() {
        assert_eq!(
            HostName::parse("Web-01.prod.example").map(|h| h.to_string()),
            Ok("web-01.prod.example".to_owned())
        );
        assert!(HostName::parse("a").is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_dns_name() {
        for bad in [
            "",
            ".",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "a b",
            "a/b",
            "ä",
            "10.0.0.5",
            "123",
            "::1",
            &"x".repeat(64),
            &format!("{}.b", "a.".repeat(127)),
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
