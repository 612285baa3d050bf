//! itproxy's local certificate authority.
//!
//! This crate owns the root CA (created once, reused, rotated on request), the leaf
//! certificates issued on demand for each TLS server name, their caches in memory and on disk,
//! and the trust files runtimes need (the root, and a bundle of the system roots plus ours).
//!
//! The root carries X.509 Name Constraints that permit only the configured domains, `localhost`,
//! 127.0.0.0/8 and ::1: a machine that trusts it cannot be fooled into trusting a certificate
//! for any other name, even if the root's key leaks. Leaves are short-lived (7 days by default)
//! and renewed at the first handshake that finds them within their last third.
//!
//! ```text
//!  ClientHello(SNI) ─▶ CertResolver::resolve ─▶ memory cache ─▶ disk cache ─▶ Authority::issue
//!                         (no SNI: localhost)      (fresh?)        (fresh?)     (permitted?)
//! ```
//! It reads and writes only the directories it is given; it reads no environment.
#![warn(missing_docs, clippy::print_stdout)]

mod authority;
mod resolver;
mod trust;

pub use authority::{Authority, Leaf};
pub use resolver::{CertResolver, Clock, ServedNames};
pub use trust::{trust_env, write_bundle, TrustFiles, SYSTEM_BUNDLES};

/// What can go wrong with certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the CA cannot be read or written.
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The stored root or key cannot be used.
    #[error("the CA in {path} is unusable ({message}); move it away or run `itproxy ca rotate`")]
    BadCa {
        /// The CA directory.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The name is outside the root's name constraints.
    #[error("{name:?} is outside the names this CA may sign ({permitted})")]
    NotPermitted {
        /// The requested name.
        name: String,
        /// The permitted names.
        permitted: String,
    },
    /// Too many certificates for names without a route were asked for this second.
    #[error(
        "{name:?} has no route, and more than 20 such names asked for a certificate this second; \
         route it (`itproxy route`) or set `[tls] mint = \"any\"`"
    )]
    TooManyNames {
        /// The requested name.
        name: String,
    },
    /// Certificate generation failed.
    #[error("cannot create a certificate for {name:?}: {message}")]
    Generate {
        /// The name.
        name: String,
        /// rcgen's or rustls's message.
        message: String,
    },
}
