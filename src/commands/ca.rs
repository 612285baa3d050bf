//! `itproxy ca ...`: where the local CA lives, how runtimes trust it, installing it in the
//! system and browser stores, and rotating it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, Context};
use itproxy_certs::{trust_env, write_bundle, Authority};

use itproxy_daemon::config::{CliOverrides, Config};
use itproxy_daemon::StateDir;

use super::config_path;
use crate::cli::CaCommand;

/// `ca ...`: with the domains of the config (or `rotate --domain`).
pub fn run(cmd: CaCommand, config: Option<PathBuf>, state_dir: &Path) -> anyhow::Result<()> {
    let state_dir = &itproxy_daemon::StateDir::new(state_dir);
    let rotate_domains = match &cmd {
        CaCommand::Rotate { domain, .. } => domain.clone(),
        _ => Vec::new(),
    };
    let overrides = CliOverrides {
        domains: rotate_domains,
        ..Default::default()
    };
    let c = Config::load(config_path(config).as_deref(), &overrides)?;
    let domains: Vec<String> = c.domains.iter().map(|d| d.to_string()).collect();
    match cmd {
        CaCommand::Path => path(state_dir, &domains),
        CaCommand::Env { json } => env(state_dir, &domains, json),
        CaCommand::Install => install(state_dir, &domains, false),
        CaCommand::Uninstall => install(state_dir, &domains, true),
        CaCommand::Rotate { yes, .. } => rotate(state_dir, &domains, yes),
    }
}

/// `ca path`.
pub fn path(state_dir: &StateDir, domains: &[String]) -> anyhow::Result<()> {
    let (_, files, _) = itproxy_daemon::tls::load_or_create(state_dir, domains)?;
    println!("{}", files.root.display());
    Ok(())
}

/// `ca env`: shell `export` lines, or JSON.
pub fn env(state_dir: &StateDir, domains: &[String], json: bool) -> anyhow::Result<()> {
    let (_, files, _) = itproxy_daemon::tls::load_or_create(state_dir, domains)?;
    let vars = trust_env(&files);
    if json {
        let map: serde_json::Map<String, serde_json::Value> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string().into()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        for (k, v) in vars {
            println!(
                "export {k}={}",
                super::shell_quote(&v.display().to_string())
            );
        }
    }
    Ok(())
}

/// `ca rotate`: a new root (for a changed domain list, or a key that leaked).
pub fn rotate(state_dir: &StateDir, domains: &[String], yes: bool) -> anyhow::Result<()> {
    let dir = state_dir.ca_dir();
    if dir.join("root.pem").exists() && !yes {
        eprint!(
            "This replaces the CA in {} with a new one permitting {} and localhost.\n\
             Everything that trusts the old root must trust the new one (`itproxy ca install` again).\n\
             Continue? [y/N] ",
            dir.display(),
            domains.join(", ")
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("cannot read the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not rotated (pass --yes to skip the question)");
        }
    }
    state_dir.ensure()?;
    let authority = Authority::create(
        &dir,
        domains,
        &itproxy_daemon::tls::ca_subject(),
        SystemTime::now(),
    )?;
    let files = state_dir.trust_files();
    write_bundle(authority.root_pem(), &files.bundle)?;
    let _ = std::fs::remove_dir_all(state_dir.leaf_caches());
    println!("new root: {}", files.root.display());
    println!("fingerprint (SHA-256): {}", authority.fingerprint());
    println!("permits: {}", authority.permitted().join(", "));
    println!("restart a running `itproxy up` to serve certificates from the new root");
    Ok(())
}

const SYSTEM_ANCHORS: &str = "/usr/local/share/ca-certificates";

fn anchor_path(authority: &Authority) -> PathBuf {
    PathBuf::from(SYSTEM_ANCHORS).join(format!(
        "itproxy-{}.crt",
        itproxy_daemon::root_id(authority)
    ))
}

/// Chromium's NSS database on Linux: `$HOME/.pki/nssdb`.
fn chromium_nss_db() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".pki/nssdb"))
}

