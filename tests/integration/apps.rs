//! Declared apps: `itproxy up` brings an environment up in steps on its own Docker network,
//! serves every app by name from the host and from containers, swaps one for a host dev
//! server and back, checks the logs, and `down` leaves nothing behind. Real Docker engine; the
//! image is built locally from Debian's busybox-static.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::docker::{
    build_apps_image, build_clock_image, build_health_image, docker_ready, APPS_IMAGE, CLOCK_IMAGE,
    HEALTH_IMAGE,
};
use crate::util::*;

/// Removes everything labelled with the test's environment however the test ends, with the
/// docker CLI (not with the code under test).
pub(crate) struct EnvGuard(pub(crate) String);

impl Drop for EnvGuard {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=itproxy.env={}", self.0),
            ])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("itproxy-{}", self.0)])
            .output();
        let out = Command::new("docker")
            .args([
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("label=itproxy.env={}", self.0),
            ])
            .output()
            .unwrap();
        for name in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["volume", "rm", name]).output();
        }
    }
}

/// Stops a daemon started with `up --detach` (ours, found by its state directory) however the
/// test ends.
struct DetachedGuard(std::path::PathBuf);

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        let out = run_in(&self.0, &["status", "--json"]);
        if let Ok(status) = serde_json::from_slice::<Value>(&out.stdout) {
            if let Some(pid) = status["pid"].as_i64() {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
    }
}

pub(crate) fn unique_env(tag: &str) -> String {
    format!("{tag}{}-{}", std::process::id(), free_port())
}

/// `itproxy apps --json`, once the environment is no longer starting (bounded).
pub(crate) async fn wait_apps(p: &Itproxy) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = serde_json::from_str(&p.ok(&["apps", "--json"])).unwrap();
        if v["phase"] != "starting" {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "still starting after 60 s:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn app<'a>(apps: &'a Value, name: &str) -> &'a Value {
    apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name} in {apps}"))
}

fn address(apps: &Value, app_name: &str, endpoint: &str) -> String {
    app(apps, app_name)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["endpoint"] == endpoint)
        .and_then(|c| c["address"].as_str())
        .unwrap_or_else(|| panic!("no address for {app_name}/{endpoint} in {apps}"))
        .to_string()
}

fn status_pid(state_dir: &std::path::Path) -> u64 {
    let status: Value =
        serde_json::from_slice(&run_in(state_dir, &["status", "--json"]).stdout).unwrap();
    status["pid"].as_u64().unwrap()
}

pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    output_text(&out)
}

/// Runs a throwaway container on the environment's network with itproxy's DNS, as a test
/// client inside the environment.
async fn from_container(env: &str, dns: &str, script: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            &format!("itproxy-{env}"),
            "--dns",
            dns,
        ])
        .args(["--label", &format!("itproxy.env={env}-client")])
        .args([APPS_IMAGE, "sh", "-c", script])
        .output()
        .await
        .unwrap();
    output_text(&out)
}

const STORY: &str = r#"
[env]
name = "ENV"
steps = ["infra", "apps"]

[[app]]
name = "db"
image = "IMAGE"
step = "infra"
command = "echo db booting; exec nc -ll -p 5432 -e /bin/echo pong"
port = 5432
kind = "tcp"
ready = { tcp = 5432, timeout = "20s" }

[[app]]
name = "cache"
image = "HEALTHY"
step = "infra"
command = "sleep 0.5; touch /ok; exec sleep 600"
ready = { docker_health = true, timeout = "20s" }

[[app]]
name = "web"
image = "IMAGE"
step = "apps"
depends_on = ["db"]
env = { GREETING = "hello-www" }
endpoints = [
  { name = "www", port = 9000, command = "mkdir -p /www && echo ok > /www/health && echo $GREETING > /www/index.html && exec httpd -f -p 9000 -h /www" },
  { name = "worker", command = "while true; do echo working; sleep 1; done" },
]
ready = { http = "/health", status = 200, timeout = "20s" }

