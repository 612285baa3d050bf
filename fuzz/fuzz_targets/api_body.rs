//! The control API's request bodies, read and validated as the daemon does before it acts:
//! `PUT /v1/routes/{name}` (the name qualified by the domains, the target parsed) and
//! `POST /v1/apps/{name}/{action}` (the readiness timeout). Errors, never panics.
//!
//! Input: one byte whose low bit picks the endpoint (1: routes), the `{name}` path segment up
//! to the first newline, then the body.
#![no_main]

use std::sync::LazyLock;

use itproxy_daemon::api::{AppAction, PutRoute};
use itproxy_daemon::config::Domains;
use itproxy_router::{HostName, UpstreamSpec};
use libfuzzer_sys::fuzz_target;

static DOMAINS: LazyLock<Domains> = LazyLock::new(|| {
    Domains::new(vec![
        HostName::parse("test").unwrap(),
        HostName::parse("corp.example").unwrap(),
    ])
    .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Some((&endpoint, rest)) = data.split_first() else {
        return;
    };
    let (name, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => (&rest[..nl], &rest[nl + 1..]),
        None => (rest, &[][..]),
    };
    // The daemon gets the name percent-decoded as a String: UTF-8 only.
    let name = String::from_utf8_lossy(name);
    if endpoint & 1 == 1 {
        if let Ok(host) = DOMAINS.qualify(&name) {
            assert!(
                DOMAINS.iter().any(|d| host.is_within(d) && host != *d),
                "{host} is not below the domains"
            );
        }
        if let Ok(put) = PutRoute::from_body(body) {
            let _ = UpstreamSpec::parse(&put.target);
        }
    } else if let Ok(action) = AppAction::from_body(body) {
        let _ = action.timeout();
    }
});
