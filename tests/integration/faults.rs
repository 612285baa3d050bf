//! Faults survived: the ordinary accidents of a laptop or a CI runner, caused on purpose against
//! the real binary and the real engine. A container killed, crashing, or out of memory; the
//! daemon killed with SIGKILL in the middle of `up`, `app restart`, `snapshot save` and
//! `snapshot restore`; a full disk under the state directory; concurrent route writers cut off.
//! After each, what a user does next (start `itproxy up` again, or nothing) converges: every app
//! ready exactly once, no container left over, no acknowledged route or saved snapshot lost.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::apps::{app, docker, unique_env, wait_apps, EnvGuard};
use crate::docker::{build_apps_image, docker_ready, APPS_IMAGE};
use crate::util::*;

/// A web app whose main process ends on request: with the code written to /tmp/exit, or by
/// going over its memory limit once /tmp/oom exists. Each start serves a page of its own.
fn crashing_app(env: &str, extra: &str) -> String {
    format!(
        "[env]\nname = \"{env}\"\n[[app]]\nname = \"web\"\nimage = \"{APPS_IMAGE}\"\nport = 8000\n\
         ready = {{ http = \"/\", timeout = \"10s\" }}\n{extra}\n\
         command = 'mkdir -p /tmp /w; rm -f /tmp/exit /tmp/oom; cat /proc/sys/kernel/random/uuid > \
         /w/index.html && httpd -p 8000 -h /w && while [ ! -e /tmp/exit ] && [ ! -e /tmp/oom ]; \
         do sleep 0.05; done; [ -e /tmp/oom ] && exec dd if=/dev/zero of=/dev/null bs=256M \
         count=1; exit $(cat /tmp/exit)'\n"
    )
}

/// GET with a client's patience of one second: None if nothing came back in time.
async fn get_within_1s(p: &Itproxy, host: &str) -> Option<Reply> {
    tokio::time::timeout(Duration::from_secs(1), get(p.http, host, "/"))
        .await
        .ok()
}

