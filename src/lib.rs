//! The parts of the `itproxy` binary that tests and fuzzers need without a daemon: the config
//! file parser ([`config`]) and the control API's wire types ([`api`]). The binary
//! (`src/main.rs`) uses them from here, so what is fuzzed is what runs.
#![warn(missing_docs, clippy::print_stdout)]

pub mod api;
pub mod config;
