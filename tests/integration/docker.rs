//! Containers on the environment's network reach routes through itproxy, by name, including a
//! route to a dev server on the host. Real Docker engine; the test image is built locally
//! (`FROM scratch` + Debian's busybox-static), nothing is pulled. With CI=true a missing engine
//! fails the test; elsewhere it is skipped with the reason.

use std::process::Command;

use crate::util::*;

const IMAGE: &str = "itproxy-test/busybox:latest";

pub fn docker_ready() -> bool {
    let problem = if !std::path::Path::new("/bin/busybox").exists() {
        Some("/bin/busybox is missing (apt-get install busybox-static)".to_string())
    } else {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(format!("no docker CLI: {e}")),
        }
    };
    match problem {
        None => true,
        Some(p) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI needs Docker: {p}"),
        Some(p) => {
            eprintln!("skipped: {p}");
            false
        }
    }
}

/// Builds `tag` from `dockerfile`, with the host's static busybox in the context (cached by
/// Docker after the first time; nothing is pulled).
fn docker_build(tag: &str, dockerfile: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    build_context(tag, dir.path(), dockerfile);
}

/// Builds `tag` from `dockerfile` with `context` as the build context.
fn build_context(tag: &str, context: &std::path::Path, dockerfile: &str) {
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(context)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds [`IMAGE`]: busybox as the entrypoint.
fn build_image() {
    docker_build(
        IMAGE,
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    );
}

/// The image declared apps run in tests: busybox's applets installed in /bin, so commands
/// are plain shell (`sh -c` works, as in a real image).
pub const APPS_IMAGE: &str = "itproxy-test/apps:latest";

/// Builds [`APPS_IMAGE`].
pub fn build_apps_image() {
    docker_build(
        APPS_IMAGE,
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"sh\"]\n",
    );
}

/// [`APPS_IMAGE`] plus the host's dynamically linked `date` and `sleep` (glibc), so that
/// libfaketime can move their clock.
pub const CLOCK_IMAGE: &str = "itproxy-test/apps-clock:latest";

/// Builds [`CLOCK_IMAGE`] from the host's coreutils and C library.
pub fn build_clock_image() {
    build_apps_image();
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "/usr/bin/date",
        "/usr/bin/sleep",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        let to = dir.path().join("root").join(&file[1..]);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(file, &to).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    build_context(
        CLOCK_IMAGE,
        dir.path(),
        &format!("FROM {APPS_IMAGE}\nCOPY root/ /\n"),
    );
}

/// [`APPS_IMAGE`] with a Docker HEALTHCHECK: healthy once `/ok` exists.
pub const HEALTH_IMAGE: &str = "itproxy-test/apps-health:latest";

/// Builds [`HEALTH_IMAGE`] on top of [`APPS_IMAGE`].
pub fn build_health_image() {
    build_apps_image();
    docker_build(
        HEALTH_IMAGE,
        &format!(
            "FROM {APPS_IMAGE}\n\
             HEALTHCHECK --interval=1s --timeout=1s CMD [\"test\", \"-f\", \"/ok\"]\n"
        ),
    );
}

/// Removes the test's network however the test ends.
pub struct NetworkGuard(pub String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

async fn in_container(network: &str, script: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            network,
            "--entrypoint",
            "/bin/busybox",
            IMAGE,
            "sh",
            "-c",
            script,
        ])
        .output()
        .await
        .unwrap();
    output_text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_reaches_a_host_dev_server_by_name_through_itproxy() {
    if !docker_ready() {
        return;
    }
    build_image();
    let env = format!("t{}-{}", std::process::id(), free_port());
    let network = format!("itproxy-{env}");
    let _guard = NetworkGuard(network.clone());
    let dev = Backend::start("dev-server").await;
    let mut p = Itproxy::start_with(&["--env", &env]);
    p.ok(&["route", "api", &dev.target()]);

    let status: serde_json::Value = serde_json::from_str(&p.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["env"], env.as_str());
    let gateway_dns = status["listeners"]["dns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .find(|a| !a.starts_with("127."))
        .expect("a DNS listener on the network's gateway");
    let gateway = gateway_dns.trim_end_matches(":53").to_string();
    assert!(
        status["listeners"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with(&gateway)),
        "{status}"
    );

    // DNS from the container: the route's name is the gateway, where itproxy listens.
    let answer = in_container(&network, &format!("nslookup api.test {gateway}")).await;
    assert!(answer.contains(&format!("Address: {gateway}")), "{answer}");
    let nx = in_container(&network, &format!("nslookup nope.test {gateway}")).await;
    assert!(nx.contains("NXDOMAIN") || nx.contains("can't find"), "{nx}");

    // HTTP from the container, by that address and the Host name: itproxy forwards to the dev
    // server listening on the host's loopback.
    let port = p.http.port();
    let reply = in_container(
        &network,
        &format!("(printf 'GET /from-container HTTP/1.0\\r\\nHost: api.test\\r\\n\\r\\n'; sleep 2) | nc -w 5 {gateway} {port}"),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("dev-server") && reply.contains("/from-container"),
        "{reply}"
    );
    let seen: serde_json::Value =
        serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(seen["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap()
        .starts_with(&gateway[..gateway.rfind('.').unwrap()]));

    // `itproxy down` removes the environment's network (and only it).
    p.stop();
    let out = p.ok(&["down", "--env", &env]);
    assert!(
        out.contains(&format!("removed the network {network}")),
        "{out}"
    );
    let inspect = Command::new("docker")
        .args(["network", "inspect", &network])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "the network is gone");
    let out = p.ok(&["down", "--env", &env]);
    assert!(out.contains("nothing to remove"), "{out}");
}

/// Removes the test's containers however the test ends.
struct ContainerGuard(Vec<String>);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
    }
}