/// Asks for `host` until the answer has `status` (bounded by `within`); returns it and how
/// long it took. Each answer must come within a second, except, when the fault is a container
/// going away, for requests already on their way to it before the engine said it died (their
/// connection attempt waits for an address that no longer answers): those are counted and
/// printed.
async fn until_status(p: &Itproxy, host: &str, status: u16, within: Duration) -> (Reply, Duration) {
    let began = Instant::now();
    let mut unanswered = 0;
    loop {
        let Some(reply) = get_within_1s(p, host).await else {
            unanswered += 1;
            assert!(
                status == 503 && unanswered <= 3,
                "{host}: {unanswered} requests not answered within a second ({:?} after the \
                 fault):\n{}",
                began.elapsed(),
                p.log()
            );
            continue;
        };
        if reply.status == status {
            if unanswered > 0 {
                eprintln!("{unanswered} request(s) in flight when the container died waited");
            }
            return (reply, began.elapsed());
        }
        assert!(
            began.elapsed() < within,
            "{host} still answers {} (not {status}) after {within:?}: {}\n{}",
            reply.status,
            reply.text(),
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The environment's containers as `name state` lines, sorted.
fn containers(env: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=itproxy.env={env}"),
        "--format",
        "{{.Names}} {{.State}}",
    ]);
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

async fn wait_ready(p: &Itproxy) -> Value {
    let apps = wait_apps(p).await;
    assert_eq!(apps["phase"], "ready", "{apps}\n{}", p.log());
    apps
}

/// Waits (bounded) until `app`'s state is `state` in `itproxy apps`.
async fn until_app_state(p: &Itproxy, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let apps: Value = serde_json::from_str(&p.ok(&["apps", "--json"])).unwrap();
        if app(&apps, name)["state"] == state {
            return app(&apps, name).clone();
        }
        assert!(
            Instant::now() < deadline,
            "app {name} not {state} after 30 s: {apps}\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `docker kill` of an app's only container: its name answers 503 at once (no client waits
/// for a connect timeout), naming the app and the exit, with Retry-After; the default policy
/// (on-failure) starts it again, and `itproxy apps` counts the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_is_answered_503_at_once_and_started_again() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("kill");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crashing_app(&env, ""));
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    wait_ready(&p).await;
    let before = get(p.http, "web.test", "/").await;
    assert_eq!(before.status, 200);

    docker(&["kill", &format!("itproxy-{env}-web")]);
    let (down, took) = until_status(&p, "web.test", 503, Duration::from_secs(5)).await;
    eprintln!("503 seen {took:?} after docker kill returned");
    assert_eq!(
        down.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let text = down.text();
    assert!(
        text.contains("web") && text.contains("exit code 137"),
        "{text}"
    );

    let (up, _) = until_status(&p, "web.test", 200, Duration::from_secs(20)).await;
    assert_ne!(up.text(), before.text(), "started again (a new page)");
    let web = until_app_state(&p, "web", "ready").await;
    assert_eq!(web["restarts"], 1, "{web}");
    assert_eq!(web["restart_policy"], "on-failure", "{web}");
    assert!(web["last_exit"].as_str().unwrap().contains("137"), "{web}");
    // The same container, started in place: one container, running.
    assert_eq!(containers(&env), [format!("itproxy-{env}-web running")]);
    let table = p.ok(&["apps"]);
    assert!(table.contains("RESTARTS"), "{table}");
}

/// Each restart policy with a process that exits 1, one that exits 0, and one killed for
/// going over its memory limit (`memory`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_for_failures_clean_exits_and_out_of_memory() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("pol");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let container = format!("itproxy-{env}-web");
    let config = write_config(dir.path(), &crashing_app(&env, "memory = \"16m\""));
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    wait_ready(&p).await;
    let exit_with = |what: &str| {
        docker(&["exec", &container, "sh", "-c", what]);
    };

    // on-failure (the default): exit 1 is restarted.
    exit_with("echo 1 > /tmp/exit");
    let (down, _) = until_status(&p, "web.test", 503, Duration::from_secs(5)).await;
    assert!(down.text().contains("exit code 1"), "{}", down.text());
    until_status(&p, "web.test", 200, Duration::from_secs(20)).await;

    // Out of memory: restarted, and said.
    exit_with("touch /tmp/oom");
    let (down, _) = until_status(&p, "web.test", 503, Duration::from_secs(5)).await;
    assert!(down.text().contains("OOM"), "{}", down.text());
    until_status(&p, "web.test", 200, Duration::from_secs(20)).await;
    let web = until_app_state(&p, "web", "ready").await;
    assert_eq!(web["restarts"], 2, "{web}");
    assert!(web["last_exit"].as_str().unwrap().contains("OOM"), "{web}");

    // A clean exit is left stopped by on-failure, and says how to start it.
    exit_with("echo 0 > /tmp/exit");
    let web = until_app_state(&p, "web", "failed").await;
    let error = web["error"].as_str().unwrap();
    assert!(
        error.contains("exit code 0") && error.contains("leaves it stopped"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(p.http, "web.test", "/").await.status, 503);

    // "always" restarts a clean exit; the edited declaration applies at `app restart`.
    std::fs::write(
        &config,
        crashing_app(&env, "memory = \"16m\"\nrestart_policy = \"always\""),
    )
    .unwrap();
    p.ok(&["app", "restart", "web", "--wait"]);
    exit_with("echo 0 > /tmp/exit");
    until_status(&p, "web.test", 503, Duration::from_secs(5)).await;
    until_status(&p, "web.test", 200, Duration::from_secs(20)).await;

    // "no" leaves even a failure stopped.
    std::fs::write(
        &config,
        crashing_app(&env, "memory = \"16m\"\nrestart_policy = \"no\""),
    )
    .unwrap();
    p.ok(&["app", "restart", "web", "--wait"]);
    exit_with("echo 3 > /tmp/exit");
    let web = until_app_state(&p, "web", "failed").await;
    assert!(
        web["error"].as_str().unwrap().contains("exit code 3"),
        "{web}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        until_app_state(&p, "web", "failed").await["state"],
        "failed"
    );
    assert_eq!(containers(&env), [format!("{container} exited")]);
}

/// SIGKILL of the daemon while a blue/green restart's replacement starts leaves it beside the
/// old container; the next start removes it and the app is ready once. Had the old container
/// already been removed, the replacement takes its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_cut_short_by_sigkill_leaves_no_orphan() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("orph");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let declare = |extra: &str| {
        format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"slow\"\nimage = \"{APPS_IMAGE}\"\n\
             port = 8000\nstateless = true\n\
             command = 'sleep 2; mkdir -p /w && echo slow > /w/index.html && exec httpd -f -p 8000 -h /w'\n\
             ready = {{ http = \"/\", timeout = \"20s\" }}\n{extra}"
        )
    };
    let extra_app =
        format!("[[app]]\nname = \"gone\"\nimage = \"{APPS_IMAGE}\"\ncommand = 'exec sleep 600'\n");
    let config = write_config(dir.path(), &declare(&extra_app));
    let mut p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    wait_ready(&p).await;
    let name = format!("itproxy-{env}-slow");
    let next = format!("{name}_next");

    let until_next_exists = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !containers(&env).iter().any(|c| c.starts_with(&next)) {
            assert!(
                Instant::now() < deadline,
                "no {next}: {:?}",
                containers(&env)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    p.ok(&["app", "restart", "slow"]);
    until_next_exists();
    p.kill9();
    // Meanwhile the user also dropped an app from the file.
    std::fs::write(&config, declare("")).unwrap();
    p.relaunch();
    wait_ready(&p).await;
    assert_eq!(containers(&env), [format!("{name} running")], "{}", p.log());
    assert!(p.log().contains("reconcile: removed"), "{}", p.log());
    assert_eq!(get(p.http, "slow.test", "/").await.text().trim(), "slow");

    // Cut short later: the old container already removed, the replacement not yet renamed.
    p.ok(&["app", "restart", "slow"]);
    until_next_exists();
    p.kill9();
    docker(&["rm", "-f", &name]);
    p.relaunch();
    wait_ready(&p).await;
    assert_eq!(containers(&env), [format!("{name} running")], "{}", p.log());
    assert!(p.log().contains("took the name"), "{}", p.log());
    assert_eq!(get(p.http, "slow.test", "/").await.text().trim(), "slow");
}

/// `app restart` keeps what an app keeps in its container (no named volume, as quick set-ups
/// do): restarted in place when unchanged; when its declaration changed, the image's anonymous
/// volumes (`VOLUME`) are carried over to the new container, as Compose does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_data_an_app_keeps_in_its_container() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let image = "itproxy-test/apps-volume:latest";
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {APPS_IMAGE}\nVOLUME /store\n"),
    )
    .unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", image])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", output_text(&built));
    let env = unique_env("keep");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let declare = |greeting: &str| {
        format!(
            "[env]\nname = \"{env}\"\n[[app]]\nname = \"db\"\nimage = \"{image}\"\nport = 8000\n\
             env = {{ GREETING = \"{greeting}\" }}\n\
             command = 'mkdir -p /w && exec httpd -f -p 8000 -h /'\n\
             ready = {{ tcp = 8000 }}\n"
        )
    };
    let config = write_config(dir.path(), &declare("one"));
    let p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    wait_ready(&p).await;
    let container = format!("itproxy-{env}-db");
    // Rows written while it runs: one in the container's own layer, one in the image's VOLUME.
    docker(&[
        "exec",
        &container,
        "sh",
        "-c",
        "echo layer-row > /w/row && echo volume-row > /store/row",
    ]);
    let id = docker(&["inspect", "-f", "{{.Id}}", &container]);

    // Unchanged: the same container, started again; both rows are there.
    p.ok(&["app", "restart", "db", "--wait"]);
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &container]), id);
    assert_eq!(
        get(p.http, "db.test", "/w/row").await.text().trim(),
        "layer-row"
    );
    assert_eq!(
        get(p.http, "db.test", "/store/row").await.text().trim(),
        "volume-row"
    );

    // Changed: a new container (the layer is the image's again, as with Compose), carrying
    // the VOLUME's data over; no two servers ran on it at once (stop-first).
    std::fs::write(&config, declare("two")).unwrap();
    p.ok(&["app", "restart", "db", "--wait"]);
    assert_ne!(docker(&["inspect", "-f", "{{.Id}}", &container]), id);
    assert_eq!(
        get(p.http, "db.test", "/store/row").await.text().trim(),
        "volume-row"
    );
    assert_eq!(containers(&env), [format!("{container} running")]);
    assert!(
        p.log().contains("carrying anonymous volumes over"),
        "{}",
        p.log()
    );

    // `app reset` still starts empty: what a user asks to discard is discarded.
    p.ok(&["app", "reset", "db", "--wait"]);
    assert_eq!(get(p.http, "db.test", "/store/row").await.status, 404);
}

