//! itproxy's daemon, everything `itproxy up` runs besides the protocol crates:
//!
//! ```text
//!   config/ ── Config (file + CLI overlay, grouped by subsystem)
//!      │
//!   startup ── claim the state directory, CA, Docker network, first snapshot,
//!      │        proxy, DNS, control socket, background tasks (docs/LIFECYCLE.md)
//!      ▼
//!   state/  ── DesiredState ─ Change ─> Snapshot { table, zone } ─> proxy, DNS
//!      ▲            ▲
//!   control ─── supervisor (apps) ─── discovery (labelled containers)
//! ```
//!
//! The CLI (`src/` of the root package) uses [`config`] to read the file, [`api`] for the
//! control API's wire types, [`StateDir`] to find the daemon, and [`tls`] for the `ca`
//! commands; it starts the daemon with [`run`]. Nothing here parses command lines or prints
//! to stdout.
#![warn(missing_docs, clippy::print_stdout)]

pub mod api;
pub mod config;
mod control;
mod dashboard;
mod inspect;
mod metrics;
mod mocks;
mod persist;
mod reload;
mod startup;
mod state;
mod state_dir;
mod supervisor;
pub mod tls;

pub use persist::StateError;
pub use startup::{run, StartError};
#[doc(hidden)]
pub use state::bench as bench_support;
pub use state_dir::{root_id, StateDir};
