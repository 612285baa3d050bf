//! The state directory's layout, named once: the daemon, the CLI and the CA commands all find
//! their files through [`StateDir`].
//!
//! ```text
//! <state-dir>/            mode 0700
//!   control.sock          the control API (mode 0600)
//!   routes.json           persisted route overrides as of the last compaction (`persist`)
//!   routes.log[.old]      the overrides changed since, one line each (`persist`)
//!   clocks/<env>/<app>/   the offset of an app that declares `faketime`
//!   itproxy.log           the log of a daemon started by `up --detach`
//!   ca/root.pem, ca/bundle.pem, ca/...   the local CA (`itproxy_certs::Authority`)
//!   certs/<root>/         minted leaves, per CA root
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use itproxy_certs::{Authority, TrustFiles};

use crate::persist::StateError;

/// A state directory: where one daemon keeps its socket, overrides, log and CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// The state directory at `path` (not created until [`StateDir::ensure`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir(path.into())
    }

    /// Creates the directory (mode 0700: it holds the CA's private key) if needed.
    pub fn ensure(&self) -> Result<(), StateError> {
        let err = |error| StateError::Dir {
            path: self.0.clone(),
            error,
        };
        fs::create_dir_all(&self.0).map_err(err)?;
        fs::set_permissions(&self.0, fs::Permissions::from_mode(0o700)).map_err(err)
    }

    /// The control API's Unix socket.
    pub fn control_socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }

    /// The persisted route overrides.
    pub fn routes_file(&self) -> PathBuf {
        self.0.join("routes.json")
    }

    /// A file the config names relative to the state directory (an absolute path is kept).
    pub fn resolve(&self, path: &std::path::Path) -> PathBuf {
        self.0.join(path)
    }

    /// The log of a daemon started by `up --detach`.
    pub fn daemon_log(&self) -> PathBuf {
        self.0.join("itproxy.log")
    }

    /// Snapshots of the environment's volumes, one directory each.
    pub fn snapshots(&self) -> PathBuf {
        self.0.join("snapshots")
    }

    /// The clocks of the apps that declare `faketime`: a directory per environment, then per
    /// app, holding the offset libfaketime reads.
    pub fn clocks(&self) -> PathBuf {
        self.0.join("clocks")
    }

    /// The local CA's directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.0.join("ca")
    }

    /// The CA's root and the trust bundle (system roots plus ours).
    pub fn trust_files(&self) -> TrustFiles {
        TrustFiles {
            root: self.ca_dir().join("root.pem"),
            bundle: self.ca_dir().join("bundle.pem"),
        }
    }

    /// Every root's leaf cache (removed when the CA is rotated).
    pub fn leaf_caches(&self) -> PathBuf {
        self.0.join("certs")
    }

    /// The leaf cache of `authority`'s root: per root, so a rotated root never serves a leaf
    /// of the old one.
    pub fn leaf_cache(&self, authority: &Authority) -> PathBuf {
        self.leaf_caches().join(root_id(authority))
    }
}

/// The first 16 hex digits of the root's fingerprint, lower case: names files per root.
pub fn root_id(authority: &Authority) -> String {
    let fp: String = authority
        .fingerprint()
        .replace(':', "")
        .chars()
        .take(16)
        .collect();
    fp.to_ascii_lowercase()
}

impl std::fmt::Display for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}