/// A small file system of the test's own (tmpfs, root only), unmounted when dropped.
struct SmallDisk {
    mount: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Option<SmallDisk> {
        let mount = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(mount.path())
            .output()
            .unwrap();
        if !out.status.success() {
            let why = output_text(&out);
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI needs to mount a tmpfs (run as root): {why}");
            }
            eprintln!("skipped: cannot mount a tmpfs: {why}");
            return None;
        }
        Some(SmallDisk { mount })
    }

    /// Fills the file system until a write fails; returns the filler.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.mount.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).output();
    }
}

/// The state directory on a full disk: a change that cannot be written is refused and leaves
/// the log exactly as it was (even a large one cut off mid-write), a later change that fits is
/// kept, and after SIGKILL the daemon starts with every acknowledged route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_acknowledged_route_and_the_daemon_starts_again() {
    let Some(disk) = SmallDisk::new("4m") else {
        return;
    };
    let backend = Backend::start("b").await;
    let state = tempfile::tempdir_in(disk.mount.path()).unwrap();
    let state_path = state.path().to_path_buf();
    let mut p = Itproxy::start_in(state, &[]);
    p.ok(&["route", "before", &backend.target()]);
    let log = state_path.join("routes.log");
    let filler = disk.fill();
    let kept = std::fs::read(&log).unwrap();

    // Many routes at once: more than the log's last page holds, so the write is cut off.
    let file = std::env::temp_dir().join(format!("itproxy-full-{}.toml", std::process::id()));
    let many: String = (0..400)
        .map(|i| format!("bulk{i} = \"{}\"\n", backend.target()))
        .collect();
    std::fs::write(&file, many).unwrap();
    let refused = p.fails(&["route", "--file", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(refused.contains("No space left"), "{refused}");
    assert_eq!(std::fs::read(&log).unwrap(), kept, "the log is as it was");
    assert_eq!(get(p.http, "bulk0.test", "/").await.status, 404);

    // A small change still fits in the log's last page: kept.
    p.ok(&["route", "after", &backend.target()]);

    // Killed while the disk is full; the user frees space and starts again.
    p.kill9();
    std::fs::remove_file(&filler).unwrap();
    p.relaunch();
    let routes = p.routes();
    assert!(routes.contains_key("before.test"), "{routes:?}");
    assert!(routes.contains_key("after.test"), "{routes:?}");
    assert!(!routes.contains_key("bulk0.test"), "{routes:?}");
    assert_eq!(get(p.http, "after.test", "/").await.backend(), Some("b"));
    assert!(!p.log().contains("damaged"), "{}", p.log());
    p.stop();
}

/// Four writers change routes at once; SIGKILL in the middle. Every change acknowledged
/// before the kill is there after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_route_writers_then_sigkill_lose_nothing_acknowledged() {
    let backend = Backend::start("w").await;
    let mut p = Itproxy::start();
    let dir = p.state_dir().to_path_buf();
    let target = backend.target();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (dir, target, stop) = (dir.clone(), target.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 0..200 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("w{w}-{i}");
                    if run_in(&dir, &["route", &name, &target]).status.success() {
                        acknowledged.push(format!("{name}.test"));
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Let them write for a while (bounded), then kill the daemon under them.
    std::thread::sleep(Duration::from_millis(1500));
    p.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acknowledged.len() > 10, "{}", acknowledged.len());
    p.relaunch();
    let routes = p.routes();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|r| !routes.contains_key(*r))
        .collect();
    assert!(
        lost.is_empty(),
        "lost {} acknowledged routes: {lost:?}",
        lost.len()
    );
    p.stop();
}