/// Whether the NSS database `db` (`sql:DIR`) holds a certificate named `nick`.
fn nss_has(db: &str, nick: &str) -> bool {
    Command::new("certutil")
        .args(["-L", "-d", db, "-n", nick])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The NSS databases of this user's Chromium and Firefox profiles that exist.
fn nss_databases() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return vec![];
    };
    let mut dbs = vec![];
    let chromium = home.join(".pki/nssdb");
    if chromium.join("cert9.db").exists() {
        dbs.push(chromium);
    }
    for root in [
        home.join(".mozilla/firefox"),
        home.join("snap/firefox/common/.mozilla/firefox"),
    ] {
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.path().join("cert9.db").exists() {
                    dbs.push(e.path());
                }
            }
        }
    }
    dbs
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ca install` / `ca uninstall`: the system store (Debian's update-ca-certificates) and the
/// NSS databases of Chromium and Firefox, each step reported.
pub fn install(state_dir: &StateDir, domains: &[String], remove: bool) -> anyhow::Result<()> {
    let (authority, files, _) = itproxy_daemon::tls::load_or_create(state_dir, domains)?;
    let mut did = 0;
    let anchor = anchor_path(&authority);
    let has_update = Command::new("update-ca-certificates")
        .arg("--help")
        .output()
        .is_ok();
    if !has_update || !Path::new(SYSTEM_ANCHORS).exists() {
        println!("system store: skipped (no update-ca-certificates or {SYSTEM_ANCHORS}; on other systems add {} by hand)", files.root.display());
    } else if unsafe { libc::geteuid() } != 0 {
        println!(
            "system store: skipped (needs root: `sudo itproxy ca {}`)",
            if remove { "uninstall" } else { "install" }
        );
    } else if remove {
        if anchor.exists() {
            std::fs::remove_file(&anchor)
                .with_context(|| format!("cannot remove {}", anchor.display()))?;
            run_tool(Command::new("update-ca-certificates").arg("--fresh"))?;
            println!(
                "system store: removed {} and ran update-ca-certificates",
                anchor.display()
            );
            did += 1;
        } else {
            println!(
                "system store: not installed ({} does not exist)",
                anchor.display()
            );
        }
    } else {
        std::fs::copy(&files.root, &anchor)
            .with_context(|| format!("cannot write {}", anchor.display()))?;
        run_tool(&mut Command::new("update-ca-certificates"))?;
        println!(
            "system store: added {} and ran update-ca-certificates",
            anchor.display()
        );
        did += 1;
    }
    let has_certutil = Command::new("certutil").arg("-H").output().is_ok();
    let mut dbs = nss_databases();
    // Chromium on Linux trusts a private CA only through ~/.pki/nssdb, which a fresh user
    // (a CI runner, a container) does not have until Chromium first runs: create it.
    if !remove && has_certutil {
        if let Some(db) = chromium_nss_db().filter(|db| !db.join("cert9.db").exists()) {
            std::fs::create_dir_all(&db)
                .with_context(|| format!("cannot create {}", db.display()))?;
            let d = format!("sql:{}", db.display());
            run_tool(Command::new("certutil").args(["-N", "--empty-password", "-d", &d]))?;
            println!("NSS {}: created (Chromium's database)", db.display());
            dbs.insert(0, db);
        }
    }
    // No colon in the nickname: certutil reads `a:b` as token `a`, name `b`.
    let nick = format!("itproxy local CA {}", itproxy_daemon::root_id(&authority));
    // What earlier versions added, addressed through the token so its colons survive.
    let legacy = format!(
        "NSS Certificate DB:itproxy local CA {}",
        &authority.fingerprint()[..11]
    );
    let mut failed = 0;
    for db in &dbs {
        let d = format!("sql:{}", db.display());
        if !has_certutil {
            println!(
                "NSS {}: skipped (certutil missing: apt-get install libnss3-tools)",
                db.display()
            );
            continue;
        }
        let r = if remove {
            let present: Vec<&String> = [&nick, &legacy]
                .into_iter()
                .filter(|n| nss_has(&d, n))
                .collect();
            if present.is_empty() {
                println!("NSS {}: not installed", db.display());
                continue;
            }
            present.iter().try_for_each(|n| {
                run_tool(Command::new("certutil").args(["-D", "-d", &d, "-n", n]))
            })
        } else {
            run_tool(
                Command::new("certutil")
                    .args(["-A", "-d", &d, "-t", "C,,", "-n", &nick, "-i"])
                    .arg(&files.root),
            )
        };
        // Checked, not assumed: certutil can exit 0 having done nothing.
        let r = r.and_then(|()| {
            let there = nss_has(&d, &nick) || nss_has(&d, &legacy);
            if there == remove {
                bail!(
                    "certutil reported success, but the root is {}there",
                    if remove { "still " } else { "not " }
                )
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                println!(
                    "NSS {}: {} {nick:?}",
                    db.display(),
                    if remove { "removed" } else { "added" }
                );
                did += 1;
            }
            Err(e) => {
                println!("NSS {}: failed: {e:#}", db.display());
                failed += 1;
            }
        }
    }
    if dbs.is_empty() {
        println!("NSS: no Chromium or Firefox certificate database found for this user");
    }
    if failed > 0 {
        bail!(
            "{failed} certificate store(s) could not be {}",
            if remove { "cleaned" } else { "updated" }
        );
    }
    if did == 0 && !remove {
        println!("nothing was installed; `eval \"$(itproxy ca env)\"` makes tools trust the CA without it");
    }
    Ok(())
}
