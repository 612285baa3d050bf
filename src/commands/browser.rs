//! `itproxy browser`: Chromium for people who click, set up as the pytest plugin sets it up for
//! tests: the environment's names sent to this daemon's listeners (`--host-resolver-rules`, no
//! change to the system resolver), and the CA trusted through an NSS database of its own (a
//! HOME under the state directory, so the user's browser profile is not touched).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use http::Method;

use crate::cli::BrowserArgs;
use crate::client::Client;
use itproxy_daemon::api;

/// The nickname of the root in the browser's NSS database (no colon: certutil reads
/// `a:b` as token `a`, name `b`).
const NICKNAME: &str = "itproxy local CA";

/// `--host-resolver-rules`: each domain and the names under it, port 443 to the HTTPS
/// listener and 80 to the HTTP one, so pages use URLs without ports.
pub fn resolver_rules(status: &api::Status) -> String {
    let https = super::local_listener(&status.listeners.https);
    let http = super::local_listener(&status.listeners.http);
    let mut rules = Vec::new();
    for d in &status.domains {
        for pattern in [format!("*.{d}"), d.clone()] {
            if let Some(a) = &https {
                rules.push(format!("MAP {pattern}:443 {a}"));
            }
            if let Some(a) = &http {
                rules.push(format!("MAP {pattern}:80 {a}"));
            }
        }
    }
    rules.join(", ")
}

/// `api` -> `https://api.test/`; anything with a scheme stays as it is.
fn page_url(page: &str, domains: &[String]) -> String {
    if page.contains("://") {
        return page.to_string();
    }
    let (host, path) = page.split_once('/').unwrap_or((page, ""));
    let under = domains
        .iter()
        .any(|d| host == d || host.ends_with(&format!(".{d}")));
    let host = match domains.first() {
        Some(d) if !under => format!("{host}.{d}"),
        _ => host.to_string(),
    };
    format!("https://{host}/{path}")
}

fn chromium(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("no Chromium found on PATH: `apt-get install chromium`, or pass --chromium PATH")
}

/// A HOME whose NSS database trusts `root`; Chromium on Linux reads `$HOME/.pki/nssdb`.
fn nss_home(home: &Path, root: &Path) -> anyhow::Result<()> {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).with_context(|| format!("cannot create {}", db.display()))?;
    let dir = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .context("cannot run certutil (apt-get install libnss3-tools)")?;
        if !out.status.success() {
            bail!(
                "certutil {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    if !db.join("cert9.db").exists() {
        certutil(&["-N", "--empty-password", "-d", &dir])?;
    }
    let root = root.display().to_string();
    certutil(&["-A", "-n", NICKNAME, "-t", "C,,", "-i", &root, "-d", &dir])
}

/// Prints the command line, or with `--launch` starts Chromium in the background.
pub async fn run(state_dir: &Path, args: BrowserArgs) -> anyhow::Result<()> {
    let status: api::Status = Client::new(state_dir)
        .call(Method::GET, "/v1/status", None)
        .await?;
    let ca = status
        .ca
        .as_ref()
        .context("the daemon reports no CA to trust")?;
    let base = state_dir.join("browser");
    let home = base.join("home");
    nss_home(&home, Path::new(&ca.root))?;
    let binary = chromium(args.chromium)?;
    let mut argv: Vec<String> = vec![
        format!("--user-data-dir={}", base.join("profile").display()),
        format!("--host-resolver-rules={}", resolver_rules(&status)),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
    ];
    if args.headless {
        argv.push("--headless=new".into());
    }
    if unsafe { libc::geteuid() } == 0 {
        // Chromium refuses to run as root with its sandbox.
        argv.push("--no-sandbox".into());
    }
    argv.extend(args.pages.iter().map(|p| page_url(p, &status.domains)));
    if !args.launch {
        let words: Vec<String> = std::iter::once(format!(
            "HOME={}",
            super::shell_quote(&home.display().to_string())
        ))
        .chain(std::iter::once(super::shell_quote(
            &binary.display().to_string(),
        )))
        .chain(argv.iter().map(|a| super::shell_quote(a)))
        .collect();
        println!("{}", words.join(" "));
        return Ok(());
    }
    let log = base.join("chromium.log");
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = {
        use std::os::unix::process::CommandExt;
        Command::new(&binary)
            .args(&argv)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?
    };
    println!(
        "started {} (pid {}): names under {} go to itproxy, its CA is trusted; output in {}",
        binary.display(),
        child.id(),
        status.domains.join(", "),
        log.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_names_or_urls() {
        let d = vec!["test".to_string(), "corp.internal".to_string()];
        assert_eq!(page_url("api", &d), "https://api.test/");
        assert_eq!(page_url("api/login?x=1", &d), "https://api.test/login?x=1");
        assert_eq!(page_url("www.shop.test", &d), "https://www.shop.test/");
        assert_eq!(
            page_url("admin.corp.internal/x", &d),
            "https://admin.corp.internal/x"
        );
        assert_eq!(page_url("http://api.test:80/", &d), "http://api.test:80/");
    }

    #[test]
    fn wildcard_listeners_are_dialled_on_loopback() {
        let pick = |l: &[&str]| {
            let l: Vec<String> = l.iter().map(|s| s.to_string()).collect();
            super::super::local_listener(&l).map(|a| a.to_string())
        };
        assert_eq!(pick(&["0.0.0.0:8443"]).as_deref(), Some("127.0.0.1:8443"));
        assert_eq!(pick(&["[::]:8443"]).as_deref(), Some("[::1]:8443"));
        assert_eq!(
            pick(&["172.18.0.1:80", "127.0.0.1:8080"]).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(pick(&[]), None);
    }
}