/// A small deterministic generator for the kill points (printed, so a failure can be replayed
/// with ITPROXY_FAULT_SEED).
struct Seeded(u64);

impl Seeded {
    fn from_env() -> Seeded {
        let seed = std::env::var("ITPROXY_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos() as u64
            });
        eprintln!("fault points from ITPROXY_FAULT_SEED={seed}");
        Seeded(seed)
    }

    /// A duration in [0, max).
    fn below(&mut self, max: Duration) -> Duration {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545F4914F6CDD1D);
        Duration::from_millis(r % max.as_millis().max(1) as u64)
    }
}

/// SIGKILL at random points of `up`, `app restart`, `snapshot save` and `snapshot restore`,
/// then `up` again: every app ready exactly once, no container left over, the saved snapshot
/// still listed and whole, and a restore cut short done again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_of_up_restart_and_snapshots_converges() {
    if !docker_ready() {
        return;
    }
    build_apps_image();
    let env = unique_env("chaos");
    let _guard = EnvGuard(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[env]\nname = \"{env}\"\n\
             [[app]]\nname = \"db\"\nimage = \"{APPS_IMAGE}\"\nport = 8000\n\
             volumes = [\"data:/data\"]\n\
             command = '[ -e /data/v ] || echo initial > /data/v; exec httpd -f -p 8000 -h /data'\n\
             ready = {{ http = \"/v\", timeout = \"20s\" }}\n\
             [[app]]\nname = \"web\"\nimage = \"{APPS_IMAGE}\"\nport = 8000\nstateless = true\n\
             depends_on = [\"db\"]\n\
             command = 'sleep 0.5; mkdir -p /w && echo web > /w/index.html && exec httpd -f -p 8000 -h /w'\n\
             ready = {{ http = \"/\", timeout = \"20s\" }}\n"
        ),
    );
    let mut p = Itproxy::start_with(&["--config", config.to_str().unwrap()]);
    wait_ready(&p).await;
    let mut rng = Seeded::from_env();
    let db = format!("itproxy-{env}-db");
    let write_db = |value: &str| {
        docker(&["exec", &db, "sh", "-c", &format!("echo {value} > /data/v")]);
    };
    let expected = vec![
        format!("itproxy-{env}-db running"),
        format!("itproxy-{env}-web running"),
    ];
    // Converged: both apps ready once, nothing else, both names served.
    let converged = |p: &Itproxy, round: &str| {
        assert_eq!(containers(&env), expected, "{round}:\n{}", p.log());
        let apps: Value = serde_json::from_str(&p.ok(&["apps", "--json"])).unwrap();
        for name in ["db", "web"] {
            assert_eq!(app(&apps, name)["state"], "ready", "{round}: {apps}");
        }
    };
    write_db("saved");
    p.ok(&["snapshot", "save", "base"]);
    write_db("changed");

    for round in 0..3 {
        // `up` itself.
        let at = rng.below(Duration::from_millis(2000));
        p.kill9();
        p.relaunch();
        tokio::time::sleep(at).await;
        p.kill9();
        p.relaunch();
        wait_ready(&p).await;
        converged(&p, &format!("up, killed after {at:?}"));

        // A blue/green restart.
        let at = rng.below(Duration::from_millis(1500));
        p.ok(&["app", "restart", "web"]);
        tokio::time::sleep(at).await;
        p.kill9();
        p.relaunch();
        wait_ready(&p).await;
        converged(&p, &format!("restart, killed after {at:?}"));

        // Saving over the snapshot: the old one or the new one, never neither.
        write_db(&format!("round{round}"));
        let at = rng.below(Duration::from_millis(1500));
        let save = {
            let dir = p.state_dir().to_path_buf();
            std::thread::spawn(move || run_in(&dir, &["snapshot", "save", "base"]))
        };
        tokio::time::sleep(at).await;
        p.kill9();
        let _ = save.join();
        p.relaunch();
        wait_ready(&p).await;
        converged(&p, &format!("save, killed after {at:?}"));
        let list: Value = serde_json::from_str(&p.ok(&["snapshot", "list", "--json"])).unwrap();
        assert!(
            list.as_array().unwrap().iter().any(|s| s["name"] == "base"),
            "the snapshot survives a save cut short: {list}"
        );
        let partial: Vec<_> = std::fs::read_dir(p.state_dir().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(partial.is_empty(), "{partial:?}");

        // A restore cut short is done again at the next start.
        p.ok(&["snapshot", "save", "base"]);
        write_db("after-save");
        let at = rng.below(Duration::from_millis(1500));
        let restore = {
            let dir = p.state_dir().to_path_buf();
            std::thread::spawn(move || run_in(&dir, &["snapshot", "restore", "base"]))
        };
        tokio::time::sleep(at).await;
        p.kill9();
        let restored = restore.join().unwrap();
        let begun = p.state_dir().join("snapshots/.restoring").exists();
        p.relaunch();
        wait_ready(&p).await;
        converged(&p, &format!("restore, killed after {at:?}"));
        let v = get(p.http, "db.test", "/v").await.text();
        if restored.status.success() || begun {
            assert_eq!(
                v.trim(),
                format!("round{round}"),
                "restore, killed after {at:?}"
            );
        } else {
            // Killed before the restore began: nothing changed.
            assert_eq!(v.trim(), "after-save", "restore, killed after {at:?}");
        }
        assert!(!p.state_dir().join("snapshots/.restoring").exists());
    }
    p.stop();
}
