//! The config file parser and validator, as `itproxy check-config` and `itproxy up` run them,
//! on any text: an error for a bad file, never a panic.
#![no_main]

use itproxy_daemon::config::{Config, CliOverrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = Config::from_str(text, &CliOverrides::default());
});
