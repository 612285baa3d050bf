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
/// At most this many leaf files are kept on disk; beyond it the oldest go.
const MAX_ON_DISK: usize = 1024;
/// A name refused a certificate is logged at most once in this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// At most this many leaves a second are issued for names that are not served.
const UNSERVED_PER_SECOND: u32 = 20;

/// Whether a server name is served (routed). Served names get leaves cached on disk. A name
/// that is permitted but not served (a typo, or a client trying random names) gets a leaf kept
/// in memory only, at most [`UNSERVED_PER_SECOND`] new ones a second: the handshake still
/// reaches the 404 page that lists the routes, and nobody can fill the disk or the CPU.
///
/// Not a shared wildcard: `*.test` sits directly under a one-label domain, which OpenSSL,
/// rustls (webpki: MalformedDnsIdentifier) and browsers refuse to match.
pub type ServedNames = Arc<dyn Fn(&str) -> bool + Send + Sync>;

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
    /// Unset: every permitted name gets its own leaf. Set once, when the route table the
    /// names come from exists.
    served: std::sync::OnceLock<ServedNames>,
    /// When each refused name was last logged.
    warned: Mutex<HashMap<String, std::time::Instant>>,
    /// Leaves issued for unserved names in the current second: (second, count).
    unserved: Mutex<(u64, u32)>,
    /// Leaves issued since the start (not those read back from disk), for the metrics.
    issued: std::sync::atomic::AtomicU64,
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
            served: std::sync::OnceLock::new(),
            warned: Mutex::new(HashMap::new()),
            unserved: Mutex::new((0, 0)),
            issued: Default::default(),
        })
    }

    /// From now on, issues leaves of their own only to names `served` accepts (and
    /// `localhost`); other permitted names get the wildcard leaf of their domain. Only the
    /// first call counts.
    pub fn serve_only(&self, served: ServedNames) {
        let _ = self.served.set(served);
    }

    /// Whether `name` gets a leaf cached on disk: every permitted name unless
    /// [`CertResolver::serve_only`] was called, then the served ones and `localhost`.
    fn is_served(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self.served.get() {
            None => true,
            Some(served) => name == "localhost" || served(&name),
        }
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

    /// How many leaves this resolver issued (read back from disk or memory: not counted).
    pub fn issued(&self) -> u64 {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The leaf for `name`, from memory, disk, or freshly issued (and cached on disk).
    pub fn leaf(&self, name: &str) -> Result<Arc<Leaf>, crate::Error> {
        self.leaf_cached(name, true)
    }

    /// The leaf for a handshake naming `name`: [`CertResolver::leaf`] for served names; for
    /// others one kept in memory only, within the rate of [`UNSERVED_PER_SECOND`].
    pub fn leaf_for_handshake(&self, name: &str) -> Result<Arc<Leaf>, crate::Error> {
        if self.is_served(name) {
            return self.leaf_cached(name, true);
        }
        self.leaf_cached(name, false)
    }

    fn leaf_cached(&self, name: &str, on_disk: bool) -> Result<Arc<Leaf>, crate::Error> {
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
        let from_disk = on_disk
            .then(|| fs::read_to_string(&path).ok())
            .flatten()
            .and_then(|pem| parse_leaf(&name, &pem))
            .filter(|leaf| self.fresh(leaf, now));
        if from_disk.is_none() && !on_disk && !self.may_issue_unserved() {
            return Err(crate::Error::TooManyNames { name });
        }
        let leaf = match from_disk {
            Some(leaf) => Arc::new(leaf),
            None => {
                let started = std::time::Instant::now();
                let leaf = Arc::new(self.authority.issue(&name, now, self.validity)?);
                self.issued
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    name = %name,
                    took_us = started.elapsed().as_micros() as u64,
                    "issued a TLS certificate"
                );
                if on_disk {
                    prune(&self.cache_dir, MAX_ON_DISK - 1);
                    if let Err(e) = write_leaf(&path, &leaf.pem) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot cache the certificate on disk");
                    }
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

impl CertResolver {
    /// Counts one leaf for an unserved name against this second's budget.
    fn may_issue_unserved(&self) -> bool {
        let second = (self.clock)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut budget = self.unserved.lock().unwrap_or_else(|p| p.into_inner());
        if budget.0 != second {
            *budget = (second, 0);
        }
        budget.1 += 1;
        budget.1 <= UNSERVED_PER_SECOND
    }
}

/// Deletes the oldest leaf files until at most `keep` are left.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pem"))
        .map(|e| {
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (modified, e.path())
        })
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    let excess = files.len() - keep;
    for (_, path) in files.into_iter().take(excess) {
        let _ = fs::remove_file(path);
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
        match self.leaf_for_handshake(name) {
            Ok(leaf) => Some(leaf.certified.clone()),
            Err(e) => {
                // Once per name per minute: a client trying names must not flood the log.
                let now = std::time::Instant::now();
                let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
                if warned.len() >= MAX_CACHED {
                    warned.clear();
                }
                let last = warned.insert(name.to_string(), now);
                if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                    tracing::warn!("TLS handshake refused: no certificate for {name:?}: {e}");
                } else {
                    warned.insert(name.to_string(), last.unwrap_or(now));
                }
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
    fn unserved_names_get_leaves_in_memory_only_and_at_a_bounded_rate() {
        let (dir, r, _) = setup();
        r.serve_only(Arc::new(|name: &str| name == "api.test"));
        r.leaf_for_handshake("api.test").unwrap();
        r.leaf_for_handshake("localhost").unwrap();
        let typo = r.leaf_for_handshake("Typo.test.").unwrap();
        assert!(
            Arc::ptr_eq(&typo, &r.leaf_for_handshake("typo.test").unwrap()),
            "served from memory"
        );
        // The clock stands still: one second's budget, then refusals.
        let issued = (0..100)
            .filter(|i| r.leaf_for_handshake(&format!("random{i}.test")).is_ok())
            .count();
        assert_eq!(issued, UNSERVED_PER_SECOND as usize - 1);
        let mut files: Vec<String> = fs::read_dir(dir.path().join("certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["api.test.pem", "localhost.pem"],
            "only served names on disk"
        );
    }

    #[test]
    fn the_disk_cache_keeps_the_newest_files() {
        let (dir, r, _) = setup();
        let certs = dir.path().join("certs");
        for i in 0..5 {
            r.leaf(&format!("n{i}.test")).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        prune(&certs, 3);
        let mut left: Vec<String> = fs::read_dir(&certs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["n2.test.pem", "n3.test.pem", "n4.test.pem"]);
    }

    #[test]
    fn names_outside_the_constraints_get_nothing() {
        let (dir, r, _) = setup();
        assert!(r.leaf("www.example.com").is_err());
        assert!(!dir.path().join("certs/www.example.com.pem").exists());
    }
}
