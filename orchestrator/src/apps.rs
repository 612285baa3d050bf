//! Declared apps: what an environment runs, checked as a whole ([`Plan::new`]) so that
//! cycles, duplicate names and dependencies on later steps are caught before anything starts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use regex::Regex;

/// Default time an app has to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The step of apps that name none.
pub const DEFAULT_STEP: &str = "apps";
/// What `logs --errors` looks for when an app sets no patterns of its own.
pub const DEFAULT_ERROR_PATTERNS: [&str; 6] = [
    // A level in capitals, as loggers write it: Python's logging, PostgreSQL, gunicorn's
    // `[ERROR]`, tracing, log4j; not the word "error" in a message or a URL.
    r"\b(ERROR|FATAL|CRITICAL|PANIC|EMERG|ALERT)\b",
    // nginx and Apache: `[error]`, `[crit]`.
    r"\[(error|crit|alert|emerg)\]",
    // logfmt and JSON: `level=error`, `"level":"error"`.
    r#"(?i)\blevel"?\s*[=:]\s*"?(error|fatal|panic|critical)\b"#,
    // Go and Rust panics.
    r"^panic: ",
    r"\bpanicked at\b",
    // A Python traceback: one finding with its last line (see ErrorScan::findings).
    TRACEBACK_START,
];

/// The first line of a Python traceback.
const TRACEBACK_START: &str = r"^Traceback \(most recent call last\):";

/// A mistake in the declared apps, naming the app and the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("app {app:?}, `{key}`: {message}")]
pub struct PlanError {
    /// The app.
    pub app: String,
    /// The key at fault.
    pub key: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// A name usable as a DNS label and in Docker object names: 1 to 40 of `a-z0-9-`, starting
/// with a letter or digit. App and endpoint names are such names (an endpoint `www` is routed
/// as `www.<domain>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppName(String);

impl std::str::FromStr for AppName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && !s.ends_with('-');
        if ok {
            Ok(AppName(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a valid name: use 1 to 40 of a-z, 0-9 and '-', starting and ending \
                 with a letter or digit (it becomes a host name and part of container names)"
            ))
        }
    }
}

impl AppName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an endpoint is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// HTTP: routed through the proxy as `<name>.<domain>`.
    Http,
    /// Anything else on TCP: `<name>.<domain>` resolves to the container itself.
    Tcp,
}

/// One container of an app: its own command, and optionally a port it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its name: the host name's first label, and part of the container's name.
    pub name: AppName,
    /// The command (else the app's, else the image's).
    pub command: Option<Vec<String>>,
    /// The port it serves, with its kind; None for a worker.
    pub port: Option<(u16, EndpointKind)>,
}

/// What "ready" means for an app.
#[derive(Debug, Clone)]
pub enum Check {
    /// Running is enough.
    Running,
    /// A TCP connection to the port is accepted.
    Tcp {
        /// The port.
        port: u16,
    },
    /// `GET path` on the port answers `status`.
    Http {
        /// The port.
        port: u16,
        /// The path, e.g. `/health`.
        path: String,
        /// The expected status.
        status: u16,
        /// The Host header: the name the app is served as (an app checking its Host, like
        /// Django's ALLOWED_HOSTS, answers nothing else).
        host: String,
    },
    /// A log line matches.
    Log(Regex),
    /// Docker reports the container healthy (the image's HEALTHCHECK).
    DockerHealth,
}

impl PartialEq for Check {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Running => f.write_str("running"),
            Check::Tcp { port } => write!(f, "tcp port {port}"),
            Check::Http {
                port,
                path,
                status,
                host,
            } => write!(f, "http {path} on port {port} as {host} = {status}"),
            Check::Log(re) => write!(f, "log line /{}/", re.as_str()),
            Check::DockerHealth => f.write_str("docker health"),
        }
    }
}

