//! Route overrides that survive restarts, in the state directory:
//!
//! - `routes.json` (`StateDir::routes_file`): every override as of the last compaction, written
//!   to a temporary file, fsynced, renamed over the old one and the directory fsynced.
//! - `routes.log`: one JSON line per override changed since, appended and fdatasynced before the
//!   API acknowledges the change. A change costs one small append, whatever the number of routes.
//! - `routes.log.old`: the log being compacted: when the log outgrows the overrides, it is
//!   renamed, a fresh log takes the next changes, and `routes.json` is rewritten from the state in
//!   the background; then the old log is removed.
//!
//! Loading reads `routes.json`, then replays `routes.log.old` and `routes.log`; each line states a
//! host's override as it became, so replaying a line twice changes nothing and a crash at any
//! step of a compaction loses nothing. A line cut short by a crash (never acknowledged) at the
//! end of a log is dropped; a bad line anywhere else is reported, not guessed at.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
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

/// Reads the overrides: `routes.json` at `path`, then the logs beside it replayed (see the
/// module's documentation). A log's last line cut short by a crash is removed from the file.
pub fn load(path: &Path) -> Result<Overrides, StateError> {
    let mut overrides = load_base(path)?;
    for log in [old_log_path(path), log_path(path)] {
        replay(&log, &mut overrides)?;
    }
    Ok(overrides)
}

/// The log of changes since `routes.json` at `path` was written.
fn log_path(path: &Path) -> PathBuf {
    path.with_extension("log")
}

/// The log being compacted.
fn old_log_path(path: &Path) -> PathBuf {
    path.with_extension("log.old")
}

/// One line of a log: a host's override as it became.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLine {
    host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removed: bool,
    /// The override was dropped (`restore`): the host is back to its declared route.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    restored: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    redirect_https: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    insecure_upstream: bool,
}

impl LogLine {
    fn new(host: &HostName, o: Option<&Override>) -> LogLine {
        let mut line = LogLine {
            host: host.to_string(),
            target: None,
            removed: false,
            restored: false,
            redirect_https: false,
            insecure_upstream: false,
        };
        match o {
            Some(Override::Target(r)) => {
                line.target = Some(r.target.to_string());
                line.redirect_https = r.redirect_https;
                line.insecure_upstream = r.insecure_upstream;
            }
            Some(Override::Removed) => line.removed = true,
            None => line.restored = true,
        }
        line
    }
}

/// Applies the log at `path` (if any) to `overrides`, dropping a last line cut short.
fn replay(path: &Path, overrides: &mut Overrides) -> Result<(), StateError> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(StateError::Io {
                action: "read",
                path: path.to_path_buf(),
                error,
            })
        }
    };
    let io = |action| {
        let path = path.to_path_buf();
        move |error| StateError::Io {
            action,
            path,
            error,
        }
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io("read"))?;
    // Only complete lines count: the end of a line is written with it, in one append.
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            log = %path.display(),
            bytes = bytes.len() - complete,
            "dropping the log's last line, cut short by a crash before it was acknowledged"
        );
        file.set_len(complete as u64).map_err(io("write"))?;
        file.seek(std::io::SeekFrom::End(0)).map_err(io("write"))?;
        file.sync_all().map_err(io("write"))?;
    }
    let text = std::str::from_utf8(&bytes[..complete]).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    for (n, line) in text.lines().enumerate() {
        let corrupt = |message: String| StateError::Corrupt {
            path: path.to_path_buf(),
            message: format!("line {}: {message}", n + 1),
        };
        let line: LogLine = serde_json::from_str(line).map_err(|e| corrupt(e.to_string()))?;
        let host = HostName::parse(&line.host).map_err(|e| corrupt(e.to_string()))?;
        match (line.target, line.removed, line.restored) {
            (Some(t), false, false) => {
                let target = UpstreamSpec::parse(&t).map_err(|e| corrupt(e.to_string()))?;
                overrides.insert(
                    host,
                    Override::Target(RouteSpec {
                        target,
                        redirect_https: line.redirect_https,
                        insecure_upstream: line.insecure_upstream,
                        connect_timeout: None,
                        read_timeout: None,
                    }),
                );
            }
            (None, true, false) => {
                overrides.insert(host, Override::Removed);
            }
            (None, false, true) => {
                overrides.remove(&host);
            }
            _ => {
                return Err(corrupt(
                    "expected one of `target`, `removed` or `restored`".into(),
                ))
            }
        }
    }
    Ok(())
}

/// The open log new changes are appended to, and when it is time to compact.
pub struct Journal {
    base: PathBuf,
    log: File,
    /// Lines in the log since the last compaction.
    lines: usize,
}

/// The log holds at least this many lines before a compaction.
const COMPACT_AFTER: usize = 1024;

