//! The files and environment variables that make runtimes trust the root.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

/// Where Linux distributions and macOS keep the system's trusted roots, in the order tried.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The trust files of one CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustFiles {
    /// The root certificate alone (for runtimes that add it to their own roots, like Node).
    pub root: PathBuf,
    /// The system roots plus ours (for runtimes that replace their roots with a file).
    pub bundle: PathBuf,
}

/// Writes `out` as the first existing system bundle followed by `root_pem`, so that pointing
/// a runtime at it keeps every other HTTPS site working. Returns the system bundle used.
pub fn write_bundle(root_pem: &str, out: &Path) -> Result<Option<PathBuf>, Error> {
    let system = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
    let mut text = match system {
        Some(p) => fs::read_to_string(p).map_err(|error| Error::Io {
            action: "read",
            path: p.into(),
            error,
        })?,
        None => String::new(),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# itproxy local development CA\n");
    text.push_str(root_pem);
    let tmp = out.with_extension("pem.tmp");
    fs::write(&tmp, text).map_err(|error| Error::Io {
        action: "write",
        path: tmp.clone(),
        error,
    })?;
    fs::rename(&tmp, out).map_err(|error| Error::Io {
        action: "write",
        path: out.into(),
        error,
    })?;
    Ok(system.map(Path::to_path_buf))
}

/// The environment variables that make common runtimes and tools trust the root:
/// OpenSSL-based tools, Python requests, curl, git, the AWS SDKs, Node, and Deno.
pub fn trust_env(files: &TrustFiles) -> Vec<(&'static str, PathBuf)> {
    let b = || files.bundle.clone();
    vec![
        ("SSL_CERT_FILE", b()),
        ("REQUESTS_CA_BUNDLE", b()),
        ("CURL_CA_BUNDLE", b()),
        ("GIT_SSL_CAINFO", b()),
        ("AWS_CA_BUNDLE", b()),
        ("DENO_CERT", b()),
        ("NODE_EXTRA_CA_CERTS", files.root.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_ends_with_our_root() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle.pem");
        write_bundle(
            "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n",
            &out,
        )
        .unwrap();
        let text = fs::read_to_string(&out).unwrap();
        assert!(text.ends_with("-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n"));
        let files = TrustFiles {
            root: "r".into(),
            bundle: out.clone(),
        };
        let env = trust_env(&files);
        assert!(env.contains(&("NODE_EXTRA_CA_CERTS", PathBuf::from("r"))));
        assert!(env.contains(&("SSL_CERT_FILE", out)));
    }
}