/// An app's readiness check, on one of its endpoints, with a deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    /// The check.
    pub check: Check,
    /// The index of the endpoint checked.
    pub endpoint: usize,
    /// How long the app has.
    pub timeout: Duration,
}

/// Which log lines `logs --errors` reports for an app.
#[derive(Debug, Clone)]
pub struct ErrorScan {
    /// A line matching one of these is an error...
    pub patterns: Vec<Regex>,
    /// ...unless it matches one of these.
    pub ignore: Vec<Regex>,
}

impl Default for ErrorScan {
    fn default() -> Self {
        ErrorScan {
            patterns: DEFAULT_ERROR_PATTERNS
                .iter()
                .map(|p| Regex::new(p).expect("valid default pattern"))
                .collect(),
            ignore: Vec::new(),
        }
    }
}

/// An error in a container's output: one line, or a Python traceback as one finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The line, or a traceback's last line (the exception).
    pub line: String,
    /// A traceback's lines, first to last (empty for a single line).
    pub context: Vec<String>,
}

impl ErrorScan {
    /// Whether `line` is an error line.
    pub fn is_error(&self, line: &str) -> bool {
        self.patterns.iter().any(|p| p.is_match(line))
            && !self.ignore.iter().any(|p| p.is_match(line))
    }

    /// The errors in `lines`, in order. A line the patterns mark that starts a Python
    /// traceback takes the traceback with it (its indented frames, chained tracebacks, up to
    /// the exception line) as one finding named by its last line, which `ignore` applies to.
    pub fn findings<'a>(&self, lines: impl IntoIterator<Item = &'a str>) -> Vec<Finding> {
        let lines: Vec<&str> = lines.into_iter().collect();
        let traceback = Regex::new(TRACEBACK_START).expect("valid pattern");
        let chained = |l: &str| {
            l.starts_with("During handling of the above exception")
                || l.starts_with("The above exception was the direct cause")
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            i += 1;
            if !traceback.is_match(line) || !self.patterns.iter().any(|p| p.is_match(line)) {
                if self.is_error(line) {
                    out.push(Finding {
                        line: line.to_string(),
                        context: Vec::new(),
                    });
                }
                continue;
            }
            // Frames are indented; the first line that is not ends the traceback, unless
            // (after blank lines) a chained one follows.
            let start = i - 1;
            while i < lines.len() {
                let next = lines[i];
                i += 1;
                if next.starts_with([' ', '\t']) || traceback.is_match(next) || chained(next) {
                    continue;
                }
                let mut j = i;
                while j < lines.len() && lines[j].is_empty() {
                    j += 1;
                }
                if j < lines.len() && (chained(lines[j]) || traceback.is_match(lines[j])) {
                    i = j;
                    continue;
                }
                break;
            }
            let context: Vec<String> = lines[start..i].iter().map(|l| l.to_string()).collect();
            let last = context.last().cloned().unwrap_or_default();
            if !self.ignore.iter().any(|p| p.is_match(&last)) {
                out.push(Finding {
                    line: last,
                    context,
                });
            }
        }
        out
    }
}

/// A declared app.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// Its name.
    pub name: AppName,
    /// The image, which must be on the engine (itproxy does not pull), or which `build` makes.
    pub image: String,
    /// A directory with a Dockerfile to build `image` from before each start (the engine's
    /// cache makes an unchanged one quick).
    pub build: Option<std::path::PathBuf>,
    /// The step it starts in.
    pub step: String,
    /// Apps that must be ready before it starts.
    pub depends_on: Vec<AppName>,
    /// Environment variables (over the CA variables itproxy sets).
    pub env: BTreeMap<String, String>,
    /// Its containers (at least one).
    pub endpoints: Vec<Endpoint>,
    /// When it is ready.
    pub ready: Readiness,
    /// What `logs --errors` reports.
    pub errors: ErrorScan,
    /// What is mounted into its containers.
    pub volumes: Vec<Volume>,
    /// How `app restart` replaces its containers.
    pub restart: RestartOrder,
    /// What happens when a container of the ready app exits on its own.
    pub restart_policy: RestartPolicy,
    /// Whether the app keeps no state of its own: `app restart` may then run new containers
    /// beside the old ones even when nothing changed (see [`RestartOrder`]).
    pub stateless: bool,
    /// The most memory each of its containers may use (the kernel kills it beyond).
    pub memory: Option<MemoryLimit>,
    /// A clock of its own (libfaketime), if declared.
    pub faketime: Option<FakeTime>,
}

