//! `[[app]]` → [`Plan`]: each app's keys that go together are checked here (endpoints and
//! their ports, `ready`, log patterns, step); the plan as a whole (duplicate names, cycles,
//! step order) is checked by [`Plan::new`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use itproxy_orchestrator::{
    AppName, AppSpec, Check, Endpoint, EndpointKind, EnvName, ErrorScan, FakeTime, Plan, PlanError,
    Readiness, RestartOrder, RestartPolicy, Volume, VolumeSource, DEFAULT_READY_TIMEOUT,
    DEFAULT_STEP,
};

use super::file::{
    Command, FileApp, FileEndpoint, FileReady, FileRestartPolicy, Kind, OneOrMany, Parsed, Port,
    Restart,
};
use super::Domains;

/// A mistake in the `[[app]]` tables, naming the app and the key.
#[derive(Debug, thiserror::Error)]
pub(super) enum AppsError {
    /// A key of one app, or the plan as a whole.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An endpoint's `kind` without its `port`.
    #[error("app {app:?}, endpoint {endpoint:?}: `kind` needs a `port`")]
    KindWithoutPort {
        /// The app.
        app: String,
        /// The endpoint.
        endpoint: String,
    },
}

/// Turns the `[[app]]` tables into a [`Plan`], checking what serde could not: keys that go
/// together, and the plan as a whole (duplicates, cycles, steps).
pub(super) fn build_plan(
    apps: Vec<FileApp>,
    steps: Option<Vec<String>>,
    domains: &Domains,
    base: &Path,
    env: Option<&EnvName>,
) -> Result<Plan, AppsError> {
    let apps = apps
        .into_iter()
        .map(|a| app_spec(a, domains, base, env))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan::new(apps, steps)?)
}

/// The error for `key` of app `app`.
fn key_error(app: &AppName, key: &'static str, message: impl Into<String>) -> AppsError {
    AppsError::Plan(PlanError {
        app: app.as_str().to_string(),
        key,
        message: message.into(),
    })
}

/// One `[[app]]`: its image, endpoints, env, `ready`, log patterns and step.
fn app_spec(
    a: FileApp,
    domains: &Domains,
    base: &Path,
    env_name: Option<&EnvName>,
) -> Result<AppSpec, AppsError> {
    let name = a.name.0;
    let build = match a.build {
        Some(dir) => {
            let dir = base.join(dir);
            if !dir.join("Dockerfile").is_file() {
                return Err(key_error(
                    &name,
                    "build",
                    format!("{} has no Dockerfile", dir.display()),
                ));
            }
            Some(dir)
        }
        None => None,
    };
    let image = match (a.image, &build) {
        (Some(i), _) if i.trim().is_empty() => {
            return Err(key_error(
                &name,
                "image",
                "is empty; name an image on the engine, e.g. \"itproxy-test/web:latest\"",
            ))
        }
        (Some(i), _) => i,
        // Built images are named after the environment and the app.
        (None, Some(_)) => format!(
            "itproxy-{}/{}:latest",
            env_name.map_or("local".to_string(), |e| e.to_string()),
            name.as_str()
        ),
        (None, None) => {
            return Err(key_error(
                &name,
                "image",
                "is missing; name an image on the engine, or give `build = \"./dir\"` with a \
                 Dockerfile",
            ))
        }
    };
    let endpoints = endpoints(&name, a.command, a.port, a.kind, a.endpoints)?;
    // The files first, `env` over them.
    let mut env = BTreeMap::new();
    for file in a.env_file.map(OneOrMany::into_vec).unwrap_or_default() {
        env.extend(env_file(&name, &base.join(&file))?);
    }
    env.extend(a.env);
    let volumes = a
        .volumes
        .iter()
        .map(|v| volume(&name, v, base))
        .collect::<Result<Vec<_>, _>>()?;
    for k in env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(key_error(
                &name,
                "env",
                format!("{k:?} is not a variable name"),
            ));
        }
    }
    let ready = match a.ready {
        None => Readiness {
            check: Check::Running,
            endpoint: 0,
            timeout: DEFAULT_READY_TIMEOUT,
        },
        Some(r) => readiness(&name, r, &endpoints, domains)?,
    };
    let errors = error_scan(a.log_errors, a.log_ignore);
    let restart = match a.restart {
        Some(Restart::StartFirst) => RestartOrder::StartFirst,
        Some(Restart::StopFirst) => RestartOrder::StopFirst,
        None => RestartOrder::default_for(&volumes),
    };
    let faketime = a
        .faketime
        .as_deref()
        .map(FakeTime::parse)
        .transpose()
        .map_err(|m| key_error(&name, "faketime", m))?;
    let step = a.step.unwrap_or_else(|| DEFAULT_STEP.into());
    if step.trim().is_empty() {
        return Err(key_error(&name, "step", "is empty"));
    }
    Ok(AppSpec {
        name,
        image,
        build,
        step,
        depends_on: a.depends_on.into_iter().map(|d| d.0).collect(),
        env,
        endpoints,
        ready,
        errors,
        volumes,
        restart,
        restart_policy: match a.restart_policy {
            None | Some(FileRestartPolicy::OnFailure) => RestartPolicy::OnFailure,
            Some(FileRestartPolicy::Always) => RestartPolicy::Always,
            Some(FileRestartPolicy::No) => RestartPolicy::No,
        },
        stateless: a.stateless,
        memory: a.memory.map(|m| m.0),
        faketime,
    })
}

