//! The PC's network: pick the NIC, bring it up, lease an address, apply it.

pub(crate) mod dhcp;
pub(crate) mod keep;
pub(crate) mod netlink;
pub(crate) mod renew;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The wired NIC to boot from: `preferred` if given, else the first interface backed by a
/// device (not `lo`, bridges or tunnels), in name order. Waits up to `timeout` for it to
/// appear, since drivers register their interfaces shortly after the module loads.
pub(crate) fn find_interface(sys: &Path, preferred: Option<&str>, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut names: Vec<String> = std::fs::read_dir(sys.join("class/net"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        let found = match preferred {
            Some(p) => names.into_iter().find(|n| n == p),
            None => names.into_iter().find(|n| {
                let dir = sys.join("class/net").join(n);
                dir.join("device").exists() && !dir.join("wireless").exists()
            }),
        };
        if let Some(n) = found {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            match preferred {
                Some(p) => bail!("network interface {p} (tc.iface) did not appear within {timeout:?}"),
                None => bail!("no network card found within {timeout:?}: no driver for it in the image?"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The interface's burned-in address, from sysfs.
pub(crate) fn mac_of(sys: &Path, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let p = sys.join("class/net").join(ifname).join("address");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    parse_mac(text.trim()).with_context(|| format!("{}: {:?} is not a MAC address", p.display(), text.trim()))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next().filter(|p| p.len() == 2)?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Waits for the link to come up (cable and switch port), so DHCP's first packets are not lost.
pub(crate) fn wait_carrier(sys: &Path, ifname: &str, timeout: Duration) -> bool {
    let p = sys.join("class/net").join(ifname).join("carrier");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(&p).is_ok_and(|t| t.trim() == "1") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
