//! `itproxy dns setup|teardown`: point this machine's resolver at itproxy for the environment's
//! domains only (systemd-resolved, dnsmasq or macOS /etc/resolver), printing the plan unless
//! `--apply` is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use itproxy_daemon::config::Config;

enum Step {
    Write(PathBuf, String),
    Remove(PathBuf),
    Run(Vec<String>),
}

/// Where the host's resolver should send the domains: the running daemon's DNS listener (a
/// loopback one first), else the config's.
struct Target {
    dns: SocketAddr,
    domains: Vec<String>,
    /// Where that came from, for the plan's first line.
    from: String,
}

fn target(config: Option<PathBuf>, state_dir: &Path) -> anyhow::Result<Target> {
    if let Some(status) = super::runtime()?.block_on(super::running_daemon(state_dir))? {
        let Some(dns) = super::local_listener(&status.listeners.dns) else {
            bail!(
                "the daemon (pid {}) serves no DNS; start it with a DNS listener",
                status.pid
            );
        };
        return Ok(Target {
            dns,
            domains: status.domains,
            from: format!("the running daemon (pid {})", status.pid),
        });
    }
    let config: Config = super::load_config(config)?;
    let Some(dns) = config.listen.dns.first().copied() else {
        bail!("DNS is disabled in this configuration (no DNS listener); nothing to set up");
    };
    Ok(Target {
        dns,
        domains: config.domains.iter().map(|d| d.to_string()).collect(),
        from: match &config.source {
            Some(p) => format!("{} (no daemon runs)", p.display()),
            None => "the built-in defaults (no daemon runs)".into(),
        },
    })
}

fn plan(target: &Target, teardown: bool) -> anyhow::Result<(String, Vec<Step>)> {
    let dns = &target.dns;
    let domains = &target.domains;
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
pub fn run(
    cmd: crate::cli::DnsCommand,
    config: Option<PathBuf>,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let target = target(config, state_dir)?;
    match cmd {
        crate::cli::DnsCommand::Setup { apply } => setup(&target, apply, false),
        crate::cli::DnsCommand::Teardown { apply } => setup(&target, apply, true),
    }
}

/// Prints or performs the set-up (or with `teardown`, its undoing).
fn setup(target: &Target, apply: bool, teardown: bool) -> anyhow::Result<()> {
    let (resolver, steps) = plan(target, teardown)?;
    let verb = if teardown { "teardown" } else { "setup" };
    if !apply {
        println!(
            "# {resolver}, for {} at {} from {}: `itproxy dns {verb} --apply` would:",
            target.domains.join(", "),
            target.dns,
            target.from
        );
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
