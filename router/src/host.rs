//! Host names as the route table keys them.

use std::fmt;

use crate::Error;

/// A validated, lower-case DNS host name such as `api.test`.
///
/// Holding one means the name is non-empty, at most 253 bytes, made of labels of 1 to 63
/// characters from `a-z`, `0-9`, `-` and `_`, with no label starting or ending with `-`.
/// Underscores are accepted because Docker names often carry them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(Box<str>);

impl HostName {
    /// Validates `name` (case-insensitive, one trailing dot allowed) and lower-cases it.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidHost {
            host: name.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if trimmed.is_empty() {
            return Err(bad("the name is empty"));
        }
        if trimmed.len() > 253 {
            return Err(bad("the name is longer than 253 characters"));
        }
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(bad(
                    "it has an empty label (two dots in a row, or a leading dot)",
                ));
            }
            if label.len() > 63 {
                return Err(bad("a label is longer than 63 characters"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(bad(&format!(
                    "it contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"
                )));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label starts or ends with '-'"));
            }
        }
        Ok(HostName(trimmed.to_ascii_lowercase().into_boxed_str()))
    }

    /// The name as text, lower case, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this name is `domain` itself or lies below it (`api.test` is within `test`).
    pub fn is_within(&self, domain: &HostName) -> bool {
        let (name, domain) = (self.as_str(), domain.as_str());
        name == domain
            || (name.len() > domain.len()
                && name.ends_with(domain)
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName({})", self.0)
    }
}

impl std::str::FromStr for HostName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        HostName::parse(s)
    }
}

impl serde::Serialize for HostName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The host part of a request's `Host` header or URI authority, as a lookup key: without the
/// port and a trailing dot. Returns `None` for an empty host. Case is left to the caller, so the
/// common all-lower-case request needs no allocation.
pub(crate) fn request_host(authority: &str) -> Option<&str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080`.
        &authority[..rest.find(']').map_or(authority.len(), |i| i + 2)]
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lowercases() {
        assert_eq!(HostName::parse("Api.TEST").unwrap().as_str(), "api.test");
        assert_eq!(HostName::parse("api.test.").unwrap().as_str(), "api.test");
        assert_eq!(HostName::parse("my_app-1").unwrap().as_str(), "my_app-1");
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "api.test/x",
            "-a.test",
            "a-.test",
            "é.test",
            "a:80",
        ] {
            let err = HostName::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(HostName::parse(&"a".repeat(64)).is_err());
        assert!(HostName::parse(&["a"; 130].join(".")).is_err());
    }

    #[test]
    fn within_domain() {
        let test = HostName::parse("test").unwrap();
        assert!(HostName::parse("api.test").unwrap().is_within(&test));
        assert!(HostName::parse("a.b.test").unwrap().is_within(&test));
        assert!(test.is_within(&test));
        assert!(!HostName::parse("latest").unwrap().is_within(&test));
        assert!(!HostName::parse("test.com").unwrap().is_within(&test));
    }

    #[test]
    fn request_host_strips_port_and_dot() {
        assert_eq!(request_host("api.test:8080"), Some("api.test"));
        assert_eq!(request_host("api.test."), Some("api.test"));
        assert_eq!(request_host("API.test"), Some("API.test"));
        assert_eq!(request_host("[::1]:80"), Some("[::1]"));
        assert_eq!(request_host(":80"), None);
        assert_eq!(request_host(""), None);
    }
}