/// An app's own clock, through libfaketime: its processes read the real time moved by an
/// offset, which `itproxy time set` changes while they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeTime {
    /// The clock reads this time (Unix seconds) when the app starts, and runs on from there.
    At(i64),
    /// The clock runs this many seconds ahead of the real one (behind if negative).
    Offset(i64),
}

impl FakeTime {
    /// `"+3d"`, `"-2h 30m"`, `"+0s"` (an offset), or `"2027-01-01 10:00:00"` /
    /// `"2027-01-01T10:00:00Z"` / `"2027-01-01"` (a time, UTC).
    pub fn parse(text: &str) -> Result<FakeTime, String> {
        let t = text.trim();
        let explain = |e: String| {
            format!(
                "{text:?}: {e}; use an offset like \"+3d\" or \"-2h\", or a UTC time like \
                 \"2027-01-01 10:00:00\""
            )
        };
        if let Some((sign, rest)) = t
            .strip_prefix('+')
            .map(|r| (1, r))
            .or_else(|| t.strip_prefix('-').map(|r| (-1, r)))
        {
            let d = humantime::parse_duration(rest.trim()).map_err(|e| explain(e.to_string()))?;
            let secs = i64::try_from(d.as_secs()).map_err(|_| explain("too far".into()))?;
            return Ok(FakeTime::Offset(sign * secs));
        }
        let full = if t.len() == 10 {
            format!("{t} 00:00:00")
        } else {
            t.to_string()
        };
        let at = humantime::parse_rfc3339_weak(&full).map_err(|e| explain(e.to_string()))?;
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| explain("before 1970".into()))?
            .as_secs();
        Ok(FakeTime::At(
            i64::try_from(secs).map_err(|_| explain("too far".into()))?,
        ))
    }

    /// The offset, in seconds, that makes the clock read as declared when the real time is
    /// `now` (Unix seconds).
    pub fn offset_at(&self, now: i64) -> i64 {
        match *self {
            FakeTime::At(t) => t - now,
            FakeTime::Offset(o) => o,
        }
    }
}

impl fmt::Display for FakeTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FakeTime::At(t) => {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
                write!(f, "{}", humantime::format_rfc3339_seconds(at))
            }
            FakeTime::Offset(o) => {
                let d =
                    humantime::format_duration(std::time::Duration::from_secs(o.unsigned_abs()));
                write!(f, "{}{d}", if o < 0 { "-" } else { "+" })
            }
        }
    }
}

/// How a restart replaces a running app's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOrder {
    /// Blue/green: new containers start beside the old ones, which serve until the new ones
    /// are ready; then the routes switch and the old ones stop. No request fails. Not for apps
    /// that own data (two PostgreSQL servers cannot share a data directory).
    StartFirst,
    /// The old containers stop, then new ones start; meanwhile the app's names answer 503.
    StopFirst,
}

impl RestartOrder {
    /// The order an app gets when it declares none: start-first, unless it mounts a named
    /// volume writable (its data would have two writers).
    pub fn default_for(volumes: &[Volume]) -> RestartOrder {
        if volumes
            .iter()
            .any(|v| matches!(v.source, VolumeSource::Named(_)) && !v.read_only)
        {
            RestartOrder::StopFirst
        } else {
            RestartOrder::StartFirst
        }
    }
}

