//! Bad input gets a clear error and changes nothing; start-up problems say what to do.

use std::process::Command;

use crate::util::*;

#[tokio::test]
async fn bad_routes_are_refused_and_change_nothing() {
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    let routes = p.routes();
    let file = std::fs::read(p.state_dir().join("routes.log")).unwrap();

    for (args, needle) in [
        (
            &["route", "api", "localhost:notaport"][..],
            "\"notaport\" is not a number",
        ),
        (&["route", "", "127.0.0.1:1"], "route name is empty"),
        (&["route", "my app", "127.0.0.1:1"], "\"my app\""),
        (
            &["route", "api.example.com", "127.0.0.1:1"],
            "not below the configured domains",
        ),
        (
            &["route", "api", "http://127.0.0.1:1/v1"],
            "paths are not supported",
        ),
        (
            &["route", "api", "no-such-host.invalid:80"],
            "cannot resolve",
        ),
        (&["unroute", "ghost"], "no route for ghost.test"),
        (&["route", "ghost", "--restore"], "no route for ghost.test"),
    ] {
        let err = p.fails(args);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }

    for (body, status, code) in [
        ("{", 400, "bad_body"),
        ("{\"target\": 5}", 400, "bad_body"),
        ("{\"tgt\": \"127.0.0.1:1\"}", 400, "bad_body"),
        ("{\"target\": \"127.0.0.1:1\", \"x\": 1}", 400, "bad_body"),
        ("{\"target\": \"a b:1\"}", 400, "invalid_target"),
    ] {
        let (got, json) = p.api("PUT", "/v1/routes/api", Some(body));
        assert_eq!(got, status, "{body}: {json}");
        assert_eq!(json["error"]["code"], code, "{body}: {json}");
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
    let huge = format!("{{\"target\": \"{}\"}}", "x".repeat(100_000));
    assert_eq!(p.api("PUT", "/v1/routes/api", Some(&huge)).0, 413);
    let (got, json) = p.api("GET", "/v1/nothing", None);
    assert_eq!(
        (got, json["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (got, _) = p.api("PATCH", "/v1/routes/api", Some("{}"));
    assert_eq!(got, 405);

    assert_eq!(p.routes(), routes, "a refused change altered the routes");
    assert_eq!(
        std::fs::read(p.state_dir().join("routes.log")).unwrap(),
        file
    );
    assert_eq!(get(p.http, "api.test", "/").await.backend(), Some("api"));
}

#[test]
fn client_commands_without_a_daemon_say_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["routes"],
        &["route", "api", "localhost:1"],
    ] {
        let out = run_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no itproxy daemon is running") && err.contains("itproxy up"),
            "{err}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["route"][..],
        &["route", "api"],
        &["up", "--http", "nowhere"],
        &["frobnicate"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_busy_port_or_a_second_daemon_is_refused_clearly() {
    let p = Itproxy::start();

    let other = tempfile::tempdir().unwrap();
    let out = run_in(other.path(), &["up", "--http", &p.http.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for HTTP on {}", p.http)) && err.contains("--http"),
        "{err}"
    );

    let out = run_in(
        p.state_dir(),
        &["up", "--http", &format!("127.0.0.1:{}", free_port())],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    // The first daemon is unharmed.
    p.ok(&["status"]);
}

#[test]
fn a_state_dir_too_deep_for_a_socket_is_refused_before_anything_starts() {
    let top = tempfile::tempdir().unwrap();
    let deep = top.path().join("d".repeat(110));
    let out = run_in(
        &deep,
        &["up", "--http", "127.0.0.1:0", "--no-https", "--no-dns"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a Unix socket's path holds at most 107")
            && err.contains("shorter --state-dir"),
        "{err}"
    );
    assert!(!deep.exists(), "nothing was created");
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[routes]\napi = \"localhost:notaport\"\n");
    let out = run_in(dir.path(), &["up", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
    assert!(
        err.contains("line 2") && err.contains("api") && err.contains("notaport"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let good = write_config(
        dir.path(),
        "domains = [\"test\"]\n[routes]\napi = \"localhost:8000\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("api.test -> http://localhost:8000"), "{text}");
}

/// The shipped example uses every section of the file and stays valid: it fails here, and in
/// `make test`, when a key it uses is renamed or a default it states changes.
#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/itproxy.toml");
    let doc: toml::Table = std::fs::read_to_string(example).unwrap().parse().unwrap();
    for section in [
        "domains", "env", "listen", "proxy", "dns", "tls", "routes", "app",
    ] {
        assert!(doc.contains_key(section), "the example has no `{section}`");
    }
    let out = Command::new(BIN)
        .args(["check-config", example])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    for needle in [
        "examples/itproxy.toml: ok",
        "domains: test, corp.internal",
        "reports.test -> http://localhost:8100",
        "admin.corp.internal -> https://127.0.0.1:9443",
        "env:     shop",
        "step infra:",
        "web (shop/web:dev) after s3, db",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
}

#[test]
fn damaged_state_is_set_aside_reported_and_the_daemon_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    std::fs::write(&file, "{ not json").unwrap();
    // A log line from before checksums, and one torn in the middle of the log.
    std::fs::write(
        dir.path().join("routes.log"),
        "{\"host\":\"kept.test\",\"target\":\"http://127.0.0.1:9\"}\n{\"host\":\"to\n",
    )
    .unwrap();
    let path = dir.path().to_path_buf();
    let mut p = Itproxy::start_in(dir, &[]);
    let log = p.log();
    assert!(
        log.contains("routes.json is damaged") && log.contains("moved to"),
        "{log}"
    );
    assert!(log.contains("skipped 1 damaged line"), "{log}");
    assert!(!file.exists());
    let aside: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("routes.json.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), "{ not json");
    assert!(p.routes().contains_key("kept.test"));
    p.stop();
}

#[test]
fn completions_load_in_bash_and_know_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let script = run_in(dir.path(), &["completions", "bash"]);
    assert!(script.status.success());
    let path = dir.path().join("itproxy.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    // Loaded by bash, then asked what follows `itproxy br`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(itproxy br) COMP_CWORD=1 && _itproxy itproxy br itproxy \
             && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    let offered = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        offered.trim(),
        "browser",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zsh = run_in(dir.path(), &["completions", "zsh"]);
    assert!(String::from_utf8_lossy(&zsh.stdout).contains("#compdef itproxy"));
    assert_eq!(
        run_in(dir.path(), &["completions", "tcsh"]).status.code(),
        Some(2)
    );
}

/// A reader that stops early (`itproxy routes | head -1`, or one that never reads): every
/// command ends quietly and with success, as other Unix tools do, never with a panic, a
/// backtrace or an error about the pipe.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    use std::io::BufRead;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    // Enough routes that `routes` prints more than a pipe holds (64 KiB): the command is still
    // printing when its reader goes.
    let mut config = String::from("[routes]\n");
    for i in 0..3000 {
        config.push_str(&format!("svc{i:04} = \"127.0.0.1:{}\"\n", 10_000 + i));
    }
    let cfg = write_config(dir.path(), &config);
    let p = Itproxy::start_with(&["--config", cfg.to_str().unwrap()]);
    for args in [
        &["routes"][..],
        &["routes", "--json"],
        &["completions", "bash"],
        &["--help"],
    ] {
        for read_a_line in [true, false] {
            let mut child = Command::new(BIN)
                .arg("--state-dir")
                .arg(p.state_dir())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            if read_a_line {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .unwrap();
                assert!(!line.is_empty(), "{args:?} printed nothing");
            } else {
                drop(stdout);
            }
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let story = format!("{args:?}, reader gone after {read_a_line:?} line");
            assert!(out.status.success(), "{story}: {}\n{stderr}", out.status);
            for needle in ["panicked", "backtrace", "Broken pipe", "error"] {
                assert!(!stderr.contains(needle), "{story}: {stderr}");
            }
        }
    }
}
