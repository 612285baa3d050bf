//! Integration tests: the real `itproxy` binary, real backends and real clients, on loopback.

mod apps;
mod bench;
mod browser;
mod cli;
mod dns;
mod docker;
mod errors;
mod faults;
mod fronts;
mod hardening;
mod inspector;
mod mocks;
mod persistence;
mod routing;
mod swap;
mod tls;
mod util;
mod websocket;
