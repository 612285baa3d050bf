//! itproxy's certificate authority (rcgen): a name-constrained local root, and leaf
//! certificates issued on demand per SNI name, cached and renewed.
//!
//! Not built yet: the TLS issue fills this crate. Until then itproxy serves plain HTTP only and
//! this crate exports nothing.