impl fmt::Display for RestartOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartOrder::StartFirst => "start-first",
            RestartOrder::StopFirst => "stop-first",
        })
    }
}

/// What happens when a container of a ready app exits on its own, as Compose's `restart:` and
/// Kubernetes' `restartPolicy` (with its CrashLoopBackOff: the waits double, up to a cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Started again after an exit with a code other than 0, or a kill (OOM, `docker kill`).
    #[default]
    OnFailure,
    /// Started again after any exit.
    Always,
    /// Left stopped; `itproxy app restart` starts it.
    No,
}

impl RestartPolicy {
    /// Whether a container that exited with `code` (None: unknown) is started again.
    pub fn restarts_after(&self, code: Option<i64>) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != Some(0),
            RestartPolicy::No => false,
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::No => "no",
        })
    }
}

/// A container's memory limit in bytes, as `docker run --memory` reads it: a number with an
/// optional unit (b, k, m, g; KiB, MiB, GiB and kb, mb, gb alike are powers of 1024, as for
/// Docker), at least 6 MiB (the engine's minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit(u64);

impl MemoryLimit {
    /// The limit in bytes.
    pub fn bytes(&self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for MemoryLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let explain = |why: &str| format!("{text:?} {why}; use e.g. \"256m\" or \"1GiB\"");
        let n: u64 = number
            .parse()
            .map_err(|_| explain("is not a number of bytes"))?;
        let scale: u64 = match unit.trim() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return Err(explain("has an unknown unit")),
        };
        let bytes = n
            .checked_mul(scale)
            .ok_or_else(|| explain("is too large"))?;
        if bytes < 6 << 20 {
            return Err(explain("is below the engine's minimum of 6 MiB"));
        }
        if bytes > i64::MAX as u64 {
            return Err(explain("is too large"));
        }
        Ok(MemoryLimit(bytes))
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.0 >> 20)
    }
}

/// A mount of an app's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// What is mounted.
    pub source: VolumeSource,
    /// Where, in the container (an absolute path).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a [`Volume`] mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A Docker volume of the environment: `data` is `itproxy-<env>-data` on the engine,
    /// created (and labelled) on first use, kept when containers are recreated.
    Named(String),
    /// A directory or file of the host (absolute).
    Host(std::path::PathBuf),
}

/// One step: apps started together, each once its dependencies are ready.
#[derive(Debug, Clone)]
pub struct Step {
    /// The step's name.
    pub name: String,
    /// Its apps, in declaration order.
    pub apps: Vec<AppSpec>,
}

/// Every declared app, in steps, checked as a whole.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    steps: Vec<Step>,
}

