//! `itproxy check-config [FILE]`: parse and validate a config file, and print what it means.

use std::path::PathBuf;

use anyhow::Context;
use itproxy_daemon::config::{CliOverrides, Config};

use super::config_path;

/// `check-config`.
pub fn run(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path(file).context(
        "no config file given and ./itproxy.toml does not exist; pass the file to check",
    )?;
    let c = Config::load(Some(&path), &CliOverrides::default())?;
    println!("{}: ok", path.display());
    println!("  domains: {}", c.domains.to_string_list());
    let http: Vec<String> = c.listen.http.iter().map(|a| a.to_string()).collect();
    let https: Vec<String> = c.listen.https.iter().map(|a| a.to_string()).collect();
    println!("  http:    {}", http.join(", "));
    println!("  https:   {}", https.join(", "));
    let dns: Vec<String> = c.listen.dns.iter().map(|a| a.to_string()).collect();
    println!("  dns:     {}", dns.join(", "));
    println!("  routes:  {}", c.routes.len());
    for (host, r) in &c.routes {
        println!("    {host} -> {}", r.target);
    }
    let Some(env) = &c.env else {
        return Ok(());
    };
    println!("  env:     {}", env.name);
    for step in env.apps.steps() {
        println!("  step {}:", step.name);
        for a in &step.apps {
            let deps: Vec<&str> = a.depends_on.iter().map(|d| d.as_str()).collect();
            println!(
                "    {} ({}){}; ready: {} within {}; restart {}",
                a.name,
                a.image,
                if deps.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", deps.join(", "))
                },
                a.ready.check,
                humantime::format_duration(a.ready.timeout),
                a.restart
            );
        }
    }
    Ok(())
}
