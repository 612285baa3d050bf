//! `itproxy dns setup|teardown`: point this machine's resolver at itproxy for the environment's
//! domains only (systemd-resolved, dnsmasq or macOS /etc/resolver), printing the plan unless
//! `--apply` is given.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use itproxy_daemon::config::Config;

enum Step {
    Write(PathBuf, String),
    Remove(PathBuf),
    Run(Vec<String>),
}

fn plan(config: &Config, teardown: bool) -> anyhow::Result<(String, Vec<Step>)> {
    let Some(dns) = config.listen.dns.first() else {
        bail!("DNS is disabled in this configuration (no DNS listener); nothing to set up");
    };
    let domains: Vec<String> = config.domains.iter().map(|d| d.to_string()).collect();
    let run = |args: &[&str]| Step::Run(args.iter().map(|s| s.to_string()).collect());
    if cfg!(target_os = "macos") {
        let steps = domains
            .iter()
            .map(|d| {
                let path = Path::new("/etc/resolver").join(d);
                if teardown {
                    Step::Remove(path)
                } else {
                    Step::Write(
                        path,
                        format!("nameserver {}\nport {}\n", dns.ip(), dns.port()),
                    )
                }
            })
            .collect();
        return Ok(("macOS /etc/resolver".into(), steps));
    }
    if Path::new("/run/systemd/resolve").exists() {
        let path = PathBuf::from("/etc/systemd/resolved.conf.d/itproxy.conf");
        let routing: Vec<String> = domains.iter().map(|d| format!("~{d}")).collect();
        let first = if teardown {
            Step::Remove(path)
        } else {
            Step::Write(
                path,
                format!("[Resolve]\nDNS={dns}\nDomains={}\n", routing.join(" ")),
            )
        };
        return Ok((
            "systemd-resolved".into(),
            vec![first, run(&["systemctl", "restart", "systemd-resolved"])],
        ));
    }
    if Path::new("/etc/dnsmasq.d").is_dir() {
        let path = PathBuf::from("/etc/dnsmasq.d/itproxy.conf");
        let lines: String = domains
            .iter()
            .map(|d| format!("server=/{d}/{}#{}\n", dns.ip(), dns.port()))
            .collect();
        let first = if teardown {
            Step::Remove(path)
        } else {
            Step::Write(path, lines)
        };
        return Ok((
            "dnsmasq".into(),
            vec![first, run(&["systemctl", "restart", "dnsmasq"])],
        ));
    }
    bail!(
        "found no systemd-resolved, dnsmasq or macOS resolver to configure; query itproxy directly \
         (e.g. `dig @{} -p {} api.{}`) or add it as a nameserver for the domains {} in your resolver",
        dns.ip(),
        dns.port(),
        domains[0],
        domains.join(", ")
    )
}

/// `dns setup|teardown`.
pub fn run(cmd: crate::cli::DnsCommand, config: &Config) -> anyhow::Result<()> {
    match cmd {
        crate::cli::DnsCommand::Setup { apply } => setup(config, apply, false),
        crate::cli::DnsCommand::Teardown { apply } => setup(config, apply, true),
    }
}

/// Prints or performs the set-up (or with `teardown`, its undoing).
pub fn setup(config: &Config, apply: bool, teardown: bool) -> anyhow::Result<()> {
    let (resolver, steps) = plan(config, teardown)?;
    let verb = if teardown { "teardown" } else { "setup" };
    if !apply {
        println!("# {resolver}: `itproxy dns {verb} --apply` would:");
        for step in &steps {
            match step {
                Step::Write(p, text) => {
                    println!("# write {}:", p.display());
                    for line in text.lines() {
                        println!("#   {line}");
                    }
                }
                Step::Remove(p) => println!("# remove {}", p.display()),
                Step::Run(args) => println!("# run: {}", args.join(" ")),
            }
        }
        return Ok(());
    }
    for step in steps {
        match step {
            Step::Write(p, text) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                std::fs::write(&p, text)
                    .with_context(|| format!("cannot write {} (run as root?)", p.display()))?;
                println!("wrote {}", p.display());
            }
            Step::Remove(p) => match std::fs::remove_file(&p) {
                Ok(()) => println!("removed {}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("{} was not there", p.display())
                }
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
            },
            Step::Run(args) => {
                let status = Command::new(&args[0]).args(&args[1..]).status();
                match status {
                    Ok(s) if s.success() => println!("ran {}", args.join(" ")),
                    Ok(s) => bail!("{} failed with {s}", args.join(" ")),
                    Err(e) => bail!("cannot run {}: {e}", args.join(" ")),
                }
            }
        }
    }
    Ok(())
}
