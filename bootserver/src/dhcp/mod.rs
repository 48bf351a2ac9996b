//! DHCP service (RFC 2131/2132 with the PXE options of RFC 4578), and proxyDHCP.

use std::net::Ipv4Addr;

use serde::Deserialize;

/// The `[dhcp]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    /// Lease time in seconds.
    pub lease_time: u32,
    /// Default gateway handed to clients (option 3). None: no router option.
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed to clients (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Fixed addresses by MAC.
    #[serde(rename = "reservation")]
    pub reservations: Vec<Reservation>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig { lease_time: 3600, router: None, dns: Vec::new(), domain: None, reservations: Vec::new() }
    }
}

/// `[[dhcp.reservation]]`: a fixed address for one MAC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    pub address: Ipv4Addr,
    pub hostname: Option<String>,
}
