//! The boot-stage reports, without I/O: which stage each PC reached in its last boots, from
//! the DHCP offer to the desktop on its screen. Times are Unix milliseconds, passed in.
//!
//! Bounded against a hostile LAN, which can make up MACs at will: a PC keeps its last
//! [`Caps::boots_per_mac`] boots with [`Caps::files_per_boot`] files each, and PCs that never
//! announced themselves (anyone can send a DHCP DISCOVER) are kept [`Caps::unannounced`] at
//! most, the oldest dropped first.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// How a boot file travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tftp,
    Http,
    Nfs,
}

/// The kind of DHCP client that asked: a PXE ROM, iPXE, or anything else (the kernel's or
/// the agent's own DHCP, udhcpc, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DhcpClient {
    Pxe,
    Ipxe,
    Plain,
}

/// Which way the offer came: as the network's DHCP server, or as proxyDHCP beside another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMode {
    Dhcp,
    ProxyDhcp,
}

/// One stage reached, with what is known about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Detail {
    DhcpOffered {
        /// None for a proxyDHCP offer, which carries boot information only.
        address: Option<Ipv4Addr>,
        mode: ServerMode,
        client: DhcpClient,
        pxe: bool,
        /// Its REQUEST was acknowledged too.
        acked: bool,
        /// The boot file the offer named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_file: Option<String>,
    },
    BootFile {
        name: String,
        protocol: Protocol,
        /// For an NFS mount: the bytes read through it so far (None before the first read);
        /// its `ms`, the time from the mount to the last read counted.
        bytes: Option<u64>,
        ms: u64,
        complete: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    AgentHello {
        agent_version: String,
        address: Ipv4Addr,
        /// From power-on (or kernel start) to the hello, by the agent's own phases.
        boot_ms: u64,
    },
    Login {
        /// The account, or None for a kiosk without an account.
        person: Option<String>,
        /// `login`, `autologin` or `kiosk`.
        how: String,
    },
    DesktopShown {},
}

const HELLO_RANK: u8 = 2;

impl Detail {
    pub fn name(&self) -> &'static str {
        match self {
            Detail::DhcpOffered { .. } => "dhcp_offered",
            Detail::BootFile { .. } => "boot_file",
            Detail::AgentHello { .. } => "agent_hello",
            Detail::Login { .. } => "login",
            Detail::DesktopShown {} => "desktop_shown",
        }
    }

    /// The order of the stages in a boot.
    fn rank(&self) -> u8 {
        match self {
            Detail::DhcpOffered { .. } => 0,
            Detail::BootFile { .. } => 1,
            Detail::AgentHello { .. } => HELLO_RANK,
            Detail::Login { .. } => 3,
            Detail::DesktopShown {} => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Unix milliseconds.
    pub at: u64,
    #[serde(flatten)]
    pub detail: Detail,
}

/// One boot of one PC: its stages in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    pub stages: Vec<Stage>,
    /// Stages not kept because the boot had its fill of them.
    #[serde(default)]
    pub dropped: u32,
}

impl Boot {
    fn started(&self) -> u64 {
        self.stages.first().map(|s| s.at).unwrap_or(0)
    }

    fn last_at(&self) -> u64 {
        self.stages.last().map(|s| s.at).unwrap_or(0)
    }

    fn reached(&self, rank: u8) -> bool {
        // Stages come in order except for logins and desktops that repeat, so any will do.
        self.stages.iter().any(|s| s.detail.rank() >= rank)
    }

    /// The furthest stage reached (the latest of them, if several).
    pub fn furthest(&self) -> Option<&Stage> {
        self.stages.iter().rev().max_by_key(|s| s.detail.rank())
    }

    /// A DISCOVER of `client` means the PC started again when a hello was already seen, or
    /// when the same kind of client already had its offer and fetched files after it: a PXE
    /// ROM chain-loading iPXE, or the agent's own DHCP after the kernel's download, are steps
    /// of one boot, whereas the same ROM asking again is a reset.
    fn restarted_by(&self, client: DhcpClient) -> bool {
        if self.reached(HELLO_RANK) {
            return true;
        }
        let mut offered = false;
        for s in &self.stages {
            match &s.detail {
                Detail::DhcpOffered { client: c, .. } if *c == client => offered = true,
                Detail::BootFile { .. } if offered => return true,
                _ => {}
            }
        }
        false
    }
}