/// The largest `env_file` read (a config file names files; it should not name a disk).
const MAX_ENV_FILE: u64 = 1 << 20;

/// `KEY=VALUE` lines (blank lines and `#` comments skipped, an `export ` prefix and quotes
/// around the value dropped), as Compose reads an `env_file`.
fn env_file(app: &AppName, path: &Path) -> Result<BTreeMap<String, String>, AppsError> {
    use std::io::Read;
    let err = |m: String| key_error(app, "env_file", format!("{}: {m}", path.display()));
    // Regular files only: a device or a pipe could be read forever.
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_ENV_FILE + 1).read_to_string(&mut text))
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_ENV_FILE {
        return Err(err(format!("is larger than {MAX_ENV_FILE} bytes")));
    }
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(format!("line {}: {line:?} is not KEY=VALUE", n + 1)));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(err(format!(
                "line {}: {key:?} is not a variable name",
                n + 1
            )));
        }
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(a, b)| {
                (value.len() >= 2 && value.starts_with(*a) && value.ends_with(*b))
                    .then(|| &value[1..value.len() - 1])
            })
            .unwrap_or(value);
        vars.insert(key.to_string(), value.to_string());
    }
    Ok(vars)
}

/// `SOURCE:TARGET[:ro|:rw]`: a source with a `/` (or `.`, `~`) is a host path, relative to
/// the config file; otherwise it names a volume of the environment.
fn volume(app: &AppName, spec: &str, base: &Path) -> Result<Volume, AppsError> {
    let err = |m: String| key_error(app, "volumes", format!("{spec:?}: {m}"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, read_only) = match parts[..] {
        [s, t] => (s, t, false),
        [s, t, "ro"] => (s, t, true),
        [s, t, "rw"] => (s, t, false),
        [_, _, mode] => return Err(err(format!("mode {mode:?} is neither ro nor rw"))),
        _ => return Err(err("use SOURCE:TARGET or SOURCE:TARGET:ro".into())),
    };
    if !target.starts_with('/') {
        return Err(err(format!(
            "the target {target:?} is not an absolute path"
        )));
    }
    let source = if source.starts_with(['/', '.', '~']) {
        let path = match source.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(rest))
                .ok_or_else(|| err("HOME is not set for ~".into()))?,
            None => base.join(source),
        };
        VolumeSource::Host(path)
    } else if !source.is_empty()
        && source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && source.as_bytes()[0].is_ascii_alphanumeric()
    {
        VolumeSource::Named(source.to_string())
    } else {
        return Err(err(format!(
            "{source:?} is neither a path (./data, /srv/data) nor a volume name (data)"
        )));
    };
    Ok(Volume {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// The app's containers: its `endpoints`, else one named after the app with the app's `port`
/// and `kind`. An endpoint without a command of its own runs the app's.
fn endpoints(
    app: &AppName,
    command: Option<Command>,
    port: Option<Port>,
    kind: Option<Kind>,
    list: Option<Vec<FileEndpoint>>,
) -> Result<Vec<Endpoint>, AppsError> {
    let app_command = command.map(Command::into_argv);
    let endpoints = match list {
        None => vec![endpoint(app, app.clone(), None, port, kind)?],
        Some(list) => {
            if port.is_some() || kind.is_some() {
                return Err(key_error(
                    app,
                    "port",
                    "give ports in `endpoints` when the app has endpoints",
                ));
            }
            if list.is_empty() {
                return Err(key_error(
                    app,
                    "endpoints",
                    "is empty; remove it, or list at least one",
                ));
            }
            list.into_iter()
                .map(|e| endpoint(app, e.name.0, e.command, e.port, e.kind))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(endpoints
        .into_iter()
        .map(|mut e| {
            e.command = e.command.or_else(|| app_command.clone());
            e
        })
        .collect())
}

/// One endpoint; `kind` needs a `port`, and a port is HTTP unless `kind = "tcp"`.
fn endpoint(
    app: &AppName,
    name: AppName,
    command: Option<Command>,
    port: Option<Port>,
    kind: Option<Kind>,
) -> Result<Endpoint, AppsError> {
    let port = match (port, kind) {
        (Some(p), Some(Kind::Tcp)) => Some((p.0, EndpointKind::Tcp)),
        (Some(p), _) => Some((p.0, EndpointKind::Http)),
        (None, Some(_)) => {
            return Err(AppsError::KindWithoutPort {
                app: app.as_str().to_string(),
                endpoint: name.as_str().to_string(),
            })
        }
        (None, None) => None,
    };
    Ok(Endpoint {
        name,
        command: command.map(Command::into_argv),
        port,
    })
}

/// `ready = { ... }`: exactly one check, the keys that go with it, the endpoint it asks and
/// its timeout.
fn readiness(
    app: &AppName,
    r: FileReady,
    endpoints: &[Endpoint],
    domains: &Domains,
) -> Result<Readiness, AppsError> {
    let err = |key, message: String| key_error(app, key, message);
    let endpoint = match &r.endpoint {
        Some(e) => endpoints
            .iter()
            .position(|x| x.name == e.0)
            .ok_or_else(|| {
                err(
                    "ready.endpoint",
                    format!("the app has no endpoint {:?}", e.0.as_str()),
                )
            })?,
        None => match r.tcp.or(r.port) {
            // The endpoint serving that port, else the first with a port.
            Some(p) => endpoints
                .iter()
                .position(|x| x.port.map(|(q, _)| q) == Some(p.0))
                .unwrap_or(0),
            None => endpoints.iter().position(|x| x.port.is_some()).unwrap_or(0),
        },
    };
    let given = [
        r.tcp.is_some(),
        r.http.is_some(),
        r.log.is_some(),
        r.docker_health == Some(true),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(err(
            "ready",
            "give exactly one of `tcp = PORT`, `http = \"/path\"`, `log = \"regex\"` or `docker_health = true`".into(),
        ));
    }
    if r.status.is_some() && r.http.is_none() {
        return Err(err("ready.status", "only goes with `http`".into()));
    }
    if r.host.is_some() && r.http.is_none() {
        return Err(err("ready.host", "only goes with `http`".into()));
    }
    if r.port.is_some() && r.http.is_none() {
        return Err(err(
            "ready.port",
            "only goes with `http` (`tcp` names its port)".into(),
        ));
    }
    let check = if let Some(p) = r.tcp {
        Check::Tcp { port: p.0 }
    } else if let Some(path) = r.http {
        if !path.starts_with('/') {
            return Err(err(
                "ready.http",
                format!("{path:?} is not a path; it starts with '/'"),
            ));
        }
        let port = match r
            .port
            .map(|p| p.0)
            .or(endpoints[endpoint].port.map(|(p, _)| p))
        {
            Some(p) => p,
            None => {
                return Err(err(
                    "ready.http",
                    format!(
                        "endpoint {:?} has no port to ask; give `port`",
                        endpoints[endpoint].name.as_str()
                    ),
                ))
            }
        };
        let status = r.status.unwrap_or(200);
        if !(100..=599).contains(&status) {
            return Err(err(
                "ready.status",
                format!("{status} is not an HTTP status"),
            ));
        }
        // The name the endpoint is served as, as a client through itproxy would send it.
        let host = match r.host {
            Some(h)
                if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                return Err(err(
                    "ready.host",
                    format!("{h:?} is not a host name (e.g. \"api.test\" or \"localhost:8000\")"),
                ))
            }
            Some(h) => h,
            None => domains
                .qualify(endpoints[endpoint].name.as_str())
                .map_err(|m| err("ready", m))?
                .to_string(),
        };
        Check::Http {
            port,
            path,
            status,
            host,
        }
    } else if let Some(re) = r.log {
        Check::Log(re.0)
    } else {
        Check::DockerHealth
    };
    let timeout = r.timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
    if timeout.is_zero() || timeout > Duration::from_secs(3600) {
        return Err(err("ready.timeout", "must be from 1ms to 1h".into()));
    }
    Ok(Readiness {
        check,
        endpoint,
        timeout,
    })
}

/// What `logs --errors` reports for the app: `log_errors` (else the default pattern), minus
/// `log_ignore`.
fn error_scan(
    log_errors: Option<Vec<Parsed<regex::Regex>>>,
    log_ignore: Vec<Parsed<regex::Regex>>,
) -> ErrorScan {
    let mut errors = ErrorScan::default();
    if let Some(p) = log_errors {
        errors.patterns = p.into_iter().map(|r| r.0).collect();
    }
    errors.ignore = log_ignore.into_iter().map(|r| r.0).collect();
    errors
}

#[cfg(test)]
mod tests {
    use super::super::{CliOverrides, Config};
    use super::*;
    use itproxy_orchestrator::{Volume, VolumeSource};

    fn load(text: &str) -> Result<Config, String> {
        Config::from_str(text, &CliOverrides::default()).map_err(|e| e.to_string())
    }

    const APPS: &str = r#"
        [env]
        name = "demo"
        domain = "test"
        steps = ["infra", "apps"]

        [[app]]
        name  = "s3"
        image = "itproxy-test/s3:latest"
        step  = "infra"
        env   = { HOST_NAME = "s3.test" }
        endpoints = [{ name = "s3", port = 8000, kind = "tcp" }]
        ready = { tcp = 8000, timeout = "30s" }

        [[app]]
        name  = "sentry"
        image = "itproxy-test/web:latest"
        depends_on = ["s3"]
        endpoints = [
          { name = "www", command = ["start", "-b", "0.0.0.0:9000"], port = 9000 },
          { name = "wrk", command = ["worker"] },
        ]
        ready = { http = "/health", status = 200 }
        log_ignore = ["expected error"]

        [[app]]
        name = "api"
        image = "itproxy-test/web:latest"
        command = "httpd -f -p 8080"
        port = 8080
        ready = { log = "listening" }
    "#;

    #[test]
    fn apps_in_steps() {
        let c = load(APPS).unwrap();
        let env = c.env.as_ref().unwrap();
        assert_eq!(env.name.to_string(), "demo");
        let steps: Vec<(&str, Vec<&str>)> = env
            .apps
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
            [("infra", vec!["s3"]), ("apps", vec!["sentry", "api"])]
        );
        let s3 = env.apps.app("s3").unwrap();
        assert_eq!(s3.endpoints[0].port, Some((8000, EndpointKind::Tcp)));
        assert_eq!(s3.ready.check, Check::Tcp { port: 8000 });
        assert_eq!(s3.ready.timeout, Duration::from_secs(30));
        let sentry = env.apps.app("sentry").unwrap();
        assert_eq!(sentry.endpoints[1].port, None);
        assert_eq!(
            sentry.endpoints[1].command.as_deref(),
            Some(&["worker".to_string()][..])
        );
        assert_eq!(
            sentry.ready.check,
            Check::Http {
                port: 9000,
                path: "/health".into(),
                status: 200,
                host: "www.test".into(),
            },
            "probed as the name it is served as, not the app's"
        );
        assert!(!sentry.errors.is_error("an expected error, fine"));
        assert!(sentry.errors.is_error("ERROR: boom"));
        // One endpoint named after the app; a string command runs in a shell.
        let api = env.apps.app("api").unwrap();
        assert_eq!(api.endpoints[0].name.as_str(), "api");
        assert_eq!(api.endpoints[0].port, Some((8080, EndpointKind::Http)));
        assert_eq!(
            api.endpoints[0].command.as_ref().unwrap()[..2],
            ["/bin/sh", "-c"]
        );
        assert_eq!(c.domains.to_string_list(), "test");
    }

    #[test]
    fn apps_restart_start_first_unless_they_own_data_or_say_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("itproxy.toml");
        let order = |keys: &str| {
            std::fs::write(
                &path,
                format!("[env]\nname = \"d\"\n[[app]]\nname = \"a\"\nimage = \"i\"\n{keys}\n"),
            )
            .unwrap();
            super::super::Config::load(Some(&path), &CliOverrides::default())
                .map(|c| c.env.as_ref().unwrap().apps.app("a").unwrap().restart)
                .map_err(|e| e.to_string())
        };
        assert_eq!(order(""), Ok(RestartOrder::StartFirst));
        assert_eq!(
            order("volumes = [\"./src:/src\"]"),
            Ok(RestartOrder::StartFirst)
        );
        assert_eq!(
            order("volumes = [\"data:/d:ro\"]"),
            Ok(RestartOrder::StartFirst)
        );
        assert_eq!(
            order("volumes = [\"data:/d\"]"),
            Ok(RestartOrder::StopFirst)
        );
        assert_eq!(
            order("volumes = [\"data:/d\"]\nrestart = \"start-first\""),
            Ok(RestartOrder::StartFirst)
        );
        assert_eq!(
            order("restart = \"stop-first\""),
            Ok(RestartOrder::StopFirst)
        );
        let err = order("restart = \"rolling\"").unwrap_err();
        assert!(
            err.contains("start-first") && err.contains("stop-first"),
            "{err}"
        );
    }

    #[test]
    fn env_files_and_volumes_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("api.env"),
            "# the api's settings\n\nexport DEBUG=1\nNAME=\"shop api\"\nTOKEN='a=b'\nPORT=1\n",
        )
        .unwrap();
        let path = dir.path().join("itproxy.toml");
        std::fs::write(
            &path,
            "[env]\nname = \"d\"\n[[app]]\nname = \"api\"\nimage = \"i\"\n\
             env_file = \"api.env\"\nenv = { PORT = \"8000\" }\n\
             volumes = [\"data:/var/lib/data\", \"./seed:/seed:ro\", \"/srv/x:/x:rw\"]\n",
        )
        .unwrap();
        let c = super::super::Config::load(Some(&path), &CliOverrides::default()).unwrap();
        let api = c.env.as_ref().unwrap().apps.app("api").unwrap();
        let env: Vec<(&str, &str)> = api
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("DEBUG", "1"),
                ("NAME", "shop api"),
                ("PORT", "8000"),
                ("TOKEN", "a=b")
            ],
            "env over the file"
        );
        assert_eq!(
            api.volumes,
            [
                Volume {
                    source: VolumeSource::Named("data".into()),
                    target: "/var/lib/data".into(),
                    read_only: false
                },
                Volume {
                    source: VolumeSource::Host(dir.path().join("./seed")),
                    target: "/seed".into(),
                    read_only: true
                },
                Volume {
                    source: VolumeSource::Host("/srv/x".into()),
                    target: "/x".into(),
                    read_only: false
                },
            ]
        );
    }

    #[test]
    fn bad_env_files_and_volumes_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.env"), "OK=1\nnot a variable\n").unwrap();
        let load = |app: &str| {
            let path = dir.path().join("itproxy.toml");
            std::fs::write(
                &path,
                format!("[env]\nname = \"d\"\n[[app]]\nname = \"a\"\nimage = \"i\"\n{app}\n"),
            )
            .unwrap();
            super::super::Config::load(Some(&path), &CliOverrides::default())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        for (app, needles) in [
            (
                "env_file = \"missing.env\"",
                &["env_file", "missing.env"][..],
            ),
            (
                "env_file = \"bad.env\"",
                &["bad.env", "line 2", "not KEY=VALUE"],
            ),
            (
                "env_file = \"/dev/zero\"",
                &["/dev/zero", "not a regular file"],
            ),
            ("volumes = [\"data\"]", &["volumes", "SOURCE:TARGET"]),
            ("volumes = [\"data:relative\"]", &["not an absolute path"]),
            ("volumes = [\"data:/x:rx\"]", &["neither ro nor rw"]),
            (
                "volumes = [\"da ta:/x\"]",
                &["neither a path", "nor a volume name"],
            ),
            (
                "build = \"nowhere\"",
                &["`build`", "nowhere has no Dockerfile"],
            ),
        ] {
            let e = load(app);
            for n in needles {
                assert!(e.contains(n), "{app}: {e}");
            }
        }
    }

    #[test]
    fn an_app_without_image_or_build_says_both() {
        let e = load("[env]\nname = \"d\"\n[[app]]\nname = \"a\"\n").unwrap_err();
        assert!(e.contains("`image`") && e.contains("build = "), "{e}");
    }

    #[test]
    fn the_readiness_host_can_be_given() {
        let c = load(
            "[env]\nname = \"d\"\n[[app]]\nname = \"api\"\nimage = \"i\"\nport = 8000\n\
             ready = { http = \"/health\", host = \"api.example.com\" }\n",
        )
        .unwrap();
        let api = c.env.as_ref().unwrap().apps.app("api").unwrap();
        assert_eq!(
            api.ready.check.to_string(),
            "http /health on port 8000 as api.example.com = 200"
        );
    }

    #[test]
    fn bad_apps_name_the_app_and_key() {
        let base = "[env]\nname = \"demo\"\n";
        let cases: &[(&str, &[&str])] = &[
            ("[[app]]\nname = \"a\"\nimage = \"i\"\ncolour = 1\n", &["line 6", "colour"]),
            ("[[app]]\nname = \"A b\"\nimage = \"i\"\n", &["line 4", "A b"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { tcp = 1, timeout = \"soon\" }\n", &["line 6", "timeout"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { tcp = 1, http = \"/\" }\n", &["app \"a\"", "`ready`", "exactly one"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { tcp = 1, host = \"a.test\" }\n", &["app \"a\"", "ready.host", "only goes with `http`"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nport = 80\nready = { http = \"/\", host = \"a b\" }\n", &["app \"a\"", "ready.host", "not a host name"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { http = \"/\" }\n", &["app \"a\"", "no port"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nready = { log = \"(\" }\n", &["line 6", "regex"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nkind = \"tcp\"\n", &["kind", "port"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nkind = \"udp\"\n", &["line 6", "udp"]),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\nport = 0\n", &["line 6", "port 0"]),
            (
                "[[app]]\nname = \"a\"\nimage = \"i\"\ndepends_on = [\"b\"]\n[[app]]\nname = \"b\"\nimage = \"i\"\ndepends_on = [\"a\"]\n",
                &["cycle", "a -> b -> a"],
            ),
            ("[[app]]\nname = \"a\"\nimage = \"i\"\n[[app]]\nname = \"a\"\nimage = \"j\"\n", &["app \"a\"", "two apps"]),
            ("[[app]]\nname = \"a\"\nimage = \"\"\n", &["app \"a\"", "`image`"]),
            ("[[app]]\nname = \"api\"\nimage = \"i\"\nport = 1\n[routes]\napi = \"localhost:1\"\n", &["api.test", "both"]),
        ];
        for (text, needles) in cases {
            let text = format!("{base}{text}");
            let e = load(&text).unwrap_err();
            for n in *needles {
                assert!(e.contains(n), "{text:?}: missing {n:?} in {e}");
            }
        }
        let e = load("[[app]]\nname = \"a\"\nimage = \"i\"\n").unwrap_err();
        assert!(e.contains("[env] name"), "{e}");
    }
}
