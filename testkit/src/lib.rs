//! Test support shared by the crates' integration tests: the lab (network namespaces made by
//! `scripts/lab`), child processes that die with the test, QEMU guests under KVM or TCG, and the
//! boot assets that `scripts/setup` caches.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod ldap;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives in the repo").to_path_buf()
}

/// Where `scripts/setup` caches downloads (`TC_CACHE` overrides `<repo>/.cache`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TC_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache"))
}

/// Debian's kernel, fetched by `scripts/setup`.
pub fn kernel() -> anyhow::Result<PathBuf> {
    let k = cache_dir().join("kernel/vmlinuz");
    if !k.exists() {
        bail!("{} is missing: run scripts/setup first", k.display());
    }
    Ok(k)
}

/// The cached kernel's version, e.g. `6.1.0-56-amd64`.
pub fn kernel_version() -> anyhow::Result<String> {
    let p = cache_dir().join("kernel/version");
    Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string())
}

/// The cached kernel's module tree (`lib/modules/<version>`).
pub fn modules_dir() -> anyhow::Result<PathBuf> {
    Ok(cache_dir().join("kernel/root/lib/modules").join(kernel_version()?))
}

/// A child process killed (by its PID) and reaped when the guard drops, so a failing test
/// leaves nothing running.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        Ok(KillOnDrop(child))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM and waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        self.0.wait().ok()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A lab made by `scripts/lab up` and removed by `scripts/lab down` when dropped: namespace
/// `name` with bridge `br0` at `<subnet>.1/24`, taps `tap0..`, and hosts `name-h1..` whose
/// `eth0` sits on the bridge.
#[derive(Debug)]
pub struct Lab {
    pub name: String,
    pub subnet: String,
}

static LAB_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Lab {
    pub fn new(taps: u32, hosts: u32) -> anyhow::Result<Self> {
        Self::with_subnet(taps, hosts, "10.77.0")
    }

    pub fn with_subnet(taps: u32, hosts: u32, subnet: &str) -> anyhow::Result<Self> {
        let seq = LAB_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("lab-{}-{seq}", std::process::id());
        let st = Command::new(repo_root().join("scripts/lab"))
            .args(["up", &name, "--taps", &taps.to_string(), "--hosts", &hosts.to_string()])
            .args(["--subnet", subnet])
            .status()
            .context("running scripts/lab up")?;
        if !st.success() {
            bail!("scripts/lab up {name} failed: {st}");
        }
        Ok(Lab { name, subnet: subnet.to_string() })
    }

    /// The bridge's address, where the boot server listens.
    pub fn server_addr(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A command that runs inside the lab (the bridge side).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command that runs inside host `k` (1-based).
    pub fn host_cmd(&self, k: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-h{k}", self.name)]).arg(program);
        c
    }

    /// Runs `f` on a thread inside host `k`'s network namespace: sockets it makes belong to
    /// that host, and stay usable after the thread ends.
    pub fn on_host<T: Send + 'static>(&self, k: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(format!("/run/netns/{}-h{k}", self.name), f)
    }

    /// The MAC address of host `k`'s `eth0`.
    pub fn host_mac(&self, k: u32) -> anyhow::Result<String> {
        let out = self.host_cmd(k, "cat").arg("/sys/class/net/eth0/address").stdin(Stdio::null()).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Gives host `k`'s `eth0` the address `ip` (/24).
    pub fn host_address(&self, k: u32, ip: &str) -> anyhow::Result<()> {
        let out = self.host_cmd(k, "ip").args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("ip addr add {ip} in host {k}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Runs `f` on a thread inside the lab's own namespace (the bridge side, where
    /// [`Lab::cmd`] runs its programs): its sockets reach their loopback listeners.
    pub fn in_lab<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(format!("/run/netns/{}", self.name), f)
    }
}

fn in_netns<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("opening a lab namespace");
        // SAFETY: setns on a namespace fd we hold; it changes this thread only.
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in a lab namespace")
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/lab")).args(["down", &self.name]).status();
    }
}

