//! The HTTP API between the broker and a virtualization host's `server-host` (version 1).
//!
//! Every request carries `Authorization: Bearer <token>`. Bodies are JSON; errors are
//! [`ApiError`] with a 4xx/5xx status. Paths are under [`API_PREFIX`]:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /host` | | [`HostFacts`] |
//! | `GET /stats` | | [`HostStats`] (counters and gauges from `/proc`) |
//! | `GET /templates` | | `[`[`TemplateInfo`]`]` |
//! | `GET /vms` | | `[`[`VmInfo`]`]` |
//! | `POST /vms` | [`CreateVm`] | 201 [`CreatedVm`] |
//! | `GET /vms/{name}` | | [`VmInfo`] |
//! | `POST /vms/{name}/stop` | [`StopVm`] | [`Event`] (how it ended) |
//! | `POST /vms/{name}/balloon` | [`Balloon`] | [`VmInfo`] |
//! | `POST /vms/{name}/assign` | [`AssignVm`] | [`VmInfo`] |
//! | `POST /vms/{name}/vnc-password` | [`VncPassword`] | 204 |
//! | `GET /vms/{name}/screen` | | PPM image (`?format=png` for PNG) |
//! | `GET /users/{user}` | | [`UserInfo`] |
//! | `POST /users/{user}/reset`, `/backup`, `/restore` | [`Restore`] for restore | [`Event`] |
//! | `GET /history?user=&vm=&limit=` | | `[`[`Event`]`]` |
//! | `GET /events?since=ID` | | server-sent events, `data:` is an [`Event`] |

use serde::{Deserialize, Serialize};

/// Every path of the API starts with this.
pub const API_PREFIX: &str = "/v1";

/// The largest VNC password that the RFB "VNC authentication" scheme can carry.
pub const VNC_PASSWORD_MAX: usize = 8;

/// How the host runs guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization, probed with a short timed boot.
    Kvm,
    /// QEMU's software emulator (slow, always there).
    Tcg,
}

/// `GET /host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub cpus: u32,
    pub memory_total_mib: u64,
    /// Memory the kernel says is available right now (MemAvailable).
    pub memory_free_mib: u64,
    /// Memory promised to running VMs (their boot size).
    pub memory_committed_mib: u64,
    /// What a new VM may still ask for: total minus the host's reserve minus committed.
    pub memory_allocatable_mib: u64,
    /// `None` while the KVM probe still runs.
    pub accel: Option<Accel>,
    /// Why the accelerator is what it is (probe result).
    pub accel_reason: String,
    /// Every VM gets a virtio-balloon device; guests with the driver can be resized live.
    pub balloon: bool,
    pub vms: Vec<VmInfo>,
}

/// `GET /stats`: the host's load as `/proc` shows it now. CPU time and network bytes are
/// counters since the host's boot: whoever samples them takes the rate between two readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    pub cpus: u32,
    /// Clock ticks of every CPU in every state (`/proc/stat`'s `cpu` line).
    pub cpu_ticks: u64,
    /// The part of `cpu_ticks` spent idle or waiting for I/O.
    pub cpu_idle_ticks: u64,
    pub memory_total_bytes: u64,
    /// MemAvailable.
    pub memory_available_bytes: u64,
    /// Memory promised to running VMs (their boot size).
    pub memory_committed_bytes: u64,
    /// The 1-, 5- and 15-minute load averages.
    pub load: [f64; 3],
    pub vms: u32,
    /// Bytes received and sent on every interface but loopback.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// `GET /templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    pub description: String,
    /// Bytes the read-only image takes on disk.
    pub size: u64,
}

/// `POST /vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Unique among the host's VMs: `[a-z0-9][a-z0-9_-]{0,62}`.
    pub name: String,
    pub template: String,
    pub memory_mib: u64,
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Same character set as `name`.
    pub user: String,
    /// Persistent users keep their OS overlay and data disk; one-time users get fresh ones
    /// that are deleted when the VM ends.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// At most [`VNC_PASSWORD_MAX`] bytes; generated when absent.
    #[serde(default)]
    pub vnc_password: Option<String>,
    /// A pre-booted VM that belongs to nobody yet: `user` must be empty, it gets a throwaway
    /// OS overlay and no data disk until [`AssignVm`] gives it to a user.
    #[serde(default)]
    pub pool: bool,
}