/// Starts a labelled busybox httpd answering `hello-from-NAME` on port 8080.
fn run_labelled(name: &str, host: &str, network: &str) {
    let script = format!(
        "mkdir -p /www && echo hello-from-{host} > /www/index.html && httpd -f -p 8080 -h /www"
    );
    let out = Command::new("docker")
        .args(["run", "-d", "--name", name, "--network", network])
        .args([
            "--label",
            &format!("itproxy.host={host}"),
            "--label",
            "itproxy.port=8080",
        ])
        .args(["--entrypoint", "/bin/busybox", IMAGE, "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (bounded) until `host` is routed (or, with `present = false`, no longer is).
async fn wait_route(p: &Itproxy, host: &str, present: bool) {
    for _ in 0..200 {
        if p.routes().contains_key(host) == present {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "{host} {} within 10 s:\n{}",
        if present {
            "never got a route"
        } else {
            "kept its route"
        },
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_containers_get_a_route_while_they_run() {
    if !docker_ready() {
        return;
    }
    build_image();
    let env = format!("t{}-{}", std::process::id(), free_port());
    let network = format!("itproxy-{env}");
    let out = Command::new("docker")
        .args([
            "network",
            "create",
            "--label",
            &format!("itproxy.env={env}"),
            &network,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _net = NetworkGuard(network.clone());
    let (before, after) = (format!("{env}-before"), format!("{env}-after"));
    let _containers = ContainerGuard(vec![before.clone(), after.clone()]);

    // Running before itproxy starts: found when it reconciles.
    run_labelled(&before, "before", &network);
    let p = Itproxy::start_with(&["--env", &env]);
    wait_route(&p, "before.test", true).await;
    assert_eq!(
        get(p.http, "before.test", "/").await.text().trim(),
        "hello-from-before"
    );
    let listed = p.ok(&["routes"]);
    assert!(
        listed.contains("before.test") && listed.contains("discovered"),
        "{listed}"
    );

    // Started while itproxy runs: found from the events stream, and resolvable at once.
    run_labelled(&after, "after", &network);
    wait_route(&p, "after.test", true).await;
    assert_eq!(
        get(p.http, "after.test", "/").await.text().trim(),
        "hello-from-after"
    );
    assert!(p.ok(&["resolve", "after.test"]).contains("127.0.0.1"));

    // An override still wins, and --restore goes back to the container.
    let dev = Backend::start("dev").await;
    p.ok(&["route", "after", &dev.target()]);
    assert_eq!(get(p.http, "after.test", "/").await.backend(), Some("dev"));
    p.ok(&["route", "after", "--restore"]);
    assert_eq!(
        get(p.http, "after.test", "/").await.text().trim(),
        "hello-from-after"
    );

    // Stopped: the route goes away.
    let out = Command::new("docker")
        .args(["rm", "-f", &after])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_route(&p, "after.test", false).await;
    assert_eq!(get(p.http, "after.test", "/").await.status, 404);
    assert!(
        p.routes().contains_key("before.test"),
        "other containers keep theirs"
    );
}