/// Polls `path` until it contains `needle`; returns the file's text.
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            text = String::from_utf8_lossy(&buf).into_owned();
            if text.contains(needle) {
                return Ok(text);
            }
        }
        if Instant::now() >= deadline {
            let tail: String = text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("{needle:?} did not appear in {} within {timeout:?}; last output:\n{tail}", path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kvm` when KVM boots a kernel within a short deadline, `tcg` otherwise. On some machines
/// /dev/kvm opens and then hangs the guest, so only a timed boot tells. Probed once per process.
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| if probe_kvm().unwrap_or(false) { "kvm" } else { "tcg" })
}

fn probe_kvm() -> anyhow::Result<bool> {
    if std::env::var("TC_ACCEL").as_deref() == Ok("tcg") || !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("serial.log");
    let mut guest = KillOnDrop::spawn(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "kvm", "-m", "128", "-display", "none", "-nic", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(kernel()?)
            .args(["-append", "console=ttyS0 panic=-1"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    // With working KVM the kernel prints its banner in well under a second.
    let ok = wait_for_text(&log, "Linux version", Duration::from_secs(8)).is_ok();
    guest.stop(Duration::from_secs(1));
    log::info!("kvm probe: {}", if ok { "works" } else { "hangs or fails, using tcg" });
    Ok(ok)
}

/// Arguments that select the accelerator found by [`accel`].
pub fn accel_args() -> Vec<String> {
    match accel() {
        "kvm" => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
        _ => vec!["-accel".into(), "tcg".into()],
    }
}

/// Builds a tiny initramfs (newc cpio, uncompressed) of Debian's static busybox with `init`
/// as its `/init` script. For tests that need a guest to run a few shell commands.
pub fn busybox_initramfs(out: &Path, init: &str) -> anyhow::Result<()> {
    busybox_initramfs_with(out, init, &[])
}

/// Like [`busybox_initramfs`], plus `extra` files (path inside the image, contents), executable,
/// with their parent folders. Written with the project's own newc writer.
pub fn busybox_initramfs_with(out: &Path, init: &str, extra: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    use initramfs::newc::{write_archive, Entry, S_IFDIR, S_IFLNK, S_IFREG};
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox missing: run scripts/setup (busybox-static)")?;
    let mut dirs: std::collections::BTreeSet<String> =
        ["bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "run"].iter().map(|d| d.to_string()).collect();
    for (path, _) in extra {
        let mut p = Path::new(path.trim_start_matches('/'));
        while let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(parent.to_string_lossy().into_owned());
            p = parent;
        }
    }
    let mut entries: Vec<Entry> = dirs.iter().map(|d| Entry::new(d.as_str(), S_IFDIR | 0o755, Vec::new())).collect();
    entries.push(Entry::new("bin/busybox", S_IFREG | 0o755, busybox));
    for applet in [
        "sh", "mount", "echo", "cat", "ip", "udhcpc", "poweroff", "sleep", "ls", "wget", "reboot", "insmod",
    ] {
        entries.push(Entry::new(format!("bin/{applet}"), S_IFLNK | 0o777, b"busybox".to_vec()));
    }
    entries.push(Entry::new("init", S_IFREG | 0o755, init.as_bytes().to_vec()));
    for (path, data) in extra {
        entries.push(Entry::new(path.trim_start_matches('/').to_string(), S_IFREG | 0o755, data.clone()));
    }
    // The kernel links regular files that share an inode number; give each its own.
    for (i, e) in entries.iter_mut().enumerate() {
        e.ino = i as u32 + 1;
    }
    std::fs::write(out, write_archive(&entries, 512)).with_context(|| format!("writing {}", out.display()))
}
/// A free TCP/UDP port on loopback (bound, then released; good enough for tests).
pub fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a loopback port");
    let p = s.local_addr().expect("local addr").port();
    drop(s);
    p
}

/// The lines of a `server-host` config for tests and benchmarks: its certificates in `tls_dir`
/// (see [`host_pki`]), API on `listen`, state in `state`, templates from `templates`, this
/// machine's accelerator, small data disks and no memory held back (the guests are scaled
/// down).
pub fn server_host_config(tls_dir: &Path, listen: &str, state: &Path, templates: &Path) -> String {
    format!(
        "tls_dir = \"{}\"\nlisten = \"{listen}\"\nstate_dir = \"{}\"\ntemplates_dir = \"{}\"\n\
         accel = \"{}\"\ndata_disk_mib = 16\nreserved_memory_mib = 0\n",
        tls_dir.display(),
        state.display(),
        templates.display(),
        accel(),
    )
}

/// The `[desktops]` tables of a boot server config for lab tests: two memory levels (256 and
/// 128 MiB) of the cached `desktop` template, on one host `h1` at `url` with `memory_mib`.
pub fn desktops_toml(url: &str, memory_mib: u64) -> String {
    format!(
        "[desktops]\nlevels_mib = [256, 128]\ntemplate = \"desktop\"\nhealth_interval_secs = 1\n\n\
         [[desktops.hosts]]\nname = \"h1\"\nurl = \"{url}\"\nmemory_mib = {memory_mib}\n"
    )
}

/// The certificates of a `server-host` and of the broker that calls it, all from the CA of a
/// boot server's state dir.
#[derive(Debug, Clone)]
pub struct HostPki {
    /// The boot server's state dir, with the CA in `ca/`.
    pub state: PathBuf,
    /// What `bootserver host enrol` made: the host's `tls_dir`.
    pub tls_dir: PathBuf,
    pub ca: PathBuf,
    /// The broker's client certificate and key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl HostPki {
    /// curl's arguments for calling the host as the broker does.
    pub fn curl_args(&self) -> Vec<std::ffi::OsString> {
        let mut a = Vec::new();
        for (flag, path) in [("--cacert", &self.ca), ("--cert", &self.client_cert), ("--key", &self.client_key)] {
            a.push(flag.into());
            a.push(path.clone().into_os_string());
        }
        a
    }
}

/// `bootserver ca init` (unless `state` has a CA), `bootserver host enrol NAME --ip ...` and
/// `bootserver ca issue-client`, with the `bootserver` binary at `bootserver`.
pub fn host_pki(bootserver: &Path, state: &Path, name: &str, ips: &[&str]) -> anyhow::Result<HostPki> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bootserver)
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("running {} {args:?}", bootserver.display()))?;
        if !out.status.success() {
            bail!("bootserver {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    if !state.join("ca/ca.pem").exists() {
        run(&["ca", "init"])?;
    }
    let mut enrol = vec!["host", "enrol", name, "--force"];
    for ip in ips {
        enrol.extend(["--ip", ip]);
    }
    let tls_dir = PathBuf::from(run(&enrol)?);
    let client_cert = PathBuf::from(run(&["ca", "issue-client"])?);
    Ok(HostPki {
        state: state.to_path_buf(),
        ca: tls_dir.join("ca.pem"),
        tls_dir,
        client_key: client_cert.with_file_name("client.key"),
        client_cert,
    })
}

/// PIDs of the QEMU processes of a `server-host` state folder that are still alive: the VM
/// folders' pidfiles, kept only where the process's command line names that folder (a stale
/// pidfile may name someone else's process by now).
pub fn server_host_qemu_pids(state: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(state.join("vms")) else { return out };
    for e in rd.flatten() {
        let Ok(t) = std::fs::read_to_string(e.path().join("qemu.pid")) else { continue };
        let Ok(pid) = t.trim().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&*e.path().to_string_lossy()) {
            out.push(pid);
        }
    }
    out
}

/// `server-host serve` (the binary `bin`) on loopback with its config and state in `dir` and
/// its log in `dir/server-host.log`, enrolled as host `h1` by the CA of the boot server state
/// dir `dir/bs-state` (made by the `bootserver` binary beside `bin`). QEMU daemonizes, so
/// killing server-host leaves its guests running: dropping this kills server-host and every
/// QEMU of its state folder.
#[derive(Debug)]
pub struct ServerHost {
    proc: KillOnDrop,
    pub state: PathBuf,
    pub port: u16,
    pub pki: HostPki,
}

impl ServerHost {
    pub fn start(bin: &Path, dir: &Path, templates: &Path) -> anyhow::Result<ServerHost> {
        let port = free_port();
        let state = dir.join("state");
        let pki = host_pki(&bin.with_file_name("bootserver"), &dir.join("bs-state"), "h1", &["127.0.0.1"])?;
        let cfg = dir.join("server-host.toml");
        std::fs::write(&cfg, server_host_config(&pki.tls_dir, &format!("127.0.0.1:{port}"), &state, templates))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let log = std::fs::File::create(dir.join("server-host.log"))?;
        let proc = KillOnDrop::spawn(
            Command::new(bin)
                .args(["serve", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "info")
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null()),
        )?;
        Ok(ServerHost { proc, state, port, pki })
    }

    /// The API's base URL, e.g. `https://127.0.0.1:8470`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }
}

impl Drop for ServerHost {
    fn drop(&mut self) {
        for pid in server_host_qemu_pids(&self.state) {
            // SAFETY: kill(2) on a QEMU of this server-host's state folder (checked above).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Kills the QEMUs of a `server-host` state folder when dropped, pass or fail (QEMU
/// daemonizes, so killing server-host leaves them).
#[derive(Debug)]
pub struct HostVms(pub PathBuf);

impl Drop for HostVms {
    fn drop(&mut self) {
        for pid in server_host_qemu_pids(&self.0) {
            // SAFETY: kill(2) on a QEMU of this server-host's state folder (checked there).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// `server-host serve` (the binary `bin`) in the lab's namespace on 127.0.0.1:8470, enrolled
/// with `pki`, its config, state (`d/server-host`) and log (`d/server-host.log`) in `d`. Drop
/// the [`KillOnDrop`] before the [`HostVms`] so that no QEMU starts after the sweep.
pub fn lab_server_host(lab: &Lab, bin: &Path, d: &Path, pki: &HostPki, templates: &Path) -> anyhow::Result<(HostVms, KillOnDrop)> {
    let vms = HostVms(d.join("server-host"));
    let cfg = d.join("server-host.toml");
    std::fs::write(&cfg, server_host_config(&pki.tls_dir, "127.0.0.1:8470", &vms.0, templates))
        .with_context(|| format!("writing {}", cfg.display()))?;
    let log = d.join("server-host.log");
    let host = KillOnDrop::spawn(
        lab.cmd(bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?),
    )?;
    Ok((vms, host))
}

/// A PC's agent connection from lab host `k` to the broker at `broker`, over TLS that trusts
/// `ca` alone, with the handshake done: what the agent of a PC in that host would open.
pub fn agent_tls(
    lab: &Lab,
    k: u32,
    broker: std::net::SocketAddr,
    ca: &Path,
) -> anyhow::Result<proto::tls::rustls::StreamOwned<proto::tls::rustls::ClientConnection, std::net::TcpStream>> {
    let ca = ca.to_path_buf();
    lab.on_host(k, move || {
        let tls = proto::tls::client_config(&ca).with_context(|| format!("the agent's TLS config from {}", ca.display()))?;
        let tcp = std::net::TcpStream::connect_timeout(&broker, Duration::from_secs(5)).with_context(|| format!("connecting to {broker}"))?;
        let conn = proto::tls::rustls::ClientConnection::new(tls, proto::tls::server_name(broker.ip()))?;
        let mut link = proto::tls::rustls::StreamOwned::new(conn, tcp);
        while link.conn.is_handshaking() {
            link.conn.complete_io(&mut link.sock).with_context(|| format!("TLS handshake with the broker at {broker}"))?;
        }
        Ok(link)
    })
}

/// The agent's link to the broker: TLS, or the plain TCP of an old agent.
pub trait AgentLink: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> AgentLink for T {}

/// A PC played by a thread: it answers pings, sends what the test gives it and passes on
/// every other message of the broker.
pub struct Agent {
    out: std::sync::mpsc::Sender<proto::agent::AgentMessage>,
    inbox: std::sync::mpsc::Receiver<Option<proto::agent::BrokerMessage>>,
}

impl Agent {
    /// Connects from lab host `k` over TLS (trusting `ca`) and sends the hello of `mac`.
    pub fn start(lab: &Lab, k: u32, broker: std::net::SocketAddr, ca: &Path, mac: &str, ip: &str) -> Agent {
        let hello = agent_hello(mac, ip);
        let link = agent_tls(lab, k, broker, ca).unwrap();
        link.sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Self::run(Box::new(link), hello)
    }

    /// Connects from lab host `k` over plain TCP, as an agent from before TLS would.
    pub fn start_plain(lab: &Lab, k: u32, broker: std::net::SocketAddr, mac: &str, ip: &str) -> Agent {
        let tcp = lab.on_host(k, move || std::net::TcpStream::connect_timeout(&broker, Duration::from_secs(5)).unwrap());
        tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Self::run(Box::new(tcp), agent_hello(mac, ip))
    }

    /// Sends the hello on `link`, then answers pings and passes the rest on, in a thread.
    fn run(mut link: Box<dyn AgentLink>, hello: proto::agent::Hello) -> Agent {
        let (out, rx_out) = std::sync::mpsc::channel::<proto::agent::AgentMessage>();
        let (tx_in, inbox) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut dec = proto::agent::Decoder::<proto::agent::BrokerMessage>::new();
            let mut buf = [0u8; 8192];
            let write = |link: &mut Box<dyn AgentLink>, m: &proto::agent::AgentMessage| {
                link.write_all(&proto::agent::encode(m).unwrap()).is_ok() && link.flush().is_ok()
            };
            if !write(&mut link, &proto::agent::AgentMessage::Hello(hello)) {
                return;
            }
            loop {
                loop {
                    match rx_out.try_recv() {
                        Ok(m) if !write(&mut link, &m) => return,
                        Ok(_) => {}
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        // The test dropped the agent: the PC goes away (its connection ends).
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    }
                }
                match link.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx_in.send(None);
                        return;
                    }
                    Ok(n) => {
                        for m in dec.feed(&buf[..n]) {
                            match m {
                                Ok(proto::agent::BrokerMessage::Ping { seq }) => {
                                    write(&mut link, &proto::agent::AgentMessage::Pong { seq });
                                }
                                Ok(m) => {
                                    if tx_in.send(Some(m)).is_err() {
                                        return;
                                    }
                                }
                                Err(e) => panic!("the broker sent a bad frame: {e}"),
                            }
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => {
                        let _ = tx_in.send(None);
                        return;
                    }
                }
            }
        });
        Agent { out, inbox }
    }

    pub fn send(&self, m: proto::agent::AgentMessage) {
        self.out.send(m).unwrap();
    }

    pub fn login(&self, user: &str, password: &str) {
        self.send(proto::agent::AgentMessage::Login { user: user.into(), password: proto::agent::Password::new(password.into()) });
    }

    /// The broker's next message (`None`: the connection ended).
    pub fn next(&self, within: Duration, what: &str, logs: &dyn Fn() -> String) -> Option<proto::agent::BrokerMessage> {
        match self.inbox.recv_timeout(within) {
            Ok(m) => m,
            Err(_) => panic!("no message ({what}) within {within:?}\n{}", logs()),
        }
    }

    /// Nothing arrives for `d`.
    pub fn quiet(&self, d: Duration) -> Option<Option<proto::agent::BrokerMessage>> {
        self.inbox.recv_timeout(d).ok()
    }
}

/// A hello as our agent sends it from a 1-CPU, 256 MiB QEMU PC with `mac` and `ip`, for
/// tests and benchmarks that speak the agent protocol themselves.
pub fn agent_hello(mac: &str, ip: &str) -> proto::agent::Hello {
    proto::agent::Hello {
        version: proto::agent::PROTOCOL,
        mac: mac.parse().expect("a MAC address"),
        ipv4: ip.parse().expect("an IPv4 address"),
        cpu_model: "QEMU Virtual CPU".into(),
        cpu_count: 1,
        ram_bytes: 256 << 20,
        display_modes: Vec::new(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot_ms: 5000,
        boot_phases: Vec::new(),
        resume_token: None,
    }
}

/// Starts `cmd` (the `bootserver` binary, in a lab or not) as `serve ARGS` with DHCP, TFTP and
/// HTTP off, its state in `state`, an empty boot dir `boot` and the admin API on `admin`,
/// logging to `log`; returns once the admin API listens.
pub fn serve_admin(mut cmd: Command, args: &[&str], state: &Path, boot: &Path, admin: &str, log: &Path) -> anyhow::Result<KillOnDrop> {
    std::fs::create_dir_all(boot).with_context(|| format!("creating {}", boot.display()))?;
    let server = KillOnDrop::spawn(
        cmd.arg("serve")
            .args(args)
            .args(["--no-dhcp", "--no-tftp", "--no-http", "--state-dir"])
            .arg(state)
            .arg("--boot-dir")
            .arg(boot)
            .env("BOOTSERVER_ADMIN", admin)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?),
    )?;
    wait_for_text(log, "admin API on", Duration::from_secs(30))?;
    Ok(server)
}

/// The header that authenticates a request to the admin API of the boot server whose state dir
/// is `state_dir` (its `admin.token`, made at the server's first start).
pub fn admin_auth(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("admin.token");
    let token = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("Authorization: Bearer {}", token.trim()))
}

/// `bootserver ca init` in `state_dir`, with the `bootserver` binary at `bootserver`; the path of
/// the CA certificate it prints, which boot images carry.
pub fn ca_init(bootserver: &Path, state_dir: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(bootserver)
        .args(["ca", "init", "--state-dir"])
        .arg(state_dir)
        .output()
        .context("running bootserver ca init")?;
    if !out.status.success() {
        bail!("bootserver ca init: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The smallest boot image of the agent `init` that reaches a broker on a QEMU PC (e1000, the
/// folders it mounts onto, the console), written to `out`, trusting the CA that
/// `bootserver ca init` makes in `state_dir`. `bin` is the folder of the workspace's binaries
/// (`bootserver`, `initramfs`).
pub fn agent_image(bin: &Path, init: &Path, state_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let ca = ca_init(&bin.join("bootserver"), state_dir)?;
    let config = out.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            r#"compression = "zstd"
init = "{}"
ca_cert = "{}"
[modules]
names = ["e1000"]
[[dirs]]
path = "/proc"
[[dirs]]
path = "/sys"
[[dirs]]
path = "/dev"
[[dirs]]
path = "/etc"
[[devices]]
path = "/dev/console"
kind = "char"
major = 5
minor = 1
mode = 0o600
"#,
            init.display(),
            ca.display()
        ),
    )?;
    let st = Command::new(bin.join("initramfs"))
        .args(["build", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .status()
        .context("running initramfs build")?;
    if !st.success() {
        bail!("initramfs build {} failed: {st}", config.display());
    }
    Ok(())
}
