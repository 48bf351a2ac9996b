//! One QEMU process per VM: its command line, its launch as a daemon that outlives
//! `server-host`, and checks on its PID.

use std::path::{Path, PathBuf};
use std::process::Command;

use proto::host::Accel;

use crate::error::{Error, Result};
use crate::images::Template;

/// Files of a VM inside its folder.
pub(crate) struct VmFiles {
    pub dir: PathBuf,
}

impl VmFiles {
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn vnc(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
}

pub(crate) enum Vnc {
    Unix(PathBuf),
    /// Host-local address and display number (port - 5900).
    Tcp(String, u16),
    /// Address, display number and QEMU's x509 credentials folder (see [`vnc_tls_dir`]): VNC
    /// only inside TLS (VeNCrypt X509), and only for clients with a certificate of the CA.
    Tls(String, u16, PathBuf),
}

/// The id of the TLS credentials object on QEMU's command line.
const VNC_TLS_ID: &str = "vnc-tls";

/// Makes `dir` QEMU's x509 credentials folder from the host's certificate files: the names
/// QEMU looks for (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`), the folder and the key
/// owner-only. Written at every start, so that a host enrolled again serves its new
/// certificate to the VMs started after.
pub(crate) fn vnc_tls_dir(dir: &Path, tls: &crate::config::TlsFiles) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    crate::images::private_dir(dir)?;
    for (from, to, mode) in
        [(&tls.ca, "ca-cert.pem", 0o644), (&tls.cert, "server-cert.pem", 0o644), (&tls.key, "server-key.pem", 0o600)]
    {
        let data = std::fs::read(from)?;
        let path = dir.join(to);
        let tmp = dir.join(format!(".{to}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(&data)?;
        }
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

pub(crate) struct Launch<'a> {
    pub qemu: &'a Path,
    pub accel: Accel,
    pub name: &'a str,
    pub user: &'a str,
    pub files: &'a VmFiles,
    pub template: &'a Template,
    pub os_disk: &'a Path,
    pub data_disk: Option<&'a Path>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub vnc: &'a Vnc,
}

/// QEMU option values are comma-separated; a comma inside a path is written twice.
pub(crate) fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

pub(crate) fn args(l: &Launch) -> Vec<String> {
    let f = l.files;
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("guest={},process=qemu-{}", l.name, l.name),
        "-daemonize".into(),
        "-pidfile".into(),
        f.pidfile().to_string_lossy().into(),
        "-accel".into(),
        match l.accel {
            Accel::Kvm => "kvm".into(),
            Accel::Tcg => "tcg".into(),
        },
        "-m".into(),
        l.memory_mib.to_string(),
        "-smp".into(),
        l.vcpus.to_string(),
        "-nic".into(),
        "none".into(),
        "-display".into(),
        "none".into(),
        "-vga".into(),
        "std".into(),
        "-no-user-config".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", opt_path(&f.qmp())),
        "-vnc".into(),
        match l.vnc {
            Vnc::Unix(p) => format!("unix:{},password=on", opt_path(p)),
            Vnc::Tcp(host, display) => format!("{host}:{display},password=on"),
            Vnc::Tls(host, display, _) => format!("{host}:{display},tls-creds={VNC_TLS_ID},password=on"),
        },
        "-chardev".into(),
        format!(
            "socket,id=console,path={},server=on,wait=off,logfile={}",
            opt_path(&f.console()),
            opt_path(&f.dir.join("console.log"))
        ),
        "-serial".into(),
        "chardev:console".into(),
        "-drive".into(),
        format!("file={},if=none,id=os,format=qcow2,discard=unmap", opt_path(l.os_disk)),
        "-device".into(),
        "virtio-blk-pci,drive=os,id=os-dev".into(),
        "-device".into(),
        "virtio-balloon-pci,id=balloon0".into(),
    ];
    if let Vnc::Tls(_, _, dir) = l.vnc {
        // verify-peer: a client without a certificate of the CA gets no VNC at all.
        a.push("-object".into());
        a.push(format!("tls-creds-x509,id={VNC_TLS_ID},dir={},endpoint=server,verify-peer=on", opt_path(dir)));
    }
    if let Some(d) = l.data_disk {
        a.extend(data_disk_args(d).map(String::from));
    }
    if let Some(k) = &l.template.kernel {
        a.push("-kernel".into());
        a.push(k.to_string_lossy().into());
        if let Some(i) = &l.template.initrd {
            a.push("-initrd".into());
            a.push(i.to_string_lossy().into());
        }
        a.push("-append".into());
        // Under TCG on a busy machine the kernel's check that the timer interrupt arrives
        // through the IO-APIC can time out, and the guest panics at boot ("IO-APIC + timer
        // doesn't work"). The check guards against broken chipsets, which QEMU's is not.
        let timer = match l.accel {
            Accel::Tcg => " no_timer_check",
            Accel::Kvm => "",
        };
        a.push(format!("{}{timer} tc.user={} tc.vm={}", l.template.cmdline, l.user, l.name).trim().to_owned());
    }
    a
}

fn data_disk_args(d: &Path) -> [String; 4] {
    [
        "-drive".into(),
        format!("file={},if=none,id=data,format=raw", opt_path(d)),
        "-device".into(),
        "virtio-blk-pci,drive=data,id=data-dev".into(),
    ]
}

/// The monitor commands that hot-plug the data disk into a running VM.
pub(crate) fn data_disk_hotplug(d: &Path) -> [String; 2] {
    [
        format!("drive_add 0 file={},if=none,id=data,format=raw", opt_path(d)),
        "device_add virtio-blk-pci,drive=data,id=data-dev".into(),
    ]
}

/// Starts QEMU as a daemon in its own session (so it outlives us) and returns its PID.
pub(crate) fn spawn(l: &Launch) -> Result<u32> {
    let out = Command::new(l.qemu)
        .args(args(l))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Internal(format!("cannot run {}: {e}", l.qemu.display())))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "QEMU for VM {} failed to start ({}): {}",
            l.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let pidfile = l.files.pidfile();
    let text = std::fs::read_to_string(&pidfile)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", pidfile.display())))?;
    text.trim().parse().map_err(|_| Error::Internal(format!("{}: not a PID: {text:?}", pidfile.display())))
}