impl Journal {
    /// Opens (or creates) the log beside `routes.json` at `base`, after [`load`] has read it.
    pub fn open(base: &Path) -> Result<Journal, StateError> {
        let path = log_path(base);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&path)
            .map_err(|error| StateError::Io {
                action: "write",
                path: path.clone(),
                error,
            })?;
        let lines = fs::read(&path)
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .unwrap_or(0);
        Ok(Journal {
            base: base.to_path_buf(),
            log,
            lines,
        })
    }

    /// Appends each host's override as it became (None: dropped), durably: one write and one
    /// fdatasync for all of them.
    pub fn append(&mut self, changed: &[(HostName, Option<Override>)]) -> Result<(), StateError> {
        let mut text = String::new();
        for (host, o) in changed {
            text.push_str(
                &serde_json::to_string(&LogLine::new(host, o.as_ref()))
                    .expect("log lines serialize"),
            );
            text.push('\n');
        }
        let path = log_path(&self.base);
        let io = |error| StateError::Io {
            action: "write",
            path: path.clone(),
            error,
        };
        self.log.write_all(text.as_bytes()).map_err(io)?;
        self.log.sync_data().map_err(io)?;
        self.lines += changed.len();
        Ok(())
    }

    /// Whether the log has outgrown `overrides` overrides (and no compaction is under way).
    pub fn wants_compaction(&self, overrides: usize) -> bool {
        self.lines > COMPACT_AFTER.max(2 * overrides) && !old_log_path(&self.base).exists()
    }

    /// Starts a compaction: the log becomes the old log and a fresh one takes the next
    /// changes. The caller then writes `routes.json` from the state as of now with
    /// [`finish_compaction`], which removes the old log.
    pub fn rotate(&mut self) -> Result<(), StateError> {
        let (log, old) = (log_path(&self.base), old_log_path(&self.base));
        fs::rename(&log, &old).map_err(|error| StateError::Io {
            action: "write",
            path: old.clone(),
            error,
        })?;
        *self = Journal::open(&self.base)?;
        sync_dir(&self.base)
    }
}

/// Writes `routes.json` at `base` from `overrides` (the state when the log was rotated), then
/// removes the old log it replaces.
pub fn finish_compaction(base: &Path, overrides: &Overrides) -> Result<(), StateError> {
    save(base, overrides)?;
    let old = old_log_path(base);
    fs::remove_file(&old).map_err(|error| StateError::Io {
        action: "write",
        path: old,
        error,
    })?;
    sync_dir(base)
}

/// At start-up, after [`load`]: if a compaction was cut short (the old log is still there),
/// writes `routes.json` from `overrides` (everything loaded) and removes the old log.
pub fn finish_interrupted_compaction(base: &Path, overrides: &Overrides) -> Result<(), StateError> {
    if old_log_path(base).exists() {
        finish_compaction(base, overrides)?;
    }
    Ok(())
}

fn sync_dir(base: &Path) -> Result<(), StateError> {
    let dir = base.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|error| StateError::Io {
            action: "write",
            path: dir.to_path_buf(),
            error,
        })
}

/// Reads `routes.json` at `path`; a missing file means none.
fn load_base(path: &Path) -> Result<Overrides, StateError> {
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

    fn target(t: &str) -> Override {
        Override::Target(RouteSpec {
            target: UpstreamSpec::parse(t).unwrap(),
            redirect_https: false,
            insecure_upstream: true,
            connect_timeout: None,
            read_timeout: None,
        })
    }

    #[test]
    fn changes_are_logged_replayed_and_compacted_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("routes.json");
        let mut journal = Journal::open(&base).unwrap();
        journal
            .append(&[
                (host("a.test"), Some(target("127.0.0.1:1"))),
                (host("b.test"), Some(Override::Removed)),
            ])
            .unwrap();
        journal
            .append(&[
                (host("a.test"), Some(target("127.0.0.1:2"))),
                (host("c.test"), Some(target("127.0.0.1:3"))),
                (host("c.test"), None),
            ])
            .unwrap();
        let expected = Overrides::from([
            (host("a.test"), target("127.0.0.1:2")),
            (host("b.test"), Override::Removed),
        ]);
        assert_eq!(load(&base).unwrap(), expected);
        assert!(!base.exists(), "no rewrite of routes.json per change");

        // A compaction: the log rotates, later changes go to a fresh one; read back at any
        // step (a crash between steps), nothing is lost.
        journal.rotate().unwrap();
        journal
            .append(&[(host("d.test"), Some(target("127.0.0.1:4")))])
            .unwrap();
        let mut now = expected.clone();
        now.insert(host("d.test"), target("127.0.0.1:4"));
        assert_eq!(load(&base).unwrap(), now, "old log and new log replayed");
        finish_compaction(&base, &expected).unwrap();
        assert!(!old_log_path(&base).exists());
        assert_eq!(load(&base).unwrap(), now, "routes.json and the new log");
        // Interrupted before the old log was removed: replaying it again changes nothing.
        fs::write(
            old_log_path(&base),
            "{\"host\":\"a.test\",\"target\":\"http://127.0.0.1:2\",\"insecure_upstream\":true}\n",
        )
        .unwrap();
        assert_eq!(load(&base).unwrap(), now);
        finish_interrupted_compaction(&base, &now).unwrap();
        assert!(!old_log_path(&base).exists());
        assert_eq!(load_base(&base).unwrap(), now);
    }

    #[test]
    fn a_line_cut_short_at_the_end_is_dropped_and_one_in_the_middle_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("routes.json");
        let log = log_path(&base);
        let good = "{\"host\":\"a.test\",\"removed\":true}\n";
        fs::write(&log, format!("{good}{{\"host\":\"b.te")).unwrap();
        assert_eq!(
            load(&base).unwrap(),
            Overrides::from([(host("a.test"), Override::Removed)])
        );
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            good,
            "the cut line is gone"
        );
        // Appending after it starts on a line of its own.
        let mut journal = Journal::open(&base).unwrap();
        journal
            .append(&[(host("b.test"), Some(Override::Removed))])
            .unwrap();
        assert_eq!(load(&base).unwrap().len(), 2);

        for bad in [
            "{\"host\":\"a.test\"}\n",
            "{\"host\":\"a.test\",\"removed\":true,\"restored\":true}\n",
            "not json\n",
            "{\"host\":\"a b\",\"removed\":true}\n",
        ] {
            fs::write(&log, format!("{bad}{good}")).unwrap();
            let e = load(&base).unwrap_err().to_string();
            assert!(e.contains("damaged") && e.contains("line 1"), "{bad}: {e}");
            assert_eq!(fs::read_to_string(&log).unwrap(), format!("{bad}{good}"));
        }
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
