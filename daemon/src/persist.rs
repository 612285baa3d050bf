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
//! step of a compaction loses nothing.
//!
//! Nothing on disk stops the daemon from starting, and no acknowledged line is lost to a full
//! disk:
//! - A failed append (a full disk) truncates the log back to where it was and syncs, so the
//!   next append does not follow a torn line. Should even that fail, the next append starts on
//!   a line of its own.
//! - Each line ends with a tab and the CRC-32 of its JSON, so a torn or damaged line anywhere is
//!   recognised, skipped and reported (and the log copied aside as `routes.log.damaged` for a
//!   person to read) while every other line loads. Lines written before checksums existed have
//!   none and are read as they are.
//! - A line cut short by a crash (never acknowledged) at the end of a log is removed.
//! - A `routes.json` that cannot be read as one is moved aside (`routes.json.damaged-<time>`)
//!   and reported; the logs still load.

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

/// The overrides as loaded, and what had to be skipped or set aside to load them.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every override that could be read.
    pub overrides: Overrides,
    /// One line per damaged file or log line skipped (empty when all was well).
    pub problems: Vec<String>,
}

/// Reads the overrides: `routes.json` at `path`, then the logs beside it replayed (see the
/// module's documentation). A log's last line cut short by a crash is removed from the file;
/// damaged files and lines are set aside and reported in [`Loaded::problems`], so only an
/// error of the file system itself (a directory that cannot be read) stops loading.
pub fn load(path: &Path) -> Result<Loaded, StateError> {
    let mut loaded = Loaded::default();
    match load_base(path) {
        Ok(o) => loaded.overrides = o,
        Err(StateError::Corrupt { message, .. }) => {
            let aside = set_aside(path)?;
            loaded.problems.push(format!(
                "{} is damaged ({message}); moved to {} and started without it",
                path.display(),
                aside.display()
            ));
        }
        Err(e) => return Err(e),
    }
    for log in [old_log_path(path), log_path(path)] {
        replay(&log, &mut loaded)?;
    }
    Ok(loaded)
}

/// Moves a damaged `routes.json` aside (never over an earlier one), so the next compaction
/// does not overwrite what a person may want to read.
fn set_aside(path: &Path) -> Result<PathBuf, StateError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map_or("routes.json".into(), |n| n.to_string_lossy());
    let mut aside = path.with_file_name(format!("{name}.damaged-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = path.with_file_name(format!("{name}.damaged-{secs}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside).map_err(|error| StateError::Io {
        action: "move aside",
        path: path.to_path_buf(),
        error,
    })?;
    Ok(aside)
}

/// A log line as written: its JSON, a tab, and the CRC-32 of the JSON in 8 hex digits.
/// serde_json escapes a tab inside a string, so the last tab is the separator.
fn seal(json: &str) -> String {
    format!("{json}\t{:08x}\n", crc32fast::hash(json.as_bytes()))
}

/// The JSON of a sealed log line whose checksum matches (or of a line from before checksums,
/// which has no tab); None for a torn or damaged line.
fn unseal(line: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(line).ok()?;
    match line.rsplit_once('\t') {
        Some((json, sum)) => {
            let sum = u32::from_str_radix(sum, 16)
                .ok()
                .filter(|_| sum.len() == 8)?;
            (crc32fast::hash(json.as_bytes()) == sum).then_some(json)
        }
        None => Some(line),
    }
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

/// Applies the log at `path` (if any) to `loaded`, dropping a last line cut short and skipping
/// (and reporting) a damaged one anywhere else.
fn replay(path: &Path, loaded: &mut Loaded) -> Result<(), StateError> {
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
    let mut damaged = Vec::new();
    for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        // A line of its own after a torn append that could not be taken back.
        if line.is_empty() {
            continue;
        }
        if let Err(why) = apply_line(line, &mut loaded.overrides) {
            damaged.push(format!("line {}: {why}", n + 1));
        }
    }
    if !damaged.is_empty() {
        let copy = path.with_extension(format!(
            "{}.damaged",
            path.extension().map_or("".into(), |e| e.to_string_lossy())
        ));
        let kept = match fs::write(&copy, &bytes[..complete]) {
            Ok(()) => format!("a copy is in {}", copy.display()),
            Err(e) => format!("cannot keep a copy in {}: {e}", copy.display()),
        };
        loaded.problems.push(format!(
            "{}: skipped {} damaged line(s) and loaded the rest ({}); {kept}",
            path.display(),
            damaged.len(),
            damaged.join("; ")
        ));
    }
    Ok(())
}