/// What the services report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An OFFER went out.
    Offered { address: Option<Ipv4Addr>, mode: ServerMode, client: DhcpClient, boot_file: Option<String> },
    /// An ACK went out: the address is the PC's now.
    Acked { address: Ipv4Addr },
    File { name: String, protocol: Protocol, bytes: Option<u64>, ms: u64, error: Option<String> },
    /// `new_boot`: the hello carries no resume token, so it is no reconnection.
    Hello { agent_version: String, address: Ipv4Addr, boot_ms: u64, new_boot: bool },
    Login { person: Option<String>, how: String },
    /// The agent's viewer shows the desktop.
    DesktopShown,
    /// Bytes the PC read over NFS since the last such event: added to its current boot's NFS
    /// mount (no stage of its own; none without a mount).
    NfsRead { bytes: u64 },
}

#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub boots_per_mac: usize,
    pub stages_per_boot: usize,
    pub files_per_boot: usize,
    /// PCs never announced (DHCP or file fetches only).
    pub unannounced: usize,
    /// PCs in all.
    pub macs: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps { boots_per_mac: 4, stages_per_boot: 64, files_per_boot: 32, unannounced: 256, macs: 4096 }
    }
}

/// The boots of one PC, the current one last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcBoots {
    pub boots: VecDeque<Boot>,
    /// Some boot of it reached the agent's hello.
    pub announced: bool,
    /// Unix ms of the last event, for dropping the oldest.
    pub updated: u64,
}

