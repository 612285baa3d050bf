//! The root CA and leaf issuance.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::Error;

const ROOT_FILE: &str = "root.pem";
const KEY_FILE: &str = "root-key.pem";
/// The root lasts ten years; rotation is explicit.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start an hour in the past so that a slightly slow clock still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The root certificate authority: its key, its certificate and the names it may sign.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    root_der: Vec<u8>,
    permitted: Vec<String>,
    dir: PathBuf,
}

/// A leaf certificate with its key, ready for rustls.
pub struct Leaf {
    /// The name it was issued for.
    pub name: String,
    /// Certificate then key, PEM (the on-disk cache format).
    pub pem: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// Start of validity.
    pub not_before: SystemTime,
    /// The chain and signing key for rustls.
    pub certified: Arc<CertifiedKey>,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |error| Error::Io {
        action,
        path,
        error,
    }
}

/// Writes `contents` at `path` with `mode`, atomically: a temporary file beside it, synced,
/// then renamed over it, so a crash or a full disk leaves the old file or the new one whole.
fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io("write", path)(e));
    }
    Ok(())
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// Whether `name` is `domain` or below it.
fn within(name: &str, domain: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

impl Authority {
    /// Loads the CA from `dir`, or creates it there (directory 0700, key 0600) permitting
    /// `domains` plus `localhost`. Returns whether it was created.
    pub fn load_or_create(
        dir: &Path,
        domains: &[String],
        subject: &str,
        now: SystemTime,
    ) -> Result<(Authority, bool), Error> {
        // The root is written last: a key without a root is a creation cut short, whose root
        // nobody can have trusted yet, so it is made again.
        if dir.join(ROOT_FILE).exists() {
            return Authority::load(dir).map(|a| (a, false));
        }
        if dir.join(KEY_FILE).exists() {
            tracing::warn!(
                dir = %dir.display(),
                "the CA's creation was cut short (a key but no root); creating it again"
            );
        }
        Authority::create(dir, domains, subject, now).map(|a| (a, true))
    }

    /// Creates a new CA in `dir`, replacing any there.
    pub fn create(
        dir: &Path,
        domains: &[String],
        subject: &str,
        now: SystemTime,
    ) -> Result<Authority, Error> {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("create", dir))?;
        let mut permitted: Vec<String> = Vec::new();
        for d in domains
            .iter()
            .map(|d| d.trim_matches('.').to_ascii_lowercase())
        {
            if !d.is_empty() && !permitted.contains(&d) {
                permitted.push(d);
            }
        }
        if !permitted.iter().any(|d| d == "localhost") {
            permitted.push("localhost".into());
        }
        let gen = |e: rcgen::Error| Error::Generate {
            name: subject.into(),
            message: e.to_string(),
        };

        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject);
        dn.push(DnType::OrganizationName, "itproxy local development CA");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = odt(now - BACKDATE);
        p.not_after = odt(now + ROOT_VALIDITY);
        let mut subtrees: Vec<GeneralSubtree> = permitted
            .iter()
            .map(|d| GeneralSubtree::DnsName(d.clone()))
            .collect();
        subtrees.push(GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix(
            [127, 0, 0, 0],
            8,
        )));
        subtrees.push(GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
            Ipv6Addr::LOCALHOST.octets(),
            128,
        )));
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: subtrees,
            excluded_subtrees: vec![],
        });
        let key = KeyPair::generate().map_err(gen)?;
        let cert = p.self_signed(&key).map_err(gen)?;

        let root_pem = cert.pem();
        write_atomic(&dir.join(KEY_FILE), &key.serialize_pem(), 0o600)?;
        // The certificate is public; it is written last so a crash leaves no root without key.
        write_atomic(&dir.join(ROOT_FILE), &root_pem, 0o644)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("write", dir))?;
        let root_der = cert.der().to_vec();
        Ok(Authority {
            issuer: Issuer::new(p, key),
            root_pem,
            root_der,
            permitted,
            dir: dir.into(),
        })
    }

    fn load(dir: &Path) -> Result<Authority, Error> {
        let bad = |message: String| Error::BadCa {
            path: dir.to_path_buf(),
            message,
        };
        let key_path = dir.join(KEY_FILE);
        let root_path = dir.join(ROOT_FILE);
        let key_pem = fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
        let root_pem = fs::read_to_string(&root_path).map_err(io("read", &root_path))?;
        let mode = fs::metadata(&key_path)
            .map_err(io("read", &key_path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                "the CA key was readable by others; restricting it to mode 0600"
            );
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
                .map_err(io("write", &key_path))?;
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("key: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(root_pem.as_bytes())
            .map_err(|e| bad(format!("certificate: {e}")))?;
        let root_der = pem.contents.clone();
        let cert = pem
            .parse_x509()
            .map_err(|e| bad(format!("certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad("the key does not belong to the certificate".into()));
        }
        let mut permitted = Vec::new();
        if let Ok(Some(nc)) = cert.name_constraints() {
            for s in nc.value.permitted_subtrees.iter().flatten() {
                if let x509_parser::extensions::GeneralName::DNSName(d) = s.base {
                    permitted.push(d.to_ascii_lowercase());
                }
            }
        }
        if permitted.is_empty() {
            return Err(bad("the root has no name constraints".into()));
        }
        let issuer = Issuer::from_ca_cert_pem(&root_pem, key).map_err(|e| bad(e.to_string()))?;
        Ok(Authority {
            issuer,
            root_pem,
            root_der,
            permitted,
            dir: dir.into(),
        })
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Path of the root certificate file.
    pub fn root_path(&self) -> PathBuf {
        self.dir.join(ROOT_FILE)
    }

    /// Path of the root key file (mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// SHA-256 of the root certificate, upper-case hex pairs joined by ':' (as openssl prints).
    pub fn fingerprint(&self) -> String {
        let digest = ring_digest(&self.root_der);
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The DNS names this root may sign (each with everything below it).
    pub fn permitted(&self) -> &[String] {
        &self.permitted
    }

    /// Whether a leaf for `name` may be issued.
    pub fn permits(&self, name: &str) -> bool {
        self.permitted.iter().any(|d| within(name, d))
    }

    /// Issues a leaf for `name` valid from `now` for `validity`. `localhost` also gets the
    /// loopback IP addresses (it serves clients that send no server name).
    pub fn issue(&self, name: &str, now: SystemTime, validity: Duration) -> Result<Leaf, Error> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !self.permits(&name) {
            return Err(Error::NotPermitted {
                name,
                permitted: self.permitted.join(", "),
            });
        }
        let gen = |e: &dyn std::fmt::Display| Error::Generate {
            name: name.clone(),
            message: e.to_string(),
        };
        let mut p = CertificateParams::new(vec![name.clone()]).map_err(|e| gen(&e))?;
        if name == "localhost" {
            p.subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            p.subject_alt_names
                .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let not_before = now - BACKDATE;
        let not_after = now + validity;
        p.not_before = odt(not_before);
        p.not_after = odt(not_after);
        let key = KeyPair::generate().map_err(|e| gen(&e))?;
        let cert = p.signed_by(&key, &self.issuer).map_err(|e| gen(&e))?;
        let certified =
            certified_key(cert.der().to_vec(), key.serialize_der()).map_err(|e| gen(&e))?;
        Ok(Leaf {
            name,
            pem: format!("{}{}", cert.pem(), key.serialize_pem()),
            not_after: truncate_to_secs(not_after),
            not_before: truncate_to_secs(not_before),
            certified,
        })
    }
}

/// X.509 times have one-second resolution.
fn truncate_to_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

pub(crate) fn certified_key(
    cert_der: Vec<u8>,
    key_pkcs8: Vec<u8>,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert_der)],
        signer,
    )))
}

