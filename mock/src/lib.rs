//! itproxy's backend mocks: a route's exchanges recorded as readable files, served back
//! without the backend, and replayed against the live backend to see what changed.
//!
//! ```text
//!  route api --record DIR:  proxy ─▶ Recorder (loopback) ─▶ the route's target; each exchange
//!                                                            saved as DIR/NNNN-METHOD-path.json
//!  route api --mock DIR:    proxy ─▶ Replayer (loopback): the recorded response that matches
//!                                    (method, path, then query, then body), or a 404 listing
//!                                    the near misses
//!  mock diff DIR:           each recorded request sent to the live target; status, headers
//!                           and the JSON body's shape compared with the recording
//! ```
//!
//! The crate reads and writes only the directory it is given; the daemon decides which route
//! goes where.
#![warn(missing_docs, clippy::print_stdout)]

pub mod diff;
pub mod matching;
pub mod recording;
pub mod server;

pub use matching::{Matched, Matcher};
pub use recording::{Exchange, RecordedRequest, RecordedResponse, Recording};

/// What can go wrong with a recording.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory or a file in it cannot be read or written.
    #[error("{action} {}: {error}", .path.display())]
    Io {
        /// What was being done ("read", "write", "create").
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A file of the recording is not an exchange.
    #[error("{} is not a recorded exchange: {message}", .path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The directory holds no exchange to serve.
    #[error("{} holds no recorded exchange; record one with `itproxy route NAME --record {}`", .0.display(), .0.display())]
    Empty(std::path::PathBuf),
    /// A listener for the recorder or the replayer cannot be bound.
    #[error("cannot listen on loopback for the mock: {0}")]
    Listen(std::io::Error),
    /// The target cannot be recorded.
    #[error("cannot record {target}: {reason}")]
    Target {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
}
