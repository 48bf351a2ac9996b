//! TFTP service (RFC 1350 with the option extensions of RFC 2347, 2348, 2349 and 7440).
//!
//! `packet` parses and writes datagrams, `options` negotiates, `transfer` is the sender's state
//! machine, `netascii` its text encoding, `stray` judges datagrams from strangers that reach a
//! transfer's port and `admit` decides which requests start a transfer; all six are free of I/O.
//! `server` drives them with tokio: one listening socket, and one task with its own socket per
//! transfer.

pub mod admit;
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
    /// Largest `timeout` option accepted from a client, in seconds (RFC 2349 allows up to
    /// 255). A larger one is left out of the OACK, which refuses it: the client then keeps
    /// its default and the server uses `timeout_ms`.
    pub max_client_timeout_secs: u64,
    /// Retransmissions before the client's first ACK. Until then its address may be forged,
    /// and every retransmission goes to whoever was named.
    pub retries_before_ack: u32,
    /// A transfer still running after this many seconds is ended with an ERROR.
    pub max_transfer_secs: u64,
    /// Transfers running at once, in all.
    pub max_transfers: usize,
    /// Transfers running at once from one host (IP address).
    pub max_transfers_per_host: usize,
    /// Requests a host may send per second once its burst is spent; more are dropped.
    pub requests_per_sec: u32,
    /// Requests a host may send in a burst.
    pub request_burst: u32,
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
            max_client_timeout_secs: 10,
            retries_before_ack: 1,
            max_transfer_secs: 600,
            max_transfers: 128,
            max_transfers_per_host: 8,
            requests_per_sec: 10,
            request_burst: 20,
        }
    }
}