/// Reads a cached leaf (certificate then key, PEM).
pub(crate) fn parse_leaf(name: &str, pem: &str) -> Option<Leaf> {
    let mut cert_der = None;
    let mut key_der = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.ok()?;
        match block.label.as_str() {
            "CERTIFICATE" if cert_der.is_none() => cert_der = Some(block.contents),
            "PRIVATE KEY" => key_der = Some(block.contents),
            _ => {}
        }
    }
    let cert_der = cert_der?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).ok()?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let not_after = to_system(cert.validity().not_after);
    let not_before = to_system(cert.validity().not_before);
    let certified = certified_key(cert_der.clone(), key_der?).ok()?;
    Some(Leaf {
        name: name.into(),
        pem: pem.into(),
        not_after,
        not_before,
        certified,
    })
}

fn ring_digest(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<String> {
        vec!["test".into()]
    }

    #[test]
    fn creates_once_then_reuses_with_safe_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let now = SystemTime::now();
        let (a, created) =
            Authority::load_or_create(&ca_dir, &domains(), "itproxy test CA", now).unwrap();
        assert!(created);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a.key_path()), 0o600);
        assert_eq!(mode(&ca_dir), 0o700);
        let (b, created) = Authority::load_or_create(&ca_dir, &domains(), "ignored", now).unwrap();
        assert!(!created);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(b.permitted(), ["test", "localhost"]);
        assert_eq!(a.fingerprint().len(), 32 * 3 - 1);
        // A leaf from the reloaded CA is signed by the same root.
        b.issue("api.test", now, Duration::from_secs(3600)).unwrap();
    }

    #[test]
    fn refuses_names_outside_the_constraints() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) =
            Authority::load_or_create(dir.path(), &domains(), "t", SystemTime::now()).unwrap();
        for ok in ["api.test", "a.b.test", "localhost", "API.Test."] {
            assert!(
                a.issue(ok, SystemTime::now(), Duration::from_secs(60))
                    .is_ok(),
                "{ok}"
            );
        }
        for bad in ["www.example.com", "latest", "test.com", "example"] {
            let e = a
                .issue(bad, SystemTime::now(), Duration::from_secs(60))
                .err()
                .unwrap();
            assert!(e.to_string().contains("outside"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_damaged_ca_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "junk").unwrap();
        fs::write(dir.path().join(ROOT_FILE), "junk").unwrap();
        let e = Authority::load_or_create(dir.path(), &domains(), "t", SystemTime::now())
            .err()
            .unwrap();
        assert!(e.to_string().contains("unusable"), "{e}");
    }

    #[test]
    fn a_creation_cut_short_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        // A crash after the key was written and before the root was.
        fs::write(dir.path().join(KEY_FILE), "half a key").unwrap();
        let (a, created) =
            Authority::load_or_create(dir.path(), &domains(), "t", SystemTime::now()).unwrap();
        assert!(created);
        let (b, created) =
            Authority::load_or_create(dir.path(), &domains(), "t", SystemTime::now()).unwrap();
        assert!(!created);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn leaf_round_trips_through_pem() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) =
            Authority::load_or_create(dir.path(), &domains(), "t", SystemTime::now()).unwrap();
        let leaf = a
            .issue(
                "api.test",
                SystemTime::now(),
                Duration::from_secs(7 * 86400),
            )
            .unwrap();
        let back = parse_leaf("api.test", &leaf.pem).unwrap();
        assert_eq!(back.not_after, leaf.not_after);
        assert_eq!(back.not_before, leaf.not_before);
        assert!(parse_leaf("x", "not pem").is_none());
    }
}