[[app]]
name = "api"
image = "IMAGE"
step = "apps"
command = "sleep 0.2; mkdir -p /a && echo hello-api > /a/index.html && echo api listening; exec httpd -f -p 8080 -h /a"
port = 8080
ready = { log = "listening", timeout = "20s" }
log_ignore = ["expected error"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_comes_up_in_steps_and_serves_every_app_by_name() {
    if !docker_ready() {
        return;
    }
    build_health_image();
    let env = unique_env("s");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &STORY
            .replace("ENV", &env)
            .replace("IMAGE", APPS_IMAGE)
            .replace("HEALTHY", HEALTH_IMAGE),
    );
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    let apps = wait_apps(&p).await;
    assert_eq!(apps["phase"], "ready", "{apps}\n{}", p.log());
    for name in ["db", "cache", "web", "api"] {
        assert_eq!(app(&apps, name)["state"], "ready", "{apps}\n{}", p.log());
    }
    // Steps in order: db was ready before web's containers were created.
    let log = p.log();
    let db_ready = log.find("app ready app=db").expect("db ready logged");
    let web_started = log.find("container started app=web").expect("web started");
    assert!(db_ready < web_started, "{log}");

    // From the host: HTTP endpoints by name through the proxy, TCP endpoints straight to the
    // container by DNS.
    let (code, body) = curl(p.http, "www.test", "/", &[]).await;
    assert_eq!((code, body.trim()), (200, "hello-www"));
    let (code, body) = curl(p.http, "api.test", "/", &[]).await;
    assert_eq!((code, body.trim()), (200, "hello-api"));
    let db_ip = address(&apps, "db", "db");
    let dig = Command::new("dig")
        .args([
            "+short",
            "@127.0.0.1",
            "-p",
            &p.dns.port().to_string(),
            "db.test",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), db_ip);
    let listed = p.ok(&["routes"]);
    assert!(
        listed.contains("www.test") && listed.contains("app"),
        "{listed}"
    );
    assert!(
        !listed.contains("worker"),
        "a worker has no route: {listed}"
    );

    // Containers: labelled, no published port, the CA mounted and named in the environment.
    let www = format!("itproxy-{env}-web-www");
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &www]);
    let labels: Value = serde_json::from_str(labels.trim()).unwrap();
    assert_eq!(labels["itproxy.env"], env.as_str());
    assert_eq!(labels["itproxy.app"], "web");
    assert_eq!(labels["itproxy.endpoint"], "www");
    assert_eq!(docker(&["port", &www]).trim(), "", "no published ports");
    let root = std::fs::read_to_string(p.state_dir().join("ca/root.pem")).unwrap();
    assert_eq!(docker(&["exec", &www, "cat", "/etc/itproxy/ca.pem"]), root);
    let vars = docker(&["exec", &www, "env"]);
    assert!(
        vars.contains("SSL_CERT_FILE=/etc/itproxy/ca-bundle.pem"),
        "{vars}"
    );
    assert!(
        vars.contains("NODE_EXTRA_CA_CERTS=/etc/itproxy/ca.pem"),
        "{vars}"
    );
    assert!(vars.contains("GREETING=hello-www"), "{vars}");

    // From another container: names resolve through itproxy's DNS on the gateway.
    let status: Value = serde_json::from_str(&p.ok(&["status", "--json"])).unwrap();
    let gateway = status["listeners"]["dns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| !a.starts_with("127."))
        .unwrap()
        .trim_end_matches(":53")
        .to_string();
    let port = p.http.port();
    let script = format!(
        "echo | nc db.test 5432; \
         (printf 'GET / HTTP/1.0\\r\\nHost: www.test\\r\\n\\r\\n'; sleep 1) | nc www.test {port}"
    );
    let seen = from_container(&env, &gateway, &script).await;
    assert!(seen.starts_with("pong"), "{seen}");
    assert!(
        seen.contains("HTTP/1.1 200") && seen.contains("hello-www"),
        "{seen}"
    );
    // ...and at the URLs production uses: port 80 (wget, no port in the URL) and 443.
    let seen = from_container(
        &env,
        &gateway,
        "wget -qO- http://www.test/ && nc -w 3 www.test 443 </dev/null && echo tls-port-open",
    )
    .await;
    assert!(
        seen.contains("hello-www") && seen.contains("tls-port-open"),
        "{seen}"
    );

    // Swap www for a dev server on the host: the host and the containers see it; restore.
    let dev = Backend::start("dev-server").await;
    p.ok(&["route", "www", &dev.target()]);
    let (_, body) = curl(p.http, "www.test", "/", &[]).await;
    assert!(body.contains("dev-server"), "{body}");
    let seen = from_container(
        &env,
        &gateway,
        &format!("(printf 'GET /in HTTP/1.0\\r\\nHost: www.test\\r\\n\\r\\n'; sleep 1) | nc www.test {port}"),
    )
    .await;
    assert!(seen.contains("dev-server"), "{seen}");
    let out = p.ok(&["route", "www", "--restore"]);
    assert!(out.contains("restored"), "{out}");
    let (_, body) = curl(p.http, "www.test", "/", &[]).await;
    assert_eq!(body.trim(), "hello-www");

    // Logs: clean, then an injected error line fails the check and is listed.
    let out = p.ok(&["-c", config.to_str().unwrap(), "logs", "--errors"]);
    assert!(out.contains("no error lines in the 5 containers"), "{out}");
    docker(&[
        "exec",
        &www,
        "sh",
        "-c",
        "echo 'ERROR: disk on fire' > /proc/1/fd/1",
    ]);
    let api = format!("itproxy-{env}-api");
    docker(&[
        "exec",
        &api,
        "sh",
        "-c",
        "echo 'an expected error, ignored' > /proc/1/fd/1",
    ]);
    let out = p.cli(&["-c", config.to_str().unwrap(), "logs", "--errors"]);
    assert_eq!(out.status.code(), Some(1));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.trim(), format!("{www}: ERROR: disk on fire"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 error line(s) in 1 of 5 containers"));
    let out = p.ok(&[
        "-c",
        config.to_str().unwrap(),
        "logs",
        "--errors",
        "--pattern",
        "nothing-like-this",
    ]);
    assert!(out.contains("no error lines"), "{out}");
    let out = p.ok(&["-c", config.to_str().unwrap(), "logs", "db"]);
    assert_eq!(out.trim(), "db booting");

    // The same through the control API, as data (the Python client's env.errors(), .logs()).
    let (code, scan) = p.api("GET", "/v1/errors", None);
    assert_eq!(code, 200, "{scan}");
    assert_eq!(scan["containers"], 5);
    assert_eq!(
        scan["findings"],
        serde_json::json!([{"app": "web", "container": www, "line": "ERROR: disk on fire"}])
    );
    let later = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 0.001;
    let (_, scan) = p.api("GET", &format!("/v1/errors?since={later}"), None);
    assert_eq!(
        scan["findings"],
        serde_json::json!([]),
        "lines are cut to the fraction"
    );
    let (code, err) = p.api("GET", "/v1/errors?since=soon", None);
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (400, Some("bad_query")),
        "{err}"
    );
    let (code, logs) = p.api("GET", "/v1/apps/db/logs", None);
    assert_eq!(code, 200, "{logs}");
    assert_eq!(
        logs["lines"],
        serde_json::json!([{"container": format!("itproxy-{env}-db"), "endpoint": "db",
                            "stream": "stdout", "text": "db booting"}])
    );
    let (_, logs) = p.api("GET", "/v1/apps/www/logs?tail=0", None);
    assert_eq!(
        logs["error"]["code"], "no_app",
        "endpoints are not apps: {logs}"
    );
    let (_, logs) = p.api("GET", "/v1/apps/web/logs?tail=1", None);
    let of_www: Vec<&Value> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["container"] == www.as_str())
        .collect();
    assert_eq!(of_www.len(), 1, "{logs}");
    assert_eq!(of_www[0]["text"], "ERROR: disk on fire", "{logs}");

    // Stop an app: its route goes (503 saying so); start it again, waiting for readiness.
    p.ok(&["app", "stop", "web"]);
    assert!(!p.routes().contains_key("www.test"));
    let (code, body) = curl(p.http, "www.test", "/", &[]).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("app web is stopped"), "{body}");
    let out = p.ok(&["app", "start", "web", "--wait"]);
    assert!(out.starts_with("web: ready"), "{out}");
    assert_eq!(
        curl(p.http, "www.test", "/", &[]).await.1.trim(),
        "hello-www"
    );
    let err = p.fails(&["app", "start", "nope"]);
    assert!(
        err.contains("no app \"nope\"") && err.contains("db, cache, web, api"),
        "{err}"
    );

    // An app whose container dies on its own is shown failed, with what happens next (its
    // restart policy, on-failure by default, starts it again).
    docker(&["kill", &api]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let apps: Value = serde_json::from_str(&p.ok(&["apps", "--json"])).unwrap();
        if app(&apps, "api")["state"] == "failed" {
            let error = app(&apps, "api")["error"].as_str().unwrap().to_string();
            assert!(
                error.contains(&format!("container {api} exited")),
                "{error}"
            );
            assert!(
                error.contains("exit code 137") && error.contains("restarting in"),
                "{error}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "api not shown failed: {apps}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // down: the daemon stops, and nothing of the environment is left on the engine.
    let out = p.ok(&["-c", config.to_str().unwrap(), "down"]);
    assert!(out.contains("stopped the daemon"), "{out}");
    assert!(
        out.contains(&format!("removed the network itproxy-{env}")),
        "{out}"
    );
    let left = docker(&["ps", "-aq", "--filter", &format!("label=itproxy.env={env}")]);
    assert_eq!(left.trim(), "", "containers left behind");
    assert!(!Command::new("docker")
        .args(["network", "inspect", &format!("itproxy-{env}")])
        .output()
        .unwrap()
        .status
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_does_not_become_ready_fails_up_with_its_last_lines() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("f");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &r#"
[env]
name = "ENV"

[[app]]
name = "slow"
image = "IMAGE"
step = "one"
command = "echo booting slowly; echo still booting; sleep 600"
port = 7000
kind = "tcp"
ready = { tcp = 7000, timeout = "1500ms" }

[[app]]
name = "crash"
image = "IMAGE"
step = "one"
command = "echo 'cannot open config' >&2; exit 3"
ready = { http = "/", port = 80 }

[[app]]
name = "later"
image = "IMAGE"
step = "two"
command = "sleep 600"

[[app]]
name = "last"
image = "IMAGE"
step = "two"
command = "sleep 600"
"#
        .replace("ENV", &env)
        .replace("IMAGE", APPS_IMAGE),
    );
    let http = format!("127.0.0.1:{}", free_port());
    let state = tempfile::tempdir().unwrap();
    let _daemon = DetachedGuard(state.path().to_path_buf());
    let begun = Instant::now();
    let out = run_in(
        state.path(),
        &[
            "-c",
            config.to_str().unwrap(),
            "up",
            "--detach",
            "--http",
            &http,
            "--no-https",
            "--no-dns",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let client = |args: &[&str]| run_in(state.path(), args);
    let stop_daemon = || client(&["-c", config.to_str().unwrap(), "down"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(begun.elapsed() < Duration::from_secs(30));
    // The timeout names the check and shows what the app wrote.
    assert!(
        stderr.contains("slow: not ready after 1.5s (tcp port 7000)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("| booting slowly") && stderr.contains("| still booting"),
        "{stderr}"
    );
    // A crash is reported at once, with its exit code and output.
    assert!(
        stderr.contains("crash: the container stopped (exit code 3)"),
        "{stderr}"
    );
    assert!(stderr.contains("| cannot open config"), "{stderr}");

    // The daemon keeps running for inspection; the later step never started.
    let apps: Value = serde_json::from_slice(&client(&["apps", "--json"]).stdout).unwrap();
    assert_eq!(apps["phase"], "failed");
    assert_eq!(app(&apps, "later")["state"], "pending");
    assert_eq!(app(&apps, "later")["containers"][0]["state"], "missing");
    assert_eq!(app(&apps, "crash")["state"], "failed");
    // `up` is idempotent: the same environment again finds the daemon that runs it (and
    // reports its failure again); another config on the same state directory is refused,
    // naming both.
    let up_again = |config: &std::path::Path| {
        run_in(
            state.path(),
            &[
                "-c",
                config.to_str().unwrap(),
                "up",
                "-d",
                "--http",
                &http,
                "--no-https",
                "--no-dns",
            ],
        )
    };
    let pid = status_pid(state.path());
    let again = up_again(&config);
    assert_eq!(again.status.code(), Some(1));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains(&format!("(pid {pid}) is already running")),
        "{said}"
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("crash: the container stopped (exit code 3)"),
        "{err}"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other = write_config(other_dir.path(), "[env]\nname = \"someother\"\n");
    let refused = up_again(&other);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("(pid {pid}) is already running"))
            && err.contains(&format!("(environment {env})"))
            && err.contains("(environment someother)")
            && err.contains("itproxy stop"),
        "{err}"
    );
    assert_eq!(
        status_pid(state.path()),
        pid,
        "the running daemon is untouched"
    );

    // Fixing the file and reloading finishes the environment: the failed apps start with
    // their new declarations, the step their failure held back starts too.
    let text = std::fs::read_to_string(&config).unwrap();
    let fixed = text
        .replace(
            "echo booting slowly; echo still booting; sleep 600",
            "exec httpd -f -p 7000",
        )
        .replace(
            "echo 'cannot open config' >&2; exit 3",
            "mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 80 -h /w",
        )
        .replacen(
            &format!("name = \"later\"\nimage = \"{APPS_IMAGE}\"\nstep = \"two\"\ncommand = \"sleep 600\""),
            &format!("name = \"later\"\nimage = \"{APPS_IMAGE}\"\nstep = \"two\"\ncommand = \"exec sleep 601\""),
            1,
        );
    std::fs::write(&config, fixed).unwrap();
    let reloaded = client(&["reload"]);
    let said = output_text(&reloaded);
    assert!(reloaded.status.success(), "{said}");
    assert!(
        said.contains("apps changed: slow, crash, later") && said.contains("apps started: last"),
        "{said}"
    );
    let apps: Value = serde_json::from_slice(&client(&["apps", "--json"]).stdout).unwrap();
    assert_eq!(apps["phase"], "ready", "{apps}");
    assert_eq!(app(&apps, "later")["state"], "ready");
    assert_eq!(app(&apps, "last")["state"], "ready");
    let out = stop_daemon();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_environments_side_by_side_and_a_warm_restart() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let config_for = |env: &str, dir: &std::path::Path| {
        write_config(
            dir,
            &r#"
[env]
name = "ENV"

[[app]]
name = "web"
image = "IMAGE"
command = "mkdir -p /w && echo hello-from-ENV > /w/index.html && exec httpd -f -p 80 -h /w"
port = 80
ready = { http = "/" }
"#
            .replace("ENV", env)
            .replace("IMAGE", APPS_IMAGE),
        )
    };
    let (a, b) = (unique_env("a"), unique_env("b"));
    let (_ga, _gb) = (EnvGuard(a.clone()), EnvGuard(b.clone()));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, cb) = (config_for(&a, da.path()), config_for(&b, db.path()));
    let mut pa = Itproxy::start_with(&["--config", ca.to_str().unwrap()]);
    let pb = Itproxy::start_with(&["--config", cb.to_str().unwrap()]);
    assert_eq!(wait_apps(&pa).await["phase"], "ready", "{}", pa.log());
    assert_eq!(wait_apps(&pb).await["phase"], "ready", "{}", pb.log());
    // Same app name, each environment its own container and answer.
    assert_eq!(
        curl(pa.http, "web.test", "/", &[]).await.1.trim(),
        format!("hello-from-{a}")
    );
    assert_eq!(
        curl(pb.http, "web.test", "/", &[]).await.1.trim(),
        format!("hello-from-{b}")
    );

    // Restarting the daemon reuses the running containers (a warm start).
    pa.restart();
    assert_eq!(wait_apps(&pa).await["phase"], "ready", "{}", pa.log());
    assert!(pa.log().contains("container reused"), "{}", pa.log());
    assert_eq!(
        curl(pa.http, "web.test", "/", &[]).await.1.trim(),
        format!("hello-from-{a}")
    );

    // Tearing one down leaves the other serving.
    let out = pa.ok(&["-c", ca.to_str().unwrap(), "down"]);
    assert!(
        out.contains(&format!("removed the container itproxy-{a}-web")),
        "{out}"
    );
    assert_eq!(
        curl(pb.http, "web.test", "/", &[]).await.1.trim(),
        format!("hello-from-{b}")
    );
    let left = docker(&["ps", "-q", "--filter", &format!("label=itproxy.env={b}")]);
    assert_eq!(left.trim().lines().count(), 1, "{left}");
}

/// An app that answers its health check only for the name it is served as (as Django does
/// with ALLOWED_HOSTS), logging an error for any other Host; every probe is counted.
const HOST_CHECKING: &str = r##"
[env]
name = "ENV"

[[app]]
name = "NAME"
image = "IMAGE"
port = 8000
ready = READY
command = '''
mkdir -p /w/cgi-bin
cat > /w/cgi-bin/health <<'EOT'
#!/bin/sh
echo probe >> /w/probes
if [ "$HTTP_HOST" = "strict.test" ]; then
  printf 'Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nok'
else
  echo "ERROR Invalid HTTP_HOST header: $HTTP_HOST" >&2
  printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nbad host'
fi
EOT
chmod +x /w/cgi-bin/health
exec httpd -f -p 8000 -h /w
'''
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_asks_as_the_served_name_and_backs_off() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    // Probed as strict.test, the name it is served as: ready, without one error line.
    let env = unique_env("h");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &HOST_CHECKING
            .replace("ENV", &env)
            .replace("NAME", "strict")
            .replace("IMAGE", APPS_IMAGE)
            .replace("READY", r#"{ http = "/cgi-bin/health", timeout = "20s" }"#),
    );
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    let apps = wait_apps(&p).await;
    assert_eq!(
        app(&apps, "strict")["state"],
        "ready",
        "{apps}\n{}",
        p.log()
    );
    assert_eq!(
        app(&apps, "strict")["ready_check"],
        "http /cgi-bin/health on port 8000 as strict.test = 200"
    );
    let container = format!("itproxy-{env}-strict");
    let logs = docker(&["logs", &container]);
    assert!(!logs.contains("ERROR"), "{logs}");
    drop(p);

    // A Host it never accepts: the probes back off instead of knocking every 50 ms.
    let env = unique_env("h");
    let _guard = EnvGuard(env.clone());
    let config = write_config(
        dir.path(),
        &HOST_CHECKING
            .replace("ENV", &env)
            .replace("NAME", "picky")
            .replace("IMAGE", APPS_IMAGE)
            .replace(
                "READY",
                r#"{ http = "/cgi-bin/health", host = "elsewhere.test", timeout = "4s" }"#,
            ),
    );
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    let apps = wait_apps(&p).await;
    assert_eq!(app(&apps, "picky")["state"], "failed", "{apps}");
    let probes = docker(&["exec", &format!("itproxy-{env}-picky"), "cat", "/w/probes"]);
    let probes = probes.lines().count();
    // 50 ms growing by half up to 1 s: about 10 probes in 4 s (a fixed 50 ms loop made 80).
    assert!((3..=20).contains(&probes), "{probes} probes in 4 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_ask_the_running_daemon_before_any_config() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("a");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"web\"\nimage = \"{APPS_IMAGE}\"\nport = 8000\n\
             command = \"echo web up; exec httpd -f -p 8000 -h /\"\nready = {{ tcp = 8000 }}\n"
        ),
    );
    let mut p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());
    let container = format!("itproxy-{env}-web");

    // No config here, no --env: the daemon says which environment and where its DNS is.
    assert_eq!(p.ok(&["logs", "web"]).trim(), "web up");
    let out = p.ok(&["logs", "--errors"]);
    assert!(
        out.contains(&format!(
            "no error lines in the 1 containers of environment {env}"
        )),
        "{out}"
    );
    docker(&[
        "exec",
        &container,
        "sh",
        "-c",
        "echo 'ERROR: it broke' > /proc/1/fd/1",
    ]);
    // An INFO line and an access line that merely contain the word are not errors; a Python
    // traceback is one finding named by its exception, with its lines below.
    let script = r#"printf '%s\n' 'INFO retrying after a connection error' '"GET /docs/errors HTTP/1.1" 200 12' 'Traceback (most recent call last):' '  File "/app/views.py", line 12, in checkout' "KeyError: 'price'" > /proc/1/fd/2"#;
    docker(&["exec", &container, "sh", "-c", script]);
    let out = p.cli(&["logs", "--errors"]);
    assert_eq!(out.status.code(), Some(1));
    let text = output_text(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("{container}: ERROR: it broke"), "{text}");
    assert_eq!(
        lines[1],
        format!("{container}: KeyError: 'price'"),
        "{text}"
    );
    assert_eq!(
        lines[2], "    | Traceback (most recent call last):",
        "{text}"
    );
    assert!(
        text.contains("2 error line(s) in 1 of 1 containers"),
        "{text}"
    );
    let (_, scan) = p.api("GET", "/v1/errors", None);
    assert_eq!(
        scan["findings"][1]["context"].as_array().unwrap().len(),
        3,
        "{scan}"
    );
    // A plan where there is a resolver to configure; where there is none, the advice.
    let plan = output_text(&p.cli(&["dns", "setup"]));
    assert!(
        plan.contains(&format!("at {} from the running daemon (pid", p.dns))
            || plan.contains(&format!("-p {} api.test", p.dns.port())),
        "the daemon's DNS port, not the config's 53: {plan}"
    );

    // stop: the daemon only; the containers stay, and the next up reuses them.
    let out = p.ok(&["stop"]);
    assert!(out.starts_with("stopped the daemon (pid"), "{out}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &container]).trim(),
        "running"
    );
    assert!(p.ok(&["stop"]).contains("no itproxy daemon is running"));
    p.stop();
    p.relaunch();
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());

    // down: no config, no --env; the daemon stops and the environment goes.
    let out = p.ok(&["down"]);
    assert!(out.contains("stopped the daemon"), "{out}");
    assert!(
        out.contains(&format!("removed the network itproxy-{env}")),
        "{out}"
    );
    let left = docker(&["ps", "-aq", "--filter", &format!("label=itproxy.env={env}")]);
    assert_eq!(left.trim(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_not_serving_answers_503_saying_why_and_keeps_its_name() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("u");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"web\"\nimage = \"{APPS_IMAGE}\"\nport = 8000\n\
             command = \"sleep 0.3; mkdir -p /w && echo hello > /w/index.html && exec httpd -f -p 8000 -h /w\"\n\
             ready = {{ http = \"/\", timeout = \"20s\" }}\nrestart = \"stop-first\"\n"
        ),
    );
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());
    assert_eq!(get(p.http, "web.test", "/").await.status, 200);
    let dig = |name: &str| {
        let out = Command::new("dig")
            .args([
                "+short",
                "@127.0.0.1",
                "-p",
                &p.dns.port().to_string(),
                name,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // Stopped: 503 naming the app, its state and what to do; the name still resolves.
    p.ok(&["app", "stop", "web"]);
    let r = get(p.http, "web.test", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.json()["error"], "app_unavailable");
    assert_eq!(
        r.json()["reason"],
        "app web is stopped; `itproxy app start web` starts it"
    );
    assert_eq!(dig("web.test"), "127.0.0.1", "not NXDOMAIN");

    // Restarting stop-first under requests: each one is served (200) or told to retry (503),
    // none is a 404, and the name resolves throughout.
    p.ok(&["app", "start", "web", "--wait"]);
    let http = p.http;
    let load = tokio::spawn(async move {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..400 {
            let r = get(http, "web.test", "/").await;
            *seen.entry(r.status).or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    let restart = p.cli(&["app", "restart", "web", "--wait"]);
    assert!(restart.status.success(), "{}", output_text(&restart));
    let seen = load.await.unwrap();
    assert!(seen.keys().all(|s| *s == 200 || *s == 503), "{seen:?}");
    assert!(seen.contains_key(&200), "{seen:?}");
    assert!(seen.contains_key(&503), "stop-first has a gap: {seen:?}");
    assert_eq!(dig("web.test"), "127.0.0.1");

    // A name removed by hand is gone for good: 404, as asked.
    p.ok(&["unroute", "web"]);
    assert_eq!(get(p.http, "web.test", "/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_files_and_volumes_reach_the_container_and_data_outlives_it() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("v");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("db.env"),
        "# settings\nPGDATA=/data\nGREETING=from-file\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("seed")).unwrap();
    std::fs::write(dir.path().join("seed/schema.sql"), "create table t ();\n").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"db\"\nimage = \"{APPS_IMAGE}\"\n\
             env_file = \"db.env\"\nenv = {{ GREETING = \"from-env\" }}\n\
             volumes = [\"pgdata:/data\", \"./seed:/seed:ro\"]\n\
             command = \"exec sleep 600\"\n"
        ),
    );
    let cfg = config.to_str().unwrap();
    let mut p = Itproxy::start_with(&["--config", cfg]);
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());
    let container = format!("itproxy-{env}-db");
    let exec = |script: &str| docker(&["exec", &container, "sh", "-c", script]);
    assert_eq!(
        exec("echo $PGDATA $GREETING").trim(),
        "/data from-env",
        "env over env_file"
    );
    assert_eq!(exec("cat /seed/schema.sql").trim(), "create table t ();");
    assert!(
        exec("touch /seed/x 2>&1; echo rc=$?").contains("rc=1"),
        "the seed is read-only"
    );
    exec("echo kept > /data/row");

    // The data is in the environment's volume: a new container (down, up) finds it...
    p.stop();
    let out = run_in(p.state_dir(), &["-c", cfg, "down"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let volume = format!("itproxy-{env}-pgdata");
    let labels = docker(&["volume", "inspect", "-f", "{{json .Labels}}", &volume]);
    assert!(
        labels.contains(&format!("\"itproxy.env\":\"{env}\"")),
        "{labels}"
    );
    p.relaunch();
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());
    assert_eq!(exec("cat /data/row").trim(), "kept");

    // A reset starts from the image and empty volumes: what a fixture between tests needs.
    let out = p.ok(&["app", "reset", "db", "--wait"]);
    assert!(out.starts_with("db: ready"), "{out}");
    assert!(
        exec("cat /data/row 2>&1").contains("No such file"),
        "the data is gone"
    );
    assert_eq!(exec("echo $GREETING").trim(), "from-env");
    exec("echo again > /data/row");

    // A snapshot holds the volumes as they were; a restore brings them back into fresh
    // containers, as often as a test suite likes.
    exec("dd if=/dev/urandom of=/data/blob bs=1M count=4 2>/dev/null");
    let sum = exec("md5sum /data/blob");
    let out = p.ok(&["snapshot", "save", "seeded"]);
    assert!(
        out.starts_with("saved snapshot seeded in ") && out.contains("db:pgdata (4.2 MB)"),
        "{out}"
    );
    assert_eq!(
        exec("cat /data/row").trim(),
        "again",
        "the app runs again after the save"
    );
    exec("rm /data/blob; echo changed > /data/row");
    eprintln!("{}", out.trim());
    let out = p.ok(&["snapshot", "restore", "seeded"]);
    assert!(out.starts_with("restored snapshot seeded in "), "{out}");
    eprintln!("{}", out.trim());
    assert_eq!(exec("md5sum /data/blob"), sum);
    assert_eq!(exec("cat /data/row").trim(), "again");
    assert!(p.ok(&["snapshot", "list"]).starts_with("seeded  db:pgdata"));
    let err = p.fails(&["snapshot", "restore", "nothing"]);
    assert!(err.contains("there is no snapshot \"nothing\""), "{err}");
    let err = p.fails(&["snapshot", "save", "../x"]);
    assert!(err.contains("is not a snapshot name"), "{err}");

    // ...until `down --volumes`.
    let out = p.ok(&["-c", cfg, "down", "--volumes"]);
    assert!(
        out.contains(&format!("removed the volume {volume}")),
        "{out}"
    );
    let left = docker(&["volume", "ls", "-q", "--filter", &format!("name={volume}")]);
    assert_eq!(left.trim(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_built_from_its_dockerfile_through_the_engine() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("b");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("images/web");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(
        img.join("Dockerfile"),
        format!("FROM {APPS_IMAGE}\nCOPY index.html /www/index.html\n"),
    )
    .unwrap();
    std::fs::write(img.join("index.html"), "built-from-the-repo\n").unwrap();
    let broken = dir.path().join("images/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("Dockerfile"),
        format!("FROM {APPS_IMAGE}\nRUN echo about to fail && exit 7\n"),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"web\"\nbuild = \"images/web\"\nport = 8000\n\
             command = \"exec httpd -f -p 8000 -h /www\"\nready = {{ tcp = 8000 }}\n\
             [[app]]\nname = \"broken\"\nbuild = \"images/broken\"\nstep = \"later\"\n"
        ),
    );
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    let apps = wait_apps(&p).await;
    assert_eq!(app(&apps, "web")["state"], "ready", "{apps}\n{}", p.log());
    assert_eq!(
        app(&apps, "web")["image"],
        format!("itproxy-{env}/web:latest")
    );
    assert_eq!(
        get(p.http, "web.test", "/").await.text().trim(),
        "built-from-the-repo"
    );
    // A build that fails says so, with what the build printed last.
    assert_eq!(app(&apps, "broken")["state"], "failed", "{apps}");
    let error = app(&apps, "broken")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("building the image") && error.contains("about to fail"),
        "{error}"
    );
    let _ = Command::new("docker")
        .args(["rmi", "-f", &format!("itproxy-{env}/web:latest")])
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_takes_the_apps_edited_declaration_and_a_broken_file_stops_nothing() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("r");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let declare = |greeting: &str, extra: &str| {
        format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"web\"\nimage = \"{APPS_IMAGE}\"\nport = 8000\n\
             env = {{ GREETING = \"{greeting}\" }}\n\
             command = \"mkdir -p /w && echo $GREETING > /w/index.html && exec httpd -f -p 8000 -h /w\"\n\
             ready = {{ tcp = 8000 }}\n{extra}"
        )
    };
    let config = write_config(dir.path(), &declare("first", ""));
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());
    assert_eq!(get(p.http, "web.test", "/").await.text().trim(), "first");

    // Edited: the restart runs the new declaration.
    std::fs::write(&config, declare("second", "")).unwrap();
    p.ok(&["app", "restart", "web", "--wait"]);
    assert_eq!(get(p.http, "web.test", "/").await.text().trim(), "second");

    // A mistake in the file: refused, and the app was not stopped.
    std::fs::write(&config, declare("third", "colour = 1\n")).unwrap();
    let err = p.fails(&["app", "restart", "web", "--wait"]);
    assert!(
        err.contains("the config file has a mistake") && err.contains("colour"),
        "{err}"
    );
    assert_eq!(get(p.http, "web.test", "/").await.text().trim(), "second");

    // An app no longer declared keeps running as it was.
    std::fs::write(&config, format!("[env]\nname = \"{env}\"\n")).unwrap();
    let err = p.fails(&["app", "restart", "web"]);
    assert!(err.contains("no longer declared"), "{err}");
    assert_eq!(get(p.http, "web.test", "/").await.text().trim(), "second");
}

/// The 503 of an app that serves nothing, through both HTTP fronts: the same answer, closed
/// after it, and a HEAD gets the head alone. The app's image does not exist, so it fails at
/// once without a container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_503_of_an_app_that_serves_nothing_is_the_same_on_both_fronts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !docker_ready() {
        return;
    }
    for (front, h1) in [("h1", true), ("pipeline", false)] {
        let env = unique_env("f");
        let _guard = EnvGuard(env.clone());
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!(
                "[proxy]\nh1_front = {h1}\n[env]\nname = \"{env}\"\n[[app]]\nname = \"web\"\n\
                 image = \"itproxy-test/no-such-image:latest\"\nport = 8000\n"
            ),
        );
        let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
        assert_eq!(wait_apps(&p).await["phase"], "failed", "{front}");
        for method in ["GET", "HEAD"] {
            // A second request after it must not be answered: the 503 closes the connection.
            let mut tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
            let req = format!(
                "{method} / HTTP/1.1\r\nHost: WEB.test.\r\n\r\nGET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
                .await
                .expect("closed after the answer")
                .unwrap();
            let got = String::from_utf8_lossy(&got);
            let (head, body) = got.split_once("\r\n\r\n").unwrap();
            let head = head.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 503"), "{front} {method}: {got}");
            assert!(head.contains("retry-after: 1"), "{front} {method}: {got}");
            assert_eq!(
                got.matches("HTTP/1.1").count(),
                1,
                "{front} {method}: {got}"
            );
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            if method == "HEAD" {
                assert_eq!(body, "", "{front}: a HEAD answer has no body");
            } else {
                assert_eq!(body.len(), length, "{front}: {got}");
                assert!(body.contains("app web failed"), "{front}: {body}");
            }
        }
    }
}

/// A blue/green restart: every request during it is answered by the old container or the
/// new one, never refused; a replacement that does not become ready leaves the old one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_every_request_and_a_failed_one_keeps_the_old_containers() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("bg");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    // Each container serves a page of its own (a fresh uuid), after a slow start.
    let declare = |command: &str| {
        format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"web\"\nimage = \"{APPS_IMAGE}\"\n\
             port = 8000\ncommand = \"{command}\"\nstateless = true\n\
             ready = {{ http = \"/\", timeout = \"4s\" }}\n"
        )
    };
    let serve = "sleep 0.5; mkdir -p /w && cat /proc/sys/kernel/random/uuid > /w/index.html \
                 && exec httpd -f -p 8000 -h /w";
    let config = write_config(dir.path(), &declare(serve));
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());
    let first = get(p.http, "web.test", "/").await;
    assert_eq!(first.status, 200);
    let container = format!("itproxy-{env}-web");
    let first_id = docker(&["inspect", "-f", "{{.Id}}", &container]);

    // Two clients keep asking through the restart.
    let http = p.http;
    let load = |n: usize| {
        tokio::spawn(async move {
            let mut seen: Vec<(u16, String)> = Vec::new();
            for _ in 0..n {
                let r = get(http, "web.test", "/").await;
                seen.push((r.status, r.text().trim().to_string()));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            seen
        })
    };
    let loads = [load(600), load(600)];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let restart = p.cli(&["app", "restart", "web", "--wait"]);
    assert!(restart.status.success(), "{}", output_text(&restart));
    let mut seen = Vec::new();
    for l in loads {
        seen.extend(l.await.unwrap());
    }
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    let pages: std::collections::BTreeSet<&str> = seen.iter().map(|(_, b)| b.as_str()).collect();
    assert!(
        pages.contains(first.text().trim()),
        "the old container served first"
    );
    let second = get(p.http, "web.test", "/").await;
    assert_ne!(second.text(), first.text(), "the new container serves now");
    assert!(pages.len() <= 2, "{pages:?}");

    // The new container has the app's name; the old one and the replacement's name are gone.
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=itproxy.env={env}"),
        "--format",
        "{{.Names}} {{.State}}",
    ]);
    assert_eq!(names.trim(), format!("{container} running"), "{names}");
    assert_ne!(docker(&["inspect", "-f", "{{.Id}}", &container]), first_id);
    let apps: Value = serde_json::from_str(&p.ok(&["apps", "--json"])).unwrap();
    assert_eq!(app(&apps, "web")["state"], "ready", "{apps}");

    // A declaration whose replacement never becomes ready: the restart fails, saying so, and
    // the running container goes on serving the same page.
    write_config(dir.path(), &declare("exec sleep 600"));
    let refused = p.cli(&["app", "restart", "web", "--wait"]);
    assert!(!refused.status.success());
    let said = output_text(&refused);
    assert!(said.contains("go on serving"), "{said}");
    let after = get(p.http, "web.test", "/").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), second.text());
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=itproxy.env={env}"),
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(names.trim(), container, "the replacement was removed");
    // The replacement's exit does not mark the serving app failed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let apps: Value = serde_json::from_str(&p.ok(&["apps", "--json"])).unwrap();
    assert_eq!(app(&apps, "web")["state"], "ready", "{apps}");
    assert!(
        app(&apps, "web")["error"]
            .as_str()
            .is_some_and(|e| e.contains("go on serving")),
        "{apps}"
    );
}

