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
/// appear (a driver may register its interface after its module has loaded), woken by the
/// kernel's link events rather than by a timer.
pub(crate) fn find_interface(
    sys: &Path,
    preferred: Option<&str>,
    events: &mut LinkEvents,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut found = None;
    let appeared = events.wait_until(timeout, || {
        let mut names: Vec<String> = std::fs::read_dir(sys.join("class/net"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        found = match preferred {
            Some(p) => names.into_iter().find(|n| n == p),
            None => names.into_iter().find(|n| {
                let dir = sys.join("class/net").join(n);
                dir.join("device").exists() && !dir.join("wireless").exists()
            }),
        };
        found.is_some()
    });
    match (appeared, found, preferred) {
        (true, Some(n), _) => Ok(n),
        (_, _, Some(p)) => bail!("network interface {p} (tc.iface) did not appear within {timeout:?}"),
        (_, _, None) => bail!("no network card found within {timeout:?}: no driver for it in the image?"),
    }
}

/// The kernel's link notifications (rtnetlink group RTNLGRP_LINK): an interface appearing, or
/// its carrier changing, wakes a waiter at once. Subscribed before the state is first read, so
/// a change between the read and the wait is not missed.
pub(crate) struct LinkEvents {
    sock: netlink_sys::Socket,
}

/// `RTMGRP_LINK`, the legacy group bit of RTNLGRP_LINK.
const RTMGRP_LINK: u32 = 1;

impl LinkEvents {
    pub(crate) fn open() -> anyhow::Result<Self> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
            .context("opening a route netlink socket for link events")?;
        sock.bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK)).context("subscribing to link events")?;
        Ok(LinkEvents { sock })
    }

    /// Returns true as soon as `ready` holds, checking it first and then after every link
    /// event; false if it still does not hold after `timeout`. The events' content is not
    /// parsed: `ready` reads the state itself, which also covers lost (overrun) events.
    pub(crate) fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + timeout;
        let fd = self.sock.as_raw_fd();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if ready() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::warn!("waiting for link events: {e}");
                    return ready();
                }
            }
            // Drain what queued up; ENOBUFS (overrun) only means events were dropped.
            loop {
                // SAFETY: recv into a buffer of the given length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                if n <= 0 {
                    let e = std::io::Error::last_os_error();
                    if n == 0 || e.raw_os_error() != Some(libc::ENOBUFS) {
                        break;
                    }
                }
            }
        }
    }
}

/// Turns IPv6 off on `ifname` before it comes up; the agent speaks IPv4 only. Otherwise the
/// kernel configures a link-local address the moment the carrier appears and joins its
/// multicast group, which rewrites the NIC's receive filter right when DHCP starts, and some
/// NICs (QEMU's e1000 among them) hold received frames for a second after such a rewrite.
/// A kernel without IPv6 has nothing to turn off.
pub(crate) fn disable_ipv6(proc: &Path, ifname: &str) {
    let p = proc.join("sys/net/ipv6/conf").join(ifname).join("disable_ipv6");
    if p.exists() {
        if let Err(e) = std::fs::write(&p, "1") {
            log::warn!("{}: {e}; IPv6 stays on", p.display());
        }
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

/// Waits for the link to come up (cable and switch port), so DHCP's first packets are not
/// lost: woken by the kernel's carrier event, not by polling.
pub(crate) fn wait_carrier(sys: &Path, ifname: &str, events: &mut LinkEvents, timeout: Duration) -> bool {
    let p = sys.join("class/net").join(ifname).join("carrier");
    events.wait_until(timeout, || std::fs::read_to_string(&p).is_ok_and(|t| t.trim() == "1"))
}