impl Plan {
    /// Groups `apps` into steps (in `order` if given, else in order of first use) and checks
    /// names, dependencies and steps.
    pub fn new(apps: Vec<AppSpec>, order: Option<Vec<String>>) -> Result<Plan, PlanError> {
        let err = |app: &AppName, key, message: String| PlanError {
            app: app.to_string(),
            key,
            message,
        };
        let mut order_given = order.is_some();
        let mut order = order.unwrap_or_default();
        if order_given && order.is_empty() {
            order_given = false;
        }
        let mut seen_apps: BTreeSet<&AppName> = BTreeSet::new();
        let mut endpoint_owner: HashMap<&AppName, &AppName> = HashMap::new();
        for app in &apps {
            if !seen_apps.insert(&app.name) {
                return Err(err(&app.name, "name", "two apps have this name".into()));
            }
            if !order.contains(&app.step) {
                if order_given {
                    return Err(err(
                        &app.name,
                        "step",
                        format!(
                            "step {:?} is not in env.steps ({}); add it there",
                            app.step,
                            order.join(", ")
                        ),
                    ));
                }
                order.push(app.step.clone());
            }
            for e in &app.endpoints {
                if let Some(other) = endpoint_owner.insert(&e.name, &app.name) {
                    return Err(err(
                        &app.name,
                        "endpoints",
                        format!(
                            "endpoint {:?} is also declared by app {other:?}; endpoint names are \
                             host names and must be unique",
                            e.name.as_str()
                        ),
                    ));
                }
            }
        }
        let step_of: HashMap<&AppName, usize> = apps
            .iter()
            .map(|a| {
                (
                    &a.name,
                    order.iter().position(|s| *s == a.step).unwrap_or(0),
                )
            })
            .collect();
        for app in &apps {
            for dep in &app.depends_on {
                let Some(&dep_step) = step_of.get(dep) else {
                    return Err(err(
                        &app.name,
                        "depends_on",
                        format!("there is no app {:?}", dep.as_str()),
                    ));
                };
                if dep == &app.name {
                    return Err(err(
                        &app.name,
                        "depends_on",
                        "an app cannot depend on itself".into(),
                    ));
                }
                if dep_step > step_of[&app.name] {
                    return Err(err(
                        &app.name,
                        "depends_on",
                        format!(
                            "{dep} is in step {:?}, which runs after this app's step {:?}",
                            order[dep_step], app.step
                        ),
                    ));
                }
            }
        }
        if let Some(cycle) = find_cycle(&apps) {
            let names: Vec<&str> = cycle.iter().map(|n| n.as_str()).collect();
            return Err(err(
                cycle[0],
                "depends_on",
                format!("dependency cycle: {}", names.join(" -> ")),
            ));
        }
        let mut steps: Vec<Step> = order
            .into_iter()
            .map(|name| Step {
                name,
                apps: Vec::new(),
            })
            .collect();
        for app in apps {
            let i = steps
                .iter()
                .position(|s| s.name == app.step)
                .expect("step collected");
            steps[i].apps.push(app);
        }
        Ok(Plan { steps })
    }

    /// The steps in order (steps without apps included, so `--step` can name them).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Every app, in step order.
    pub fn apps(&self) -> impl Iterator<Item = &AppSpec> {
        self.steps.iter().flat_map(|s| s.apps.iter())
    }

    /// One app by name.
    pub fn app(&self, name: &str) -> Option<&AppSpec> {
        self.apps().find(|a| a.name.as_str() == name)
    }

    /// Whether no app is declared.
    pub fn is_empty(&self) -> bool {
        self.apps().next().is_none()
    }
}

