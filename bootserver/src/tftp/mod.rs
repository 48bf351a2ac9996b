//! TFTP service (RFC 1350 with the option extensions of RFC 2347, 2348, 2349 and 7440).
//!
//! `packet` parses and writes datagrams, `options` negotiates, `transfer` is the sender's state
//! machine, `netascii` its text encoding and `stray` judges datagrams from strangers that reach a
//! transfer's port; all five are free of I/O. `server` drives them with tokio: one listening
//! socket, and one task with its own socket per transfer.

pub mod netascii;
pub mod options;
pub mod packet;
pub(crate) mod server;
pub mod stray;
pub mod transfer;

use serde::Deserialize;

pub use server::{run, Service};

/// The `[tftp]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// UDP port of the service.
    pub port: u16,
    /// Largest block size granted to a client that asks for one (RFC 2348 allows 8..=65464).
    /// The interface MTU lowers it further so that no block is fragmented.
    pub max_blksize: u16,
    /// Largest window granted to a client that asks for one (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmissions before a transfer is abandoned.
    pub retries: u32,
    /// First retransmission timeout in milliseconds, unless the client sets one with the
    /// `timeout` option. It doubles on each retry.
    pub timeout_ms: u64,
    /// Ceiling of the doubled timeout, in milliseconds.
    pub max_timeout_ms: u64,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            port: 69,
            max_blksize: 65464,
            max_windowsize: 64,
            retries: 6,
            timeout_ms: 1000,
            max_timeout_ms: 8000,
        }
    }
}