/// Applies one log line to `overrides`, or says why it is not a line itproxy wrote.
fn apply_line(line: &[u8], overrides: &mut Overrides) -> Result<(), String> {
    let json = unseal(line).ok_or("torn or damaged (its checksum does not match)")?;
    let line: LogLine = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let host = HostName::parse(&line.host).map_err(|e| e.to_string())?;
    match (line.target, line.removed, line.restored) {
        (Some(t), false, false) => {
            let target = UpstreamSpec::parse(&t).map_err(|e| e.to_string())?;
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
        _ => return Err("expected one of `target`, `removed` or `restored`".into()),
    }
    Ok(())
}

/// The open log new changes are appended to, and when it is time to compact.
pub struct Journal {
    base: PathBuf,
    /// None when the log could not be opened (a full disk at start-up): opened again at the
    /// next append, which fails until it can be.
    log: Option<File>,
    /// The log's length after the last good append: a failed one is cut back to it.
    len: u64,
    /// A failed append could not be taken back: the next one starts on a new line.
    torn: bool,
    /// Lines in the log since the last compaction.
    lines: usize,
}

/// The log holds at least this many lines before a compaction.
const COMPACT_AFTER: usize = 1024;

impl Journal {
    /// Opens (or creates) the log beside `routes.json` at `base`, after [`load`] has read it.
    #[cfg(test)]
    pub fn open(base: &Path) -> Result<Journal, StateError> {
        match Journal::open_or_retry(base) {
            (journal, None) => Ok(journal),
            (_, Some(error)) => Err(error),
        }
    }

    /// Opens the log beside `base`, even when it cannot be: the daemon starts with what it
    /// loaded, each change is refused with the reason until the log can be written, and the
    /// reason is returned to be reported.
    pub fn open_or_retry(base: &Path) -> (Journal, Option<StateError>) {
        let mut journal = Journal {
            base: base.to_path_buf(),
            log: None,
            len: 0,
            torn: false,
            lines: 0,
        };
        let error = journal.reopen().err();
        (journal, error)
    }

    fn reopen(&mut self) -> Result<&mut File, StateError> {
        let path = log_path(&self.base);
        let io = |error| StateError::Io {
            action: "write",
            path: path.clone(),
            error,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let bytes = fs::read(&path).map_err(io)?;
        self.lines = bytes.iter().filter(|c| **c == b'\n').count();
        self.len = bytes.len() as u64;
        // A log that does not end a line (a torn append before a crash that load did not see).
        self.torn = bytes.last().is_some_and(|b| *b != b'\n');
        Ok(self.log.insert(log))
    }

    /// Appends each host's override as it became (None: dropped), durably: one write and one
    /// fdatasync for all of them. If either fails, the log is cut back to what it held, so
    /// nothing of a refused change stays in it.
    pub fn append(&mut self, changed: &[(HostName, Option<Override>)]) -> Result<(), StateError> {
        let mut text = String::new();
        if self.torn {
            text.push('\n');
        }
        for (host, o) in changed {
            let json = serde_json::to_string(&LogLine::new(host, o.as_ref()))
                .expect("log lines serialize");
            text.push_str(&seal(&json));
        }
        let path = log_path(&self.base);
        let io = |error| StateError::Io {
            action: "write",
            path: path.clone(),
            error,
        };
        let len = self.len;
        let log = match self.log.as_mut() {
            Some(log) => log,
            None => self.reopen()?,
        };
        let written = log
            .write_all(text.as_bytes())
            .and_then(|()| log.sync_data());
        if let Err(error) = written {
            // Take the partial write back: a full disk must not leave a torn line that the
            // next good append would follow.
            let undone = log.set_len(len).and_then(|()| log.sync_data());
            match undone {
                Ok(()) => self.torn = false,
                Err(e) => {
                    tracing::warn!(log = %path.display(), "cannot take a failed append back: {e}");
                    self.torn = true;
                }
            }
            return Err(io(error));
        }
        self.len = len + text.len() as u64;
        self.torn = false;
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
        self.log = None;
        self.reopen()?;
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
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(StateError::Corrupt {
                path,
                message: "not UTF-8".into(),
            })
        }
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
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // A full disk leaves no half-written temporary file behind; routes.json is untouched.
        let _ = fs::remove_file(&tmp);
        return Err(io("write", path)(e));
    }
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
        assert!(load(&path).unwrap().overrides.is_empty());
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
        assert_eq!(load(&path).unwrap().overrides, o);
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
        assert_eq!(load(&base).unwrap().overrides, expected);
        assert!(!base.exists(), "no rewrite of routes.json per change");

        // A compaction: the log rotates, later changes go to a fresh one; read back at any
        // step (a crash between steps), nothing is lost.
        journal.rotate().unwrap();
        journal
            .append(&[(host("d.test"), Some(target("127.0.0.1:4")))])
            .unwrap();
        let mut now = expected.clone();
        now.insert(host("d.test"), target("127.0.0.1:4"));
        assert_eq!(
            load(&base).unwrap().overrides,
            now,
            "old log and new log replayed"
        );
        finish_compaction(&base, &expected).unwrap();
        assert!(!old_log_path(&base).exists());
        assert_eq!(
            load(&base).unwrap().overrides,
            now,
            "routes.json and the new log"
        );
        // Interrupted before the old log was removed: replaying it again changes nothing.
        fs::write(
            old_log_path(&base),
            "{\"host\":\"a.test\",\"target\":\"http://127.0.0.1:2\",\"insecure_upstream\":true}\n",
        )
        .unwrap();
        assert_eq!(load(&base).unwrap().overrides, now);
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
            load(&base).unwrap().overrides,
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
        assert_eq!(load(&base).unwrap().overrides.len(), 2);

        // A damaged line anywhere else is skipped and reported; every other line loads, and
        // the log is copied aside for a person to read.
        let sealed_b = seal("{\"host\":\"b.test\",\"removed\":true}");
        let mut flipped = sealed_b.clone().into_bytes();
        flipped[9] ^= 0x20; // "b.test" -> "B.test": valid JSON, wrong checksum
        for bad in [
            "{\"host\":\"a.test\"}\n".as_bytes().to_vec(),
            "{\"host\":\"a.test\",\"removed\":true,\"restored\":true}\n".into(),
            "not json\n".into(),
            "{\"host\":\"a b\",\"removed\":true}\n".into(),
            b"\xff\xfe\n".to_vec(),
            flipped,
            // A torn append followed by a good one on the same line.
            format!("{{\"host\":\"c.te{sealed_b}").into_bytes(),
        ] {
            let mut bytes = bad.clone();
            bytes.extend_from_slice(good.as_bytes());
            fs::write(&log, &bytes).unwrap();
            let loaded = load(&base).unwrap();
            assert_eq!(
                loaded.overrides,
                Overrides::from([(host("a.test"), Override::Removed)]),
                "{bad:?}"
            );
            assert_eq!(loaded.problems.len(), 1, "{bad:?}");
            assert!(
                loaded.problems[0].contains("line 1") && loaded.problems[0].contains("skipped 1"),
                "{:?}",
                loaded.problems
            );
            assert_eq!(fs::read(&log).unwrap(), bytes, "the log is left as it was");
            assert_eq!(
                fs::read(dir.path().join("routes.log.damaged")).unwrap(),
                bytes,
                "a copy aside"
            );
        }
    }

    #[test]
    fn a_failed_append_leaves_the_log_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("routes.json");
        let mut journal = Journal::open(&base).unwrap();
        journal
            .append(&[(host("a.test"), Some(target("127.0.0.1:1")))])
            .unwrap();
        let before = fs::read(log_path(&base)).unwrap();
        // A log whose writes fail as on a full disk: a read-only descriptor in its place.
        journal.log = Some(File::open(log_path(&base)).unwrap());
        assert!(journal
            .append(&[(host("b.test"), Some(target("127.0.0.1:2")))])
            .is_err());
        assert_eq!(fs::read(log_path(&base)).unwrap(), before);
        // A partial write that could not be taken back: the next line starts on its own.
        let mut log = OpenOptions::new()
            .append(true)
            .open(log_path(&base))
            .unwrap();
        log.write_all(b"{\"host\":\"c.te").unwrap();
        journal.log = Some(log);
        journal.torn = true;
        journal
            .append(&[(host("d.test"), Some(Override::Removed))])
            .unwrap();
        let loaded = load(&base).unwrap();
        assert_eq!(
            loaded.overrides,
            Overrides::from([
                (host("a.test"), target("127.0.0.1:1")),
                (host("d.test"), Override::Removed),
            ])
        );
        assert_eq!(loaded.problems.len(), 1, "the torn line is reported");
    }

    #[test]
    fn lines_from_before_checksums_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("routes.json");
        fs::write(
            log_path(&base),
            "{\"host\":\"a.test\",\"target\":\"http://127.0.0.1:2\"}\n",
        )
        .unwrap();
        let loaded = load(&base).unwrap();
        assert!(loaded.problems.is_empty());
        assert_eq!(loaded.overrides.len(), 1);
        let written = seal("{}");
        assert!(written.ends_with(&format!("\t{:08x}\n", crc32fast::hash(b"{}"))));
    }

    #[test]
    fn a_damaged_routes_file_is_moved_aside_and_the_logs_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        let good = seal("{\"host\":\"a.test\",\"removed\":true}");
        for bad in [
            "{",
            "[]",
            r#"{"version":2,"routes":{}}"#,
            r#"{"version":1,"routes":{"a b":{"target":"localhost:1"}}}"#,
            r#"{"version":1,"routes":{"api.test":{"target":"localhost:x"}}}"#,
            r#"{"version":1,"routes":{"api.test":{}}}"#,
            r#"{"version":1,"routes":{},"extra":1}"#,
            "\u{0}\u{1}",
        ] {
            fs::write(&path, bad).unwrap();
            fs::write(log_path(&path), &good).unwrap();
            let loaded = load(&path).unwrap();
            assert_eq!(loaded.overrides.len(), 1, "{bad}");
            let e = &loaded.problems[0];
            assert!(
                e.contains("damaged") && e.contains("routes.json"),
                "{bad}: {e}"
            );
            assert!(!path.exists());
            let aside: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().contains("routes.json.damaged-"))
                .collect();
            assert!(
                aside.iter().any(|p| fs::read_to_string(p).unwrap() == bad),
                "{bad}: kept aside"
            );
        }
    }
}
