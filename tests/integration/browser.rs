//! `itproxy browser`: a Chromium command line (or a started Chromium) that reaches the
//! environment's names through this daemon, with the CA trusted by an NSS database of its own.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI needs {program} (make test installs it: scripts/install-deps.sh --python-tests)"
        );
    }
    if !found {
        eprintln!("skipped: {program} is not installed");
    }
    found
}

// Two threads: the backend serves while the test blocks on Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_command_opens_an_https_page_by_name() {
    if !have("certutil") || !have("chromium") {
        return;
    }
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);

    let line = p.ok(&["browser", "api/hello"]);
    assert!(line.starts_with("HOME="), "{line}");
    let rules = format!("MAP *.test:443 {}, MAP *.test:80 {}", p.https, p.http);
    assert!(line.contains(&rules), "{line}");
    assert!(
        line.trim_end().ends_with("https://api.test/hello"),
        "{line}"
    );

    // Run as printed, headless, printing the page: TLS verified by Chromium, no flag to skip it.
    // Chromium fails a page load with ERR_NETWORK_CHANGED when any interface comes or goes, and
    // the Docker tests running beside this one create networks: only that error is tried again.
    let mut attempts = 0;
    let (status, dom, said) = loop {
        attempts += 1;
        let out = Command::new("timeout")
            .args(["60", "sh", "-c"])
            .arg(format!("{} --headless=new --dump-dom", line.trim_end()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("ERR_NETWORK_CHANGED") && attempts < 5 {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let said: Vec<String> = stderr
            .lines()
            .filter(|l| !l.contains("dbus"))
            .map(str::to_owned)
            .collect();
        break (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            said.join("\n"),
        );
    };
    assert!(
        dom.contains("\"backend\":\"api\"") && dom.contains("/hello"),
        "{status} after {attempts} attempt(s)\npage: {dom}\nchromium said:\n{said}"
    );
}

#[test]
fn launch_starts_the_browser_with_its_own_home_and_the_rules() {
    if !have("certutil") {
        return;
    }
    let p = Itproxy::start();
    let fake = p.state_dir().join("fake-chromium");
    let seen = p.state_dir().join("seen");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"HOME=$HOME\" > {0}.tmp\nfor a; do echo \"$a\"; done >> {0}.tmp\nmv {0}.tmp {0}\n",
            seen.display()
        ),
    )
    .unwrap();
    let mut mode = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
    std::fs::set_permissions(&fake, mode).unwrap();

    let said = p.ok(&[
        "browser",
        "--launch",
        "--chromium",
        fake.to_str().unwrap(),
        "www",
    ]);
    assert!(said.contains("started"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = std::fs::read_to_string(&seen).expect("the browser was started");
    let home = p.state_dir().join("browser/home");
    assert!(seen.contains(&format!("HOME={}", home.display())), "{seen}");
    assert!(
        seen.contains("--host-resolver-rules=MAP *.test:443"),
        "{seen}"
    );
    assert!(seen.lines().any(|l| l == "https://www.test/"), "{seen}");

    // The NSS database trusts the root, under a nickname certutil can address.
    let listed = Command::new("certutil")
        .args(["-L", "-d"])
        .arg(format!("sql:{}", home.join(".pki/nssdb").display()))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("itproxy local CA"), "{listed}");
}

#[test]
fn without_chromium_it_says_what_to_install() {
    let p = Itproxy::start();
    let err = p.fails(&["browser", "--launch", "--chromium", "/nonexistent/chromium"]);
    assert!(
        err.contains("cannot start /nonexistent/chromium") || err.contains("certutil"),
        "{err}"
    );
}
