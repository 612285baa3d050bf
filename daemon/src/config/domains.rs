//! The domains itproxy serves, and how a route name becomes a host name below them.

use itproxy_router::HostName;

use super::ConfigError;

/// The domains itproxy serves; never empty. The first one qualifies bare app names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domains(Vec<HostName>);

impl Domains {
    /// Domains from a list; duplicates are dropped, order kept.
    pub fn new(list: Vec<HostName>) -> Result<Self, ConfigError> {
        let mut out: Vec<HostName> = Vec::with_capacity(list.len());
        for d in list {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        if out.is_empty() {
            return Err(ConfigError::Invalid {
                origin: None,
                message: "at least one domain is needed".into(),
            });
        }
        Ok(Domains(out))
    }

    /// The domains, primary first.
    pub fn iter(&self) -> impl Iterator<Item = &HostName> {
        self.0.iter()
    }

    /// The full host name for a route name: `api` is `api.<first domain>`; a dotted name must
    /// lie below one of the domains.
    pub fn qualify(&self, name: &str) -> Result<HostName, String> {
        if name.trim().is_empty() {
            return Err("the route name is empty; give an app name such as `api`".into());
        }
        let host = HostName::parse(name).map_err(|e| e.to_string())?;
        if !host.as_str().contains('.') {
            return HostName::parse(&format!("{host}.{}", self.0[0])).map_err(|e| e.to_string());
        }
        if self.0.iter().any(|d| host.is_within(d) && host != *d) {
            Ok(host)
        } else {
            Err(format!(
                "{host} is not below the configured domains ({}); use a name like `{}.{}` \
                 or add the domain with --domain",
                self.to_string_list(),
                host.as_str().split('.').next().unwrap_or("app"),
                self.0[0]
            ))
        }
    }

    /// The domains joined with ", ".
    pub fn to_string_list(&self) -> String {
        self.0
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualify_route_names() {
        let d = Domains::new(vec![HostName::parse("test").unwrap()]).unwrap();
        assert_eq!(d.qualify("api").unwrap().as_str(), "api.test");
        assert_eq!(d.qualify("API.test").unwrap().as_str(), "api.test");
        assert_eq!(d.qualify("a.b.test").unwrap().as_str(), "a.b.test");
        assert!(d.qualify("").unwrap_err().contains("empty"));
        assert_eq!(d.qualify("test").unwrap().as_str(), "test.test");
        assert!(d.qualify("api.com").unwrap_err().contains("not below"));
        assert!(d.qualify("my api").unwrap_err().contains("' '"));
    }
}
