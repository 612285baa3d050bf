//! itproxy's DNS server (hickory-server): authoritative for the environment's domains, answering
//! each asker with the proxy's address as it sees it, forwarding every other name.
//!
//! Not built yet: the DNS issue fills this crate. The daemon does not start a DNS listener
//! until then, and this crate exports nothing, so nothing can depend on behaviour it lacks.