/// True when `pid` is a live (not zombie) QEMU whose command line names `marker` (the VM's
/// QMP socket), so that a recycled PID is never taken for our VM.
pub(crate) fn alive(pid: u32, marker: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let marker = opt_path(marker);
    cmd.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&marker))
}

pub(crate) fn kill(pid: u32) {
    // SAFETY: kill(2) has no memory effects; the PID was checked with `alive` by the caller.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Live processes whose command line names `marker` (a VM's QMP socket): its QEMU, whether
/// daemonized or still starting, found without trusting a pidfile or a stored PID.
pub(crate) fn pids_naming(marker: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && alive(*pid, marker))
        .collect()
}

/// Kills every process that names `marker` until none is left (at most five seconds); true
/// when they are all gone.
pub(crate) async fn kill_all(marker: &Path) -> bool {
    for _ in 0..50 {
        let pids = pids_naming(marker);
        if pids.is_empty() {
            return true;
        }
        for pid in pids {
            log::warn!("killing PID {pid}, a QEMU of {}", marker.display());
            kill(pid);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    pids_naming(marker).is_empty()
}

/// A free host-local VNC display number (TCP port 5900 + n).
pub(crate) fn free_vnc_display(host: &str) -> Result<u16> {
    for d in 1..100u16 {
        if std::net::TcpListener::bind((host, 5900 + d)).is_ok() {
            return Ok(d);
        }
    }
    Err(Error::Conflict(format!("no free VNC port on {host} between 5901 and 5999")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_binds_vnc_privately_and_escapes_commas() {
        let files = VmFiles { dir: "/s/vms/a,b".into() };
        let t = Template {
            name: "t".into(),
            disk: "/t/disk.qcow2".into(),
            kernel: Some("/t/vmlinuz".into()),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            description: String::new(),
        };
        let vnc = Vnc::Unix(files.vnc());
        let l = Launch {
            qemu: Path::new("qemu"),
            accel: Accel::Tcg,
            name: "a",
            user: "u",
            files: &files,
            template: &t,
            os_disk: Path::new("/s/os.qcow2"),
            data_disk: None,
            memory_mib: 128,
            vcpus: 1,
            vnc: &vnc,
        };
        let a = args(&l);
        assert!(a.contains(&"unix:/s/vms/a,,b/vnc.sock,password=on".to_string()), "{a:?}");
        assert!(a.contains(&"console=ttyS0 no_timer_check tc.user=u tc.vm=a".to_string()));
        assert!(!a.iter().any(|x| x.contains("id=data")), "no data disk asked for");
        assert!(a.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"));
        assert!(!a.iter().any(|x| x.contains("tls-creds")), "{a:?}");

        let vnc = Vnc::Tls("10.0.0.11".into(), 3, "/s/vnc,tls".into());
        let a = args(&Launch { vnc: &vnc, ..l });
        assert!(a.contains(&"10.0.0.11:3,tls-creds=vnc-tls,password=on".to_string()), "{a:?}");
        assert!(
            a.windows(2).any(|w| w[0] == "-object"
                && w[1] == "tls-creds-x509,id=vnc-tls,dir=/s/vnc,,tls,endpoint=server,verify-peer=on"),
            "{a:?}"
        );
    }

    #[test]
    fn our_own_pid_is_not_a_vm() {
        assert!(!alive(std::process::id(), Path::new("/nowhere/qmp.sock")));
        assert!(!alive(u32::MAX - 1, Path::new("/x")));
    }
}
