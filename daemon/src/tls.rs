//! The local CA as the daemon and the `ca` commands use it: where it lives in the state
//! directory (`StateDir::ca_dir`), how it is created, and the certificate resolver the proxy
//! serves leaves through.

use std::sync::Arc;
use std::time::SystemTime;

use itproxy_certs::{write_bundle, Authority, TrustFiles};

use crate::api;
use crate::config::Config;
use crate::persist::StateError;
use crate::state_dir::StateDir;

/// Why the CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The state directory cannot hold it.
    #[error(transparent)]
    StateDir(#[from] StateError),
    /// The CA's files cannot be read, created or trusted.
    #[error(transparent)]
    Ca(#[from] itproxy_certs::Error),
}

/// `itproxy local CA (user@host)`.
pub fn ca_subject() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("itproxy local CA ({user}@{host})")
}

/// Loads the CA (creating it on first use) and rewrites the trust bundle.
pub fn load_or_create(
    state_dir: &StateDir,
    domains: &[String],
) -> Result<(Authority, TrustFiles, bool), CaError> {
    state_dir.ensure()?;
    let (authority, created) = Authority::load_or_create(
        &state_dir.ca_dir(),
        domains,
        &ca_subject(),
        SystemTime::now(),
    )?;
    let files = state_dir.trust_files();
    write_bundle(authority.root_pem(), &files.bundle)?;
    Ok((authority, files, created))
}

/// The CA as the daemon uses it.
pub struct Tls {
    /// The CA's root and the trust bundle.
    pub files: itproxy_certs::TrustFiles,
    /// The CA as `status` shows it.
    pub info: api::CaInfo,
    /// Mints and serves leaf certificates by SNI.
    pub resolver: Arc<itproxy_certs::CertResolver>,
}

/// Loads or creates the CA, refreshes the trust bundle and prepares the certificate resolver.
pub fn setup(config: &Config, dir: &StateDir) -> Result<Tls, CaError> {
    let domains: Vec<String> = config.domains.iter().map(|d| d.to_string()).collect();
    let (authority, files, created) = load_or_create(dir, &domains)?;
    let fingerprint = authority.fingerprint();
    if created {
        tracing::info!(
            root = %files.root.display(),
            %fingerprint,
            "created a local CA; trust it with `itproxy ca install`, or `eval \"$(itproxy ca env)\"` per shell"
        );
    }
    let missing: Vec<&String> = domains.iter().filter(|d| !authority.permits(d)).collect();
    if !missing.is_empty() {
        tracing::warn!(
            "the CA only permits {}; HTTPS for {} will fail until you run `itproxy ca rotate`",
            authority.permitted().join(", "),
            missing
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let info = api::CaInfo {
        root: files.root.display().to_string(),
        bundle: files.bundle.display().to_string(),
        fingerprint,
        permitted: authority.permitted().to_vec(),
    };
    let cache = dir.leaf_cache(&authority);
    let resolver = itproxy_certs::CertResolver::new(
        Arc::new(authority),
        &cache,
        config.tls.leaf_validity,
        Arc::new(std::time::SystemTime::now),
    )?;
    Ok(Tls {
        files,
        info,
        resolver: Arc::new(resolver),
    })
}
