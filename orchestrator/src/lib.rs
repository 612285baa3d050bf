//! itproxy's Docker orchestrator (bollard): the environment's network, declared containers,
//! readiness, discovery of labelled containers from the events stream, and logs.
//!
//! Not built yet: the orchestrator issue fills this crate. Until then itproxy routes only to
//! targets given in its configuration or through its control API, and this crate exports
//! nothing.
