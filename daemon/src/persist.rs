//! Route overrides that survive restarts: `<state-dir>/routes.json` (`StateDir::routes_file`).
//!
//! Every change is written to a temporary file, fsynced, renamed over the old file and the
//! directory fsynced, before the API acknowledges it. A crash or `kill -9` at any moment leaves
//! either the old or the new file, never a torn one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use itproxy_router::{HostName, UpstreamSpec};

use crate::config::RouteSpec;
use serde::{Deserialize, Serialize};

const FORMAT_VERSION: u32 = 1;

/// What went wrong reading or writing the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory cannot be created or used.
    #[error("cannot use the state directory {path}: {error}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The routes file cannot be read or written.
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The routes file exists but is not what itproxy writes.
    #[error(
        "{path} is damaged ({message}); fix or remove it (removing it drops every route override)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One persisted override of a host's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Override {
    /// Route the host to this target instead of its declared one (or add it).
    Target(RouteSpec),
    /// The host's declared route is removed.
    Removed,
}

/// All overrides, by host.
pub type Overrides = BTreeMap<HostName, Override>;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    version: u32,
    routes: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removed: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    redirect_https: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    insecure_upstream: bool,
}

/// Reads the overrides from `path`; a missing file means none.
pub fn load(path: &Path) -> Result<Overrides, StateError> {
    let path = path.to_path_buf();
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::new()),
        Err(error) => {
            return Err(StateError::Io {
                action: "read",
                path,
                error,
            })
        }
    };
    let corrupt = |message: String| StateError::Corrupt {
        path: path.clone(),
        message,
    };
    let file: RoutesFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} is not {FORMAT_VERSION}; was it written by another itproxy version?",
            file.version
        )));
    }
    let mut out = Overrides::new();
    for (host, entry) in file.routes {
        let host = HostName::parse(&host).map_err(|e| corrupt(e.to_string()))?;
        let value = match (entry.target, entry.removed) {
            (Some(t), false) => Override::Target(RouteSpec {
                target: UpstreamSpec::parse(&t).map_err(|e| corrupt(e.to_string()))?,
                redirect_https: entry.redirect_https,
                insecure_upstream: entry.insecure_upstream,
                connect_timeout: None,
                read_timeout: None,
            }),
            (None, true) => Override::Removed,
            _ => {
                return Err(corrupt(format!(
                    "{host}: expected either `target` or `removed`"
                )))
            }
        };
        out.insert(host, value);
    }
    Ok(out)
}

/// Writes the overrides to `path` atomically and durably (a temporary file beside it, then
/// a rename, then the directory synced).
pub fn save(path: &Path, overrides: &Overrides) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or("routes.json".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp"));
    let file = RoutesFile {
        version: FORMAT_VERSION,
        routes: overrides
            .iter()
            .map(|(host, o)| {
                let entry = match o {
                    Override::Target(r) => Entry {
                        target: Some(r.target.to_string()),
                        removed: false,
                        redirect_https: r.redirect_https,
                        insecure_upstream: r.insecure_upstream,
                    },
                    Override::Removed => Entry {
                        target: None,
                        removed: true,
                        redirect_https: false,
                        insecure_upstream: false,
                    },
                };
                (host.to_string(), entry)
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).expect("routes serialize");
    text.push('\n');
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |error| StateError::Io {
            action,
            path,
            error,
        }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("write", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("write", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("write", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("write", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn host(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        assert!(load(&path).unwrap().is_empty());
        let mut o = Overrides::new();
        o.insert(
            host("api.test"),
            Override::Target(RouteSpec {
                target: UpstreamSpec::parse("localhost:8000").unwrap(),
                redirect_https: true,
                insecure_upstream: false,
                connect_timeout: None,
                read_timeout: None,
            }),
        );
        o.insert(host("web.test"), Override::Removed);
        save(&path, &o).unwrap();
        assert_eq!(load(&path).unwrap(), o);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(".routes.json.tmp").exists());
    }

    #[test]
    fn damaged_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        for bad in [
            "{",
            "[]",
            r#"{"version":2,"routes":{}}"#,
            r#"{"version":1,"routes":{"a b":{"target":"localhost:1"}}}"#,
            r#"{"version":1,"routes":{"api.test":{"target":"localhost:x"}}}"#,
            r#"{"version":1,"routes":{"api.test":{}}}"#,
            r#"{"version":1,"routes":{},"extra":1}"#,
        ] {
            fs::write(&path, bad).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(
                e.contains("damaged") && e.contains("routes.json"),
                "{bad}: {e}"
            );
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
    }
}