/// A dependency cycle, as the path that closes it (first name repeated at the end).
fn find_cycle(apps: &[AppSpec]) -> Option<Vec<&AppName>> {
    let deps: HashMap<&AppName, &[AppName]> = apps
        .iter()
        .map(|a| (&a.name, a.depends_on.as_slice()))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark: HashMap<&AppName, u8> = HashMap::new();
    fn visit<'a>(
        n: &'a AppName,
        deps: &HashMap<&'a AppName, &'a [AppName]>,
        mark: &mut HashMap<&'a AppName, u8>,
        path: &mut Vec<&'a AppName>,
    ) -> Option<Vec<&'a AppName>> {
        match mark.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| *p == n).expect("on path");
                let mut cycle = path[start..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(n, 1);
        path.push(n);
        for d in deps.get(n).copied().unwrap_or_default() {
            if let Some(c) = visit(d, deps, mark, path) {
                return Some(c);
            }
        }
        path.pop();
        mark.insert(n, 2);
        None
    }
    for a in apps {
        if let Some(c) = visit(&a.name, &deps, &mut mark, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, step: &str, deps: &[&str]) -> AppSpec {
        AppSpec {
            name: name.parse().unwrap(),
            image: "img".into(),
            build: None,
            step: step.into(),
            depends_on: deps.iter().map(|d| d.parse().unwrap()).collect(),
            env: BTreeMap::new(),
            endpoints: vec![Endpoint {
                name: name.parse().unwrap(),
                command: None,
                port: None,
            }],
            ready: Readiness {
                check: Check::Running,
                endpoint: 0,
                timeout: DEFAULT_READY_TIMEOUT,
            },
            errors: ErrorScan::default(),
            volumes: Vec::new(),
            restart: RestartOrder::StartFirst,
            restart_policy: RestartPolicy::OnFailure,
            stateless: false,
            memory: None,
            faketime: None,
        }
    }

    #[test]
    fn memory_limits_read_as_docker_reads_them() {
        let bytes = |t: &str| t.parse::<MemoryLimit>().map(|m| m.bytes());
        assert_eq!(bytes("64m"), Ok(64 << 20));
        assert_eq!(bytes("64MiB"), Ok(64 << 20));
        assert_eq!(bytes(" 1G "), Ok(1 << 30));
        assert_eq!(bytes("8388608"), Ok(8 << 20));
        for bad in ["", "m", "1m", "64 parsecs", "-5m", "99999999999999999g"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fake_times_are_offsets_or_utc_times() {
        assert_eq!(FakeTime::parse("+3d"), Ok(FakeTime::Offset(3 * 86400)));
        assert_eq!(FakeTime::parse("-2h 30m"), Ok(FakeTime::Offset(-9000)));
        assert_eq!(FakeTime::parse("+0s"), Ok(FakeTime::Offset(0)));
        assert_eq!(
            FakeTime::parse("2030-06-01 12:00:00"),
            Ok(FakeTime::At(1_906_545_600))
        );
        assert_eq!(
            FakeTime::parse("2030-06-01"),
            Ok(FakeTime::At(1_906_502_400))
        );
        assert_eq!(
            FakeTime::parse("2030-06-01T12:00:00Z"),
            Ok(FakeTime::At(1_906_545_600))
        );
        for bad in ["next tuesday", "+", "+3 fortnights", "2030-13-01", ""] {
            let e = FakeTime::parse(bad).unwrap_err();
            assert!(e.contains("\"+3d\""), "{bad}: {e}");
        }
        // An absolute time is an offset from the moment the app starts.
        assert_eq!(FakeTime::At(1000).offset_at(400), 600);
        assert_eq!(FakeTime::Offset(-5).offset_at(400), -5);
        assert_eq!(FakeTime::Offset(-9000).to_string(), "-2h 30m");
        assert_eq!(
            FakeTime::At(1_906_545_600).to_string(),
            "2030-06-01T12:00:00Z"
        );
    }

    #[test]
    fn steps_in_order_of_first_use_or_as_given() {
        let plan = Plan::new(
            vec![
                app("web", "apps", &["db"]),
                app("db", "infra", &[]),
                app("w", "apps", &[]),
            ],
            Some(vec!["infra".into(), "apps".into()]),
        )
        .unwrap();
        let steps: Vec<(&str, Vec<&str>)> = plan
            .steps()
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.apps.iter().map(|a| a.name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            vec![("infra", vec!["db"]), ("apps", vec!["web", "w"])]
        );

        let plan = Plan::new(vec![app("a", "x", &[]), app("b", "y", &[])], None).unwrap();
        assert_eq!(plan.steps()[0].name, "x");
    }

    #[test]
    fn bad_plans_name_the_app_and_key() {
        let e = Plan::new(
            vec![
                app("a", "s", &["b"]),
                app("b", "s", &["c"]),
                app("c", "s", &["a"]),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(e.key, "depends_on");
        assert!(e.message.contains("a -> b -> c -> a"), "{e}");

        let e = Plan::new(vec![app("a", "s", &["a"])], None).unwrap_err();
        assert!(e.message.contains("itself"), "{e}");

        let e = Plan::new(vec![app("a", "s", &["nope"])], None).unwrap_err();
        assert!(
            e.to_string()
                .contains("app \"a\", `depends_on`: there is no app \"nope\""),
            "{e}"
        );

        let e = Plan::new(vec![app("a", "s", &[]), app("a", "s", &[])], None).unwrap_err();
        assert_eq!(e.key, "name");

        // Depending on an app of a later step could never be satisfied.
        let e = Plan::new(
            vec![app("db", "late", &[]), app("web", "early", &["db"])],
            Some(vec!["early".into(), "late".into()]),
        )
        .unwrap_err();
        assert!(e.message.contains("runs after"), "{e}");

        let e = Plan::new(vec![app("a", "other", &[])], Some(vec!["s".into()])).unwrap_err();
        assert_eq!(e.key, "step");

        let mut b = app("b", "s", &[]);
        b.endpoints[0].name = "a".parse().unwrap();
        let e = Plan::new(vec![app("a", "s", &[]), b], None).unwrap_err();
        assert_eq!(e.key, "endpoints");
    }

    #[test]
    fn names_are_dns_labels() {
        assert!("api".parse::<AppName>().is_ok());
        assert!("s3-eu-1".parse::<AppName>().is_ok());
        for bad in ["", "Api", "-a", "a-", "a.b", "a_b", &"x".repeat(41)] {
            assert!(bad.parse::<AppName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_scan() {
        let scan = ErrorScan::default();
        assert!(scan.is_error("2026 ERROR: disk full"));
        assert!(scan.is_error("thread 'main' panicked at src/main.rs"));
        assert!(!scan.is_error("errors=0 all good"));
        // Levels, as loggers write them.
        for line in [
            "ERROR:django.request:Internal Server Error: /api/orders",
            "2026-11-27 10:00:00.123 UTC [61] FATAL:  password authentication failed",
            "[2026-11-27 10:00:00 +0000] [1] [CRITICAL] WORKER TIMEOUT (pid:7)",
            "2026/11/27 10:00:00 [error] 12#12: *1 connect() failed",
            "ts=2026-11-27T10:00:00Z level=error msg=\"queue down\"",
            r#"{"time":"2026-11-27T10:00:00Z","level":"error","msg":"boom"}"#,
            "panic: runtime error: index out of range",
        ] {
            assert!(scan.is_error(line), "{line}");
        }
        // The word in a message, a URL or a count is not a level.
        for line in [
            "INFO:root:retrying after a connection error",
            r#"172.18.0.1 - - [27/Nov/2026:10:00:00 +0000] "GET /docs/errors/404 HTTP/1.1" 200 512"#,
            "2026-11-27 10:00:00 INFO worker: 0 errors, 12 jobs",
            "level=info msg=\"error budget fine\"",
        ] {
            assert!(!scan.is_error(line), "{line}");
        }
        let scan = ErrorScan {
            ignore: vec![Regex::new("expected error").unwrap()],
            ..ErrorScan::default()
        };
        assert!(!scan.is_error("an expected error: retrying"));
    }

    #[test]
    fn a_traceback_is_one_finding_named_by_its_exception() {
        let log = [
            "INFO starting",
            "Traceback (most recent call last):",
            "  File \"/app/views.py\", line 12, in checkout",
            "    total = cart.total()",
            "KeyError: 'price'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"/app/views.py\", line 14, in checkout",
            "ValueError: cart without prices",
            "INFO request done",
            "ERROR another one",
        ];
        let found = ErrorScan::default().findings(log);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].line, "ValueError: cart without prices");
        assert_eq!(found[0].context.len(), 10);
        assert_eq!(found[0].context[3], "KeyError: 'price'");
        assert_eq!(found[1].line, "ERROR another one");
        assert!(found[1].context.is_empty());

        let ignoring = ErrorScan {
            ignore: vec![Regex::new("cart without prices").unwrap()],
            ..ErrorScan::default()
        };
        assert_eq!(
            ignoring.findings(log).len(),
            1,
            "ignore applies to the exception"
        );
        // A traceback cut short by the end of the log is still one finding.
        let cut =
            ErrorScan::default().findings(["Traceback (most recent call last):", "  File \"x\""]);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].line, "  File \"x\"");
    }
}