/// `itproxy reload`: an edited file takes effect while the daemon runs. Routes and apps are
/// added, changed and removed; an unchanged app is not touched; a change only a new daemon
/// can apply, or a file with a mistake, is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_routes_and_apps_and_refuses_what_needs_a_new_daemon() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let env = unique_env("rl");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let app = |name: &str, page: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{APPS_IMAGE}\"\nport = 8000\n\
             command = \"mkdir -p /w && echo {page} > /w/index.html && exec httpd -f -p 8000 -h /w\"\n\
             ready = {{ http = \"/\", timeout = \"20s\" }}\n"
        )
    };
    let declare = |domains: &str, routes: &str, apps: &[String]| {
        format!(
            "domains = [\"{domains}\"]\n[routes]\n{routes}\n[env]\nname = \"{env}\"\n{}",
            apps.concat()
        )
    };
    let first = declare(
        "test",
        &format!("old = \"{0}\"\nmoved = \"{0}\"", a.target()),
        &[
            app("same", "same"),
            app("edited", "v1"),
            app("gone", "gone"),
        ],
    );
    let config = write_config(dir.path(), &first);
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    assert_eq!(wait_apps(&p).await["phase"], "ready", "{}", p.log());
    let id = |app: &str| docker(&["inspect", "-f", "{{.Id}}", &format!("itproxy-{env}-{app}")]);
    let same_before = id("same");
    assert_eq!(get(p.http, "gone.test", "/").await.text().trim(), "gone");

    let second = declare(
        "test",
        &format!("moved = \"{0}\"\nnew = \"{0}\"", b.target()),
        &[
            app("same", "same"),
            app("edited", "v2"),
            app("added", "added"),
        ],
    );
    write_config(dir.path(), &second);
    let said = p.ok(&["reload"]);
    for line in [
        "routes added: new.test",
        "routes changed: moved.test",
        "routes removed: old.test",
        "apps added: added",
        "apps changed: edited",
        "apps removed: gone",
    ] {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    // Routes: as the file says now.
    assert_eq!(get(p.http, "new.test", "/").await.json()["backend"], "b");
    assert_eq!(get(p.http, "moved.test", "/").await.json()["backend"], "b");
    assert_eq!(get(p.http, "old.test", "/").await.status, 404);
    // Apps: the changed one serves its new page, the new one serves, the removed one is gone
    // (no container, no name), the unchanged one is the same container.
    assert_eq!(get(p.http, "edited.test", "/").await.text().trim(), "v2");
    assert_eq!(get(p.http, "added.test", "/").await.text().trim(), "added");
    assert_eq!(get(p.http, "gone.test", "/").await.status, 404);
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("name=^itproxy-{env}-gone$")
        ])
        .trim(),
        ""
    );
    assert_eq!(id("same"), same_before, "an unchanged app is not restarted");
    let apps = wait_apps(&p).await;
    let names: Vec<&str> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["same", "edited", "added"], "{apps}");
    assert!(p.ok(&["reload"]).contains("nothing changed"));

    // SIGHUP reloads too, as it does nginx.
    write_config(
        dir.path(),
        &second.replace("new = ", "hup = \"127.0.0.1:1\"\nnew = "),
    );
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(p.http, "hup.test", "/").await.status == 404 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write_config(dir.path(), &second);
    p.ok(&["reload"]);

    // What only a new daemon applies: refused, and nothing changed.
    write_config(
        dir.path(),
        &declare(
            "other.test",
            "",
            &[app("same", "same"), app("edited", "v3")],
        ),
    );
    let refused = p.fails(&["reload"]);
    assert!(
        refused.contains("domains changed") && refused.contains("nothing was reloaded"),
        "{refused}"
    );
    assert_eq!(get(p.http, "edited.test", "/").await.text().trim(), "v2");
    assert_eq!(get(p.http, "added.test", "/").await.status, 200);
    // A file with a mistake: refused, saying where.
    write_config(dir.path(), &second.replace("port = 8000", "port = \"x\""));
    let refused = p.fails(&["reload"]);
    assert!(refused.contains("mistake"), "{refused}");
    assert_eq!(get(p.http, "new.test", "/").await.json()["backend"], "b");
}

