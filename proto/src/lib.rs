//! Wire types and contracts shared by the thin-client agent (`thinclient`), the boot
//! server's broker (`bootserver`) and the host agent (`server-host`).
//!
//! Everything here is pure data: parsing and emitting, no I/O, so that every side can test
//! its half of a contract against byte vectors. The one exception is `tls` (feature `tls`),
//! which reads PEM files into rustls configs.

pub mod agent;
pub mod cmdline;
pub mod host;
pub mod tls;