/// `POST /vms/{name}/assign`: gives a pool VM to a user. The user's data disk is hot-plugged
/// (or waits, like at a handoff, until another VM of the user releases it), and the guest is
/// told its user by the line `tc-assign USER` on its first serial port (a guest learns its
/// user at boot from `tc.user=` on its kernel command line, which a running VM cannot change).
/// The line is sent once the guest has printed `TC-READY` there, or after a minute. The host
/// answers once the VM is the user's, before the disk is attached and the guest told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignVm {
    /// Same character set as a VM name.
    pub user: String,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// Where the VM's VNC server listens (reachable by the broker only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VncAddress {
    /// A unix socket on the host.
    Unix(String),
    /// A host-local TCP address, `IP:PORT`.
    Tcp(String),
    /// A TCP address `IP:PORT` on the LAN whose VNC is inside TLS only (VeNCrypt X509None or
    /// X509Vnc): the host's certificate is made for that IP, and the client must show a
    /// certificate of the deployment's CA.
    Tls(String),
}

/// Life of a VM as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Recorded, QEMU being launched: not usable yet. A host that restarts finds such a VM
    /// unfinished (nobody got its VNC password) and ends it.
    Starting,
    Running,
    Stopping,
    Stopped,
    Crashed,
}

/// Whether the VM has the user's data disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataDisk {
    /// Attached (at boot or hot-plugged later).
    Attached,
    /// Another VM of the same user still holds it; it is hot-plugged here once released.
    Waiting,
    /// A pool VM that no user has yet.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub template: String,
    pub user: String,
    pub persistent: bool,
    pub memory_mib: u64,
    /// What the balloon reports the guest has now, when it can be asked.
    pub balloon_mib: Option<u64>,
    pub vcpus: u32,
    pub state: VmState,
    pub pid: u32,
    pub vnc: VncAddress,
    pub data_disk: DataDisk,
    /// True when the user's own OS overlay was busy and this VM got a throwaway one.
    pub os_overlay_temporary: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// `POST /vms` answer: the VM and its VNC password (told once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedVm {
    #[serde(flatten)]
    pub vm: VmInfo,
    pub vnc_password: String,
}

/// `POST /vms/{name}/stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopVm {
    /// Seconds the guest gets to power off after the ACPI power button before it is killed.
    /// 0 kills at once. Default 30.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

/// `POST /vms/{name}/balloon`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// New size, at most the VM's boot size.
    pub memory_mib: u64,
}

/// `POST /vms/{name}/vnc-password`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VncPassword {
    pub password: String,
}

/// `POST /users/{user}/restore`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    /// A backup id from [`UserInfo::backups`].
    pub backup: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: i64,
    pub at: u64,
    /// Bytes the backup takes on disk.
    pub size: u64,
}

/// `GET /users/{user}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: String,
    /// Bytes used on disk by the data disk, if the user has one.
    pub data_disk_size: Option<u64>,
    /// Template name and bytes used by each of the user's OS overlays.
    pub os_overlays: Vec<(String, u64)>,
    pub backups: Vec<BackupInfo>,
    /// VMs of this user that are running now.
    pub vms: Vec<String>,
}

/// What happened, recorded in the history and streamed on `/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    /// Ended by a stop request or by the guest itself powering off.
    Stopped,
    /// The QEMU process went away without the guest powering off.
    Crashed,
    Adopted,
    Ballooned,
    /// A pool VM was given to a user.
    Assigned,
    DataDiskAttached,
    Reset,
    Backup,
    Restore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing; pass the last one seen as `/events?since=`.
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    pub vm: Option<String>,
    pub user: Option<String>,
    /// Bytes involved (disk sizes for reset, backup, restore; memory for balloon).
    pub size: Option<u64>,
    pub detail: String,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Names of VMs, users and templates: short, safe in paths and on a kernel command line.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("vm-1_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Alice"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