/// An app with a clock of its own: its processes read the declared time, `itproxy time set`
/// moves it while they run, and an app whose program is static is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_clock_is_its_own_and_moves_on_command() {
    if !docker_ready() {
        return;
    }
    if itproxy_orchestrator_faketime_missing() {
        return;
    }
    build_clock_image();
    let env = unique_env("ck");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[env]\nname = \"{env}\"\nsteps = [\"one\", \"two\"]\n\
             [[app]]\nname = \"clock\"\nimage = \"{CLOCK_IMAGE}\"\nstep = \"one\"\n\
             faketime = \"2030-06-01 12:00:00\"\ncommand = \"exec /usr/bin/sleep 600\"\n\
             [[app]]\nname = \"plain\"\nimage = \"{CLOCK_IMAGE}\"\nstep = \"one\"\n\
             command = \"exec /usr/bin/sleep 600\"\n\
             [[app]]\nname = \"frozen\"\nimage = \"{APPS_IMAGE}\"\nstep = \"two\"\n\
             faketime = \"+1d\"\ncommand = \"exec sleep 600\"\n"
        ),
    );
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    let apps = wait_apps(&p).await;
    let container = format!("itproxy-{env}-clock");
    let date = |format: &str| docker(&["exec", &container, "/usr/bin/date", "-u", format]);
    // The declared time, from the app's start.
    assert_eq!(app(&apps, "clock")["state"], "ready", "{apps}");
    assert_eq!(date("+%Y-%m-%d").trim(), "2030-06-01");
    assert!(p.ok(&["time", "show", "clock"]).contains("2030-06-01T12:0"));

    // Moved while it runs: seen within a second or so, no restart.
    let until = |want: &dyn Fn(&str) -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = date("+%Y-%m-%d %s");
            if want(now.trim()) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: the app reads {now}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &container]);
    p.ok(&["time", "set", "clock", "2031-01-01 00:00:00"]);
    until(&|d| d.starts_with("2031-01-01"), "set to a time");
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    p.ok(&["time", "set", "clock", "+2d"]);
    until(
        &|d| {
            let secs: i64 = d.split(' ').nth(1).unwrap().parse().unwrap();
            (secs - real - 2 * 86400).abs() < 30
        },
        "two days ahead",
    );
    p.ok(&["time", "reset", "clock"]);
    until(&|d| d.starts_with("2030-06-01"), "back as declared");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &container]),
        started,
        "not restarted"
    );

    // An app without a clock of its own, and a time that is not one: refused, saying why.
    let refused = p.fails(&["time", "set", "plain", "+1d"]);
    assert!(refused.contains("faketime"), "{refused}");
    let refused = p.fails(&["time", "set", "clock", "next tuesday"]);
    assert!(refused.contains("+3d"), "{refused}");
    // A static program ignores libfaketime: the app fails with the reason.
    assert_eq!(apps["phase"], "failed", "{apps}");
    let error = app(&apps, "frozen")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("static binary"), "{error}");

    // `down` takes the apps' clocks with their containers.
    let clocks = p.state_dir().join("clocks").join(&env);
    assert!(clocks.join("clock/offset").is_file());
    p.ok(&["down"]);
    assert!(!clocks.exists());
}

/// Whether libfaketime is missing (make test installs it; CI must have it).
fn itproxy_orchestrator_faketime_missing() -> bool {
    let missing =
        !std::path::Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists();
    if missing && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI needs libfaketime (make test installs it: scripts/install-deps.sh)");
    }
    if missing {
        eprintln!("skipped: libfaketime is not installed (apt-get install libfaketime)");
    }
    missing
}