/// Where a PC is in its current boot, for the admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagesView {
    pub mac: String,
    pub announced: bool,
    /// The furthest stage of the current boot.
    pub last_stage: Option<String>,
    /// Milliseconds since the current boot's latest stage.
    pub since_ms: u64,
    /// `stuck after STAGE` unless the desktop is shown.
    pub stuck: Option<String>,
    pub current: Vec<StageView>,
    #[serde(default)]
    pub dropped: u32,
    /// Earlier boots kept, the newest first: when each started and where it ended.
    pub earlier: Vec<EarlierBoot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageView {
    pub stage: String,
    /// Since the boot's first stage.
    pub ms: u64,
    /// Wall clock, UTC (RFC 3339).
    pub time: String,
    pub unix_ms: u64,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierBoot {
    pub time: String,
    pub last_stage: Option<String>,
    pub stages: usize,
}

/// Every PC's boots, and the addresses they were given.
#[derive(Debug, Default)]
pub struct Stages {
    caps: Caps,
    pcs: HashMap<String, PcBoots>,
    addresses: HashMap<Ipv4Addr, String>,
}

impl Stages {
    pub fn new(caps: Caps) -> Self {
        Stages { caps, ..Stages::default() }
    }

    /// Takes in stored reports (at start); beyond the caps they are dropped like new ones.
    pub fn restore(&mut self, mac: String, pc: PcBoots) {
        self.pcs.insert(mac.clone(), pc);
        self.trim(&mac);
    }

    pub fn get(&self, mac: &str) -> Option<&PcBoots> {
        self.pcs.get(mac)
    }

    pub fn macs(&self) -> impl Iterator<Item = &String> {
        self.pcs.keys()
    }

    /// The MAC that was last given `ip` by our DHCP or announced itself from it.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.addresses.get(&ip).map(String::as_str)
    }

    /// Records `event` of `mac` at `now`. Returns the MACs whose reports changed or went
    /// (dropped by the caps), for the store.
    pub fn record(&mut self, mac: &str, event: Event, now: u64) -> Vec<String> {
        if let Event::NfsRead { bytes } = event {
            return self.nfs_read(mac, bytes, now);
        }
        let pc = self.pcs.entry(mac.to_string()).or_default();
        pc.updated = now;
        let fresh = pc.boots.is_empty();
        let current = pc.boots.back();
        let new_boot = fresh
            || match &event {
                Event::Offered { client, .. } => current.is_some_and(|b| b.restarted_by(*client)),
                Event::Hello { new_boot, .. } => *new_boot && current.is_some_and(|b| b.reached(HELLO_RANK)),
                _ => false,
            };
        if new_boot {
            pc.boots.push_back(Boot::default());
            while pc.boots.len() > self.caps.boots_per_mac {
                pc.boots.pop_front();
            }
        }
        let boot = pc.boots.back_mut().expect("a boot was just made");
        let detail = match event {
            Event::Offered { address, mode, client, boot_file } => {
                if let Some(a) = address {
                    self.addresses.insert(a, mac.to_string());
                }
                Some(Detail::DhcpOffered { address, mode, client, pxe: client != DhcpClient::Plain, acked: false, boot_file })
            }
            Event::Acked { address } => {
                self.addresses.insert(address, mac.to_string());
                // Marks the offer it answers; an ACK alone (a renewal, a REQUEST after our
                // restart) is no stage.
                let offer = boot.stages.iter_mut().rev().find_map(|s| match &mut s.detail {
                    Detail::DhcpOffered { address: a, acked, .. } => Some((a, acked)),
                    _ => None,
                });
                if let Some((a, acked)) = offer {
                    *a = Some(address);
                    *acked = true;
                }
                None
            }
            Event::File { name, protocol, bytes, ms, error } => {
                let files = boot.stages.iter().filter(|s| matches!(s.detail, Detail::BootFile { .. })).count();
                if files >= self.caps.files_per_boot {
                    boot.dropped = boot.dropped.saturating_add(1);
                    None
                } else {
                    Some(Detail::BootFile { name, protocol, bytes, ms, complete: error.is_none(), error })
                }
            }
            Event::Hello { agent_version, address, boot_ms, new_boot } => {
                self.addresses.insert(address, mac.to_string());
                pc.announced = true;
                let seen = boot.stages.iter().any(|s| matches!(s.detail, Detail::AgentHello { .. }));
                // A reconnection of the same boot is no stage of it.
                (!seen || new_boot).then_some(Detail::AgentHello { agent_version, address, boot_ms })
            }
            Event::Login { person, how } => Some(Detail::Login { person, how }),
            // Handled above: it changes a stage, it adds none.
            Event::NfsRead { .. } => None,
            Event::DesktopShown => {
                // Each status while it shows is the same stage.
                let showing = matches!(boot.stages.last(), Some(Stage { detail: Detail::DesktopShown {}, .. }));
                (!showing).then_some(Detail::DesktopShown {})
            }
        };
        if let Some(detail) = detail {
            if boot.stages.len() >= self.caps.stages_per_boot {
                boot.dropped = boot.dropped.saturating_add(1);
            } else {
                boot.stages.push(Stage { at: now, detail });
            }
        }
        let mut changed = vec![mac.to_string()];
        changed.extend(self.trim(mac));
        changed
    }

    /// Adds `n` bytes to the current boot's last NFS mount, whose `ms` becomes the time since
    /// the mount.
    fn nfs_read(&mut self, mac: &str, n: u64, now: u64) -> Vec<String> {
        let Some(boot) = self.pcs.get_mut(mac).and_then(|pc| pc.boots.back_mut()) else { return Vec::new() };
        let mount = boot.stages.iter_mut().rev().find_map(|s| match &mut s.detail {
            Detail::BootFile { protocol: Protocol::Nfs, complete: true, bytes, ms, .. } => Some((s.at, bytes, ms)),
            _ => None,
        });
        let Some((at, bytes, ms)) = mount else { return Vec::new() };
        *bytes = Some(bytes.unwrap_or(0).saturating_add(n));
        *ms = now.saturating_sub(at);
        vec![mac.to_string()]
    }

    /// Drops the oldest PCs beyond the caps, never `keep` (just updated) unless it alone is
    /// over; returns the dropped MACs.
    fn trim(&mut self, keep: &str) -> Vec<String> {
        let mut gone = Vec::new();
        if let Some(pc) = self.pcs.get_mut(keep) {
            while pc.boots.len() > self.caps.boots_per_mac {
                pc.boots.pop_front();
            }
        }
        loop {
            let unannounced = self.pcs.values().filter(|p| !p.announced).count();
            let over_unannounced = unannounced > self.caps.unannounced;
            if !over_unannounced && self.pcs.len() <= self.caps.macs {
                break;
            }
            let victim = self
                .pcs
                .iter()
                .filter(|(m, p)| m.as_str() != keep && (!over_unannounced || !p.announced))
                .min_by_key(|(m, p)| (p.updated, m.as_str()))
                .map(|(m, _)| m.clone());
            let Some(victim) = victim else { break };
            self.pcs.remove(&victim);
            self.addresses.retain(|_, m| *m != victim);
            gone.push(victim);
        }
        gone
    }

    /// The admin's view of `mac` at `now`.
    pub fn view(&self, mac: &str, now: u64) -> Option<StagesView> {
        let pc = self.pcs.get(mac)?;
        let empty = Boot::default();
        let current = pc.boots.back().unwrap_or(&empty);
        let furthest = current.furthest();
        let last_stage = furthest.map(|s| s.detail.name().to_string());
        let stuck = match furthest {
            Some(Stage { detail: Detail::DesktopShown {}, .. }) | None => None,
            Some(s) => Some(format!("stuck after {}", s.detail.name())),
        };
        let start = current.started();
        let stages = current
            .stages
            .iter()
            .map(|s| {
                let mut details = serde_json::to_value(&s.detail).unwrap_or_default();
                if let Some(o) = details.as_object_mut() {
                    o.remove("stage");
                }
                StageView {
                    stage: s.detail.name().into(),
                    ms: s.at.saturating_sub(start),
                    time: rfc3339(s.at),
                    unix_ms: s.at,
                    details,
                }
            })
            .collect();
        let earlier = pc
            .boots
            .iter()
            .rev()
            .skip(1)
            .map(|b| EarlierBoot {
                time: rfc3339(b.started()),
                last_stage: b.furthest().map(|s| s.detail.name().to_string()),
                stages: b.stages.len(),
            })
            .collect();
        Some(StagesView {
            mac: mac.to_string(),
            announced: pc.announced,
            last_stage,
            since_ms: now.saturating_sub(current.last_at()),
            stuck,
            current: stages,
            dropped: current.dropped,
            earlier,
        })
    }
}

