//! Certificates chosen per TLS handshake: cached, issued on demand, renewed before expiry.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::authority::{parse_leaf, Authority, Leaf};

/// Where "now" comes from; injectable so renewal can be tested without waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// At most this many leaves are kept in memory; beyond it the cache starts over.
const MAX_CACHED: usize = 4096;

/// A rustls certificate resolver that issues a leaf for each permitted server name at its
/// first handshake, caches it in memory and in `cache_dir`, and reissues it once less than a
/// third of its validity remains. Clients without SNI get the `localhost` certificate (which
/// also covers 127.0.0.1 and ::1). Names outside the CA's constraints get no certificate: the
/// handshake fails and the reason is logged.
pub struct CertResolver {
    authority: Arc<Authority>,
    cache_dir: PathBuf,
    validity: Duration,
    clock: Clock,
    cache: Mutex<HashMap<String, Arc<Leaf>>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("cache_dir", &self.cache_dir)
            .field("validity", &self.validity)
            .finish()
    }
}

impl CertResolver {
    /// A resolver issuing leaves valid for `validity` (at most 398 days), cached under
    /// `cache_dir` (created 0700).
    pub fn new(
        authority: Arc<Authority>,
        cache_dir: &Path,
        validity: Duration,
        clock: Clock,
    ) -> Result<Self, crate::Error> {
        let io = |error| crate::Error::Io {
            action: "create",
            path: cache_dir.to_path_buf(),
            error,
        };
        fs::create_dir_all(cache_dir).map_err(io)?;
        fs::set_permissions(cache_dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(CertResolver {
            authority,
            cache_dir: cache_dir.to_path_buf(),
            validity: validity.min(Duration::from_secs(398 * 86400)),
            clock,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The authority issuing the leaves.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    fn fresh(&self, leaf: &Leaf, now: SystemTime) -> bool {
        let remaining = leaf.not_after.duration_since(now).unwrap_or(Duration::ZERO);
        leaf.not_before <= now && remaining > self.validity / 3
    }

    fn cache_file(&self, name: &str) -> PathBuf {
        self.cache_dir.join(format!("{name}.pem"))
    }

    /// The leaf for `name`, from memory, disk, or freshly issued.
    pub fn leaf(&self, name: &str) -> Result<Arc<Leaf>, crate::Error> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let now = (self.clock)();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(leaf) = cache.get(&name) {
            if self.fresh(leaf, now) {
                return Ok(leaf.clone());
            }
        }
        if !self.authority.permits(&name) {
            return Err(crate::Error::NotPermitted {
                name,
                permitted: self.authority.permitted().join(", "),
            });
        }
        let path = self.cache_file(&name);
        let from_disk = fs::read_to_string(&path)
            .ok()
            .and_then(|pem| parse_leaf(&name, &pem))
            .filter(|leaf| self.fresh(leaf, now));
        let leaf = match from_disk {
            Some(leaf) => Arc::new(leaf),
            None => {
                let started = std::time::Instant::now();
                let leaf = Arc::new(self.authority.issue(&name, now, self.validity)?);
                tracing::info!(
                    name = %name,
                    took_us = started.elapsed().as_micros() as u64,
                    "issued a TLS certificate"
                );
                if let Err(e) = write_leaf(&path, &leaf.pem) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot cache the certificate on disk");
                }
                leaf
            }
        };
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(name, leaf.clone());
        Ok(leaf)
    }
}

fn write_leaf(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pem.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(pem.as_bytes())?;
    drop(f);
    fs::rename(&tmp, path)
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or("localhost");
        match self.leaf(name) {
            Ok(leaf) => Some(leaf.certified.clone()),
            Err(e) => {
                tracing::warn!("TLS handshake refused: no certificate for {name:?}: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn setup() -> (tempfile::TempDir, CertResolver, Arc<AtomicU64>) {
        let dir = tempfile::tempdir().unwrap();
        let start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = Arc::new(AtomicU64::new(start));
        let n = now.clone();
        let clock: Clock = Arc::new(move || {
            SystemTime::UNIX_EPOCH + Duration::from_secs(n.load(Ordering::Relaxed))
        });
        let (ca, _) =
            Authority::load_or_create(&dir.path().join("ca"), &["test".into()], "t", clock())
                .unwrap();
        let r = CertResolver::new(
            Arc::new(ca),
            &dir.path().join("certs"),
            Duration::from_secs(7 * 86400),
            clock,
        )
        .unwrap();
        (dir, r, now)
    }

    #[test]
    fn caches_then_renews_in_the_last_third() {
        let (dir, r, now) = setup();
        let first = r.leaf("api.test").unwrap();
        assert!(
            Arc::ptr_eq(&first, &r.leaf("API.test.").unwrap()),
            "served from memory"
        );
        let cached = dir.path().join("certs/api.test.pem");
        let mode = fs::metadata(&cached).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Four days later (3 left of 7): still fresh.
        now.fetch_add(4 * 86400, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&first, &r.leaf("api.test").unwrap()));
        // Five days later (2 left, under a third): renewed, without a restart.
        now.fetch_add(86400, Ordering::Relaxed);
        let renewed = r.leaf("api.test").unwrap();
        assert!(renewed.not_after > first.not_after);
        assert_ne!(fs::read_to_string(&cached).unwrap(), first.pem);
    }

    #[test]
    fn a_new_resolver_reuses_the_disk_cache() {
        let (dir, r, _) = setup();
        let first = r.leaf("web.test").unwrap();
        let clock: Clock = Arc::new(SystemTime::now);
        let again = CertResolver::new(
            r.authority().clone(),
            &dir.path().join("certs"),
            Duration::from_secs(7 * 86400),
            clock,
        )
        .unwrap();
        assert_eq!(again.leaf("web.test").unwrap().pem, first.pem);
    }

    #[test]
    fn names_outside_the_constraints_get_nothing() {
        let (dir, r, _) = setup();
        assert!(r.leaf("www.example.com").is_err());
        assert!(!dir.path().join("certs/www.example.com.pem").exists());
    }
}
