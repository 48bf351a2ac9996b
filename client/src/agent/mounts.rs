//! The file systems PID 1 needs before anything else, and the optional NFS root.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// (source, target, type, data): what a kernel without udev or systemd gives a normal system.
const EARLY: &[(&str, &str, &str, &str)] = &[
    ("proc", "/proc", "proc", ""),
    ("sysfs", "/sys", "sysfs", ""),
    ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
    ("devpts", "/dev/pts", "devpts", "gid=5,mode=620,ptmxmode=666"),
    // nosuid and nodev are mount flags, not tmpfs options (tmpfs refuses them as data).
    ("tmpfs", "/run", "tmpfs", "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
];

/// Where the NFS root is mounted; its programs run from there.
pub(crate) const NFS_MOUNTPOINT: &str = "/run/nfsroot";

/// Mounts proc, sysfs, devtmpfs, devpts, /run and /tmp. A mount that fails is reported, not
/// fatal: a PC without /dev/pts still reaches its desktop.
pub(crate) fn mount_early() -> Vec<String> {
    let mut problems = Vec::new();
    for (src, target, fstype, data) in EARLY {
        let flags = if *fstype == "tmpfs" { MsFlags::MS_NOSUID | MsFlags::MS_NODEV } else { MsFlags::MS_NOSUID };
        if let Err(e) = mount_one(src, target, fstype, data, flags) {
            problems.push(format!("mounting {fstype} on {target}: {e:#}"));
        }
    }
    problems
}

fn mount_one(src: &str, target: &str, fstype: &str, data: &str, flags: MsFlags) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    let data = (!data.is_empty()).then_some(data);
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already there (the kernel mounted devtmpfs itself, or a second start): fine.
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `SERVER:/EXPORT` from `tc.nfsroot`, split and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NfsRoot {
    pub server: Ipv4Addr,
    pub export: String,
}

impl NfsRoot {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let (server, export) = text
            .split_once(':')
            .with_context(|| format!("tc.nfsroot={text:?} is not SERVER:/EXPORT"))?;
        // The kernel NFS client wants the server's address in `addr=`; a name would need a
        // resolver in the initramfs, so only addresses are accepted.
        let server: Ipv4Addr = server
            .parse()
            .with_context(|| format!("tc.nfsroot={text:?}: {server:?} is not an IPv4 address"))?;
        if !export.starts_with('/') {
            bail!("tc.nfsroot={text:?}: the export {export:?} must be an absolute path");
        }
        Ok(NfsRoot { server, export: export.to_string() })
    }

    /// The `mount(2)` source and data for the kernel's NFSv3 client: read-only, no lock daemon
    /// (none runs here and nothing writes), NFS and MOUNT over TCP (the boot server offers
    /// both on TCP only; its portmapper tells the ports).
    pub(crate) fn mount_args(&self) -> (String, String) {
        (format!("{}:{}", self.server, self.export), format!("vers=3,proto=tcp,mountproto=tcp,nolock,addr={},ro", self.server))
    }

    /// Mounts it read-only at [`NFS_MOUNTPOINT`]. Its programs run chrooted into it (see the
    /// viewer module), so nothing of it is linked into the image's own folders.
    pub(crate) fn mount(&self) -> anyhow::Result<()> {
        let (source, data) = self.mount_args();
        std::fs::create_dir_all(NFS_MOUNTPOINT).with_context(|| format!("creating {NFS_MOUNTPOINT}"))?;
        mount(Some(source.as_str()), NFS_MOUNTPOINT, Some("nfs"), MsFlags::MS_RDONLY, Some(data.as_str()))
            .with_context(|| format!("mounting NFS root {source} ({data}) on {NFS_MOUNTPOINT}"))?;
        Ok(())
    }
}

/// Before a reboot: network file systems first, so the server sees a clean unmount.
pub(crate) fn unmount_all() {
    for target in [NFS_MOUNTPOINT, "/tmp", "/run"] {
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfsroot_parses_and_builds_kernel_options() {
        let n = NfsRoot::parse("10.0.0.1:/srv/root").unwrap();
        assert_eq!(n.server, Ipv4Addr::new(10, 0, 0, 1));
        let (src, data) = n.mount_args();
        assert_eq!(src, "10.0.0.1:/srv/root");
        assert_eq!(data, "vers=3,proto=tcp,mountproto=tcp,nolock,addr=10.0.0.1,ro");
    }

    #[test]
    fn nfsroot_rejects_names_and_relative_exports() {
        assert!(NfsRoot::parse("server:/x").is_err());
        assert!(NfsRoot::parse("10.0.0.1:x").is_err());
        assert!(NfsRoot::parse("10.0.0.1").is_err());
    }
}