/// `unix_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Days to a civil date (H. Hinnant's algorithm), for dates from 1970 on.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:00:00:01";

    fn offer(client: DhcpClient) -> Event {
        Event::Offered { address: Some(Ipv4Addr::new(10, 0, 0, 100)), mode: ServerMode::Dhcp, client, boot_file: None }
    }

    fn file(name: &str, bytes: u64) -> Event {
        Event::File { name: name.into(), protocol: Protocol::Tftp, bytes: Some(bytes), ms: 5, error: None }
    }

    fn hello(new_boot: bool) -> Event {
        Event::Hello { agent_version: "1".into(), address: Ipv4Addr::new(10, 0, 0, 100), boot_ms: 900, new_boot }
    }

    fn names(s: &Stages) -> Vec<String> {
        s.view(MAC, 0).unwrap().current.iter().map(|v| v.stage.clone()).collect()
    }

    #[test]
    fn a_whole_boot_in_order_then_a_new_one() {
        let mut s = Stages::default();
        s.record(MAC, offer(DhcpClient::Pxe), 1000);
        s.record(MAC, Event::Acked { address: Ipv4Addr::new(10, 0, 0, 100) }, 1010);
        s.record(MAC, file("undionly.kpxe", 70_000), 1200);
        // iPXE chain-loaded by the ROM asks again: the same boot.
        s.record(MAC, offer(DhcpClient::Ipxe), 1300);
        s.record(MAC, file("vmlinuz", 8_000_000), 2000);
        // The agent's own DHCP after the download: still the same boot.
        s.record(MAC, offer(DhcpClient::Plain), 4000);
        let v = s.view(MAC, 4500).unwrap();
        assert_eq!(v.stuck.as_deref(), Some("stuck after boot_file"));
        assert_eq!((v.last_stage.as_deref(), v.since_ms, v.announced), (Some("boot_file"), 500, false));
        s.record(MAC, hello(true), 5000);
        s.record(MAC, hello(false), 5100);
        s.record(MAC, Event::Login { person: Some("ann".into()), how: "login".into() }, 6000);
        s.record(MAC, Event::DesktopShown, 7000);
        s.record(MAC, Event::DesktopShown, 7100);
        assert_eq!(
            names(&s),
            ["dhcp_offered", "boot_file", "dhcp_offered", "boot_file", "dhcp_offered", "agent_hello", "login", "desktop_shown"]
        );
        let v = s.view(MAC, 8000).unwrap();
        assert_eq!((v.stuck, v.current[7].ms, v.current[0].time.as_str()), (None, 6000, "1970-01-01T00:00:01.000Z"));
        assert_eq!(v.current[0].details["acked"], true);
        assert_eq!(v.current[1].details["bytes"], 70_000);
        assert_eq!(s.mac_of(Ipv4Addr::new(10, 0, 0, 100)), Some(MAC));
        // The ROM after a completed boot: a new report.
        s.record(MAC, offer(DhcpClient::Pxe), 20_000);
        let v = s.view(MAC, 20_000).unwrap();
        assert_eq!((v.current.len(), v.earlier.len()), (1, 1));
        assert_eq!(v.earlier[0].last_stage.as_deref(), Some("desktop_shown"));
    }

    #[test]
    fn a_reset_during_the_download_and_a_hello_without_dhcp_start_new_boots() {
        let mut s = Stages::default();
        s.record(MAC, offer(DhcpClient::Ipxe), 0);
        // Retransmitted DISCOVERs before any file: one boot.
        s.record(MAC, offer(DhcpClient::Ipxe), 10);
        s.record(MAC, file("vmlinuz", 1), 20);
        s.record(MAC, offer(DhcpClient::Ipxe), 30);
        assert_eq!(s.get(MAC).unwrap().boots.len(), 2);
        s.record(MAC, hello(true), 40);
        s.record(MAC, hello(true), 50);
        assert_eq!(s.get(MAC).unwrap().boots.len(), 3);
        assert_eq!(names(&s), ["agent_hello"]);
    }

    #[test]
    fn nfs_reads_add_up_on_the_mount_of_the_current_boot() {
        let mut s = Stages::default();
        // Reads from a PC with no mount (or no report at all) make nothing up.
        assert!(s.record(MAC, Event::NfsRead { bytes: 5 }, 10).is_empty());
        s.record(MAC, file("vmlinuz", 100), 100);
        assert!(s.record(MAC, Event::NfsRead { bytes: 5 }, 110).is_empty());
        let mount = Event::File { name: "mount /client".into(), protocol: Protocol::Nfs, bytes: None, ms: 0, error: None };
        s.record(MAC, mount, 1000);
        assert_eq!(s.record(MAC, Event::NfsRead { bytes: 4096 }, 1500), vec![MAC.to_string()]);
        s.record(MAC, Event::NfsRead { bytes: 1 << 20 }, 3000);
        let v = s.view(MAC, 3000).unwrap();
        assert_eq!(v.current.len(), 2, "{v:?}");
        let d = &v.current[1].details;
        assert_eq!((d["bytes"].clone(), d["ms"].clone()), ((4096 + (1u64 << 20)).into(), 2000.into()), "{d:?}");
    }

    #[test]
    fn failed_files_say_why_and_files_per_boot_are_capped() {
        let mut s = Stages::new(Caps { files_per_boot: 3, ..Caps::default() });
        s.record(MAC, Event::File { name: "x".into(), protocol: Protocol::Http, bytes: Some(10), ms: 1, error: Some("closed".into()) }, 0);
        for i in 0..10 {
            s.record(MAC, file("y", i), i);
        }
        let v = s.view(MAC, 0).unwrap();
        assert_eq!((v.current.len(), v.dropped), (3, 8));
        assert_eq!((v.current[0].details["complete"].clone(), v.current[0].details["error"].clone()), (false.into(), "closed".into()));
    }

    #[test]
    fn a_flood_of_made_up_macs_stays_bounded_and_spares_announced_pcs() {
        let caps = Caps { unannounced: 8, macs: 20, boots_per_mac: 2, ..Caps::default() };
        let mut s = Stages::new(caps);
        s.record(MAC, hello(true), 0);
        for i in 0..1000u32 {
            let m = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
            s.record(&m, offer(DhcpClient::Plain), 1 + u64::from(i));
            s.record(&m, file("f", 1), 1 + u64::from(i));
            s.record(&m, offer(DhcpClient::Plain), 1 + u64::from(i));
            s.record(&m, file("f", 1), 1 + u64::from(i));
            s.record(&m, offer(DhcpClient::Plain), 1 + u64::from(i));
        }
        assert_eq!(s.macs().count(), 9);
        assert!(s.get(MAC).is_some(), "the announced PC was dropped");
        // The newest are kept, each with its last boots only.
        assert_eq!(s.get("02:00:00:00:03:e7").unwrap().boots.len(), 2);
        assert!(s.get("02:00:00:00:00:00").is_none());
        // Addresses of dropped PCs go with them.
        assert!(s.addresses.len() <= 9);
    }

    #[test]
    fn wall_clock_text() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_601_599_999), "2026-12-06T23:59:59.999Z");
    }
}
