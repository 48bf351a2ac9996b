//! TFTP service (RFC 1350 with the option extensions of RFC 2347, 2348, 2349 and 7440).

use serde::Deserialize;

/// The `[tftp]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// UDP port of the service.
    pub port: u16,
    /// Largest block size granted to a client that asks for one (RFC 2348 allows 8..=65464).
    pub max_blksize: u16,
    /// Largest window granted to a client that asks for one (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmissions before a transfer is abandoned.
    pub retries: u32,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig { port: 69, max_blksize: 65464, max_windowsize: 64, retries: 6 }
    }
}
