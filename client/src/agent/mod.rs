//! The agent: `/init` of the boot image (PID 1). It takes the PC from the kernel to the
//! broker: file systems, drivers, network, optional NFS root, announce, then whatever the
//! broker says, with a status screen at every step. As PID 1 it reaps orphans and never
//! panics out: any failure is shown on screen and the PC restarts after a delay.

mod broker;
mod children;
mod console;
mod modules;
mod mounts;
mod net;
mod supervise;
mod login;
mod sysinfo;
mod viewer;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use proto::agent::{BootPhase, DisplayMode, Hello, MacAddr, Status, ViewerState, PROTOCOL};
use proto::cmdline::BootParams;

use console::{Console, Screen};

/// `thinclient agent` options. As `/init` it gets none: the kernel command line (`tc.*` keys)
/// is its configuration.
#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    #[command(subcommand)]
    tool: Option<Tool>,
    /// File holding the kernel command line.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline_file: PathBuf,
    /// The built-in viewer (`PROGRAM view VNC_ADDR --presenter fbdev`), used without an NFS
    /// root or when the root's SDL2 viewer cannot start. Default: this executable.
    #[arg(long)]
    viewer: Option<PathBuf>,
    /// The CA certificate the broker's certificate must chain to (the boot image has it where
    /// `initramfs build --ca-cert` puts it).
    #[arg(long, default_value = proto::tls::IMAGE_CA_PATH)]
    ca_cert: PathBuf,
}

/// Single steps of the agent, for trying them on a running system.
#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// Lease an address with the agent's DHCP client and print it (and apply it with --apply).
    ///
    /// Example: thinclient agent dhcp --interface eth0 --apply
    Dhcp {
        #[arg(long)]
        interface: String,
        /// Give the kernel the address, route and DNS servers.
        #[arg(long)]
        apply: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Where --apply writes the DNS servers.
        #[arg(long, default_value = "/etc/resolv.conf")]
        resolv_conf: PathBuf,
        /// After --apply, stay and keep the lease as the agent does: renew at T1, rebind at
        /// T2, lease anew after a DHCPNAK or expiry (logged; runs until killed).
        #[arg(long, requires = "apply")]
        keep: bool,
    },
    /// Show the login form on this PC's screen (/dev/fb0 and the text console), read the
    /// keyboards as the agent does, and print the user name of the first login submitted (the
    /// password is thrown away, never shown).
    ///
    /// Example: thinclient agent login-screen --pc lab-07 --layout de
    LoginScreen {
        /// The PC's name on the form.
        #[arg(long, default_value = "this PC")]
        pc: String,
        #[arg(long, value_enum, default_value_t = crate::viewer::input::Layout::Us)]
        layout: crate::viewer::input::Layout,
        /// A message under the fields, as the broker would send.
        #[arg(long)]
        message: Option<String>,
    },
}

/// What ends the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    Reboot,
    PowerOff,
}

/// What the main loop waits for.
pub(crate) enum Event {
    Signal(Signal),
    Command(proto::agent::Command),
    /// A helper thread died; the PC restarts.
    Fatal(String),
}

/// `tc.*` keys of this agent beyond the shared ones in `proto::cmdline`.
const KEY_IFACE: &str = "tc.iface";
const KEY_DHCP_TIMEOUT: &str = "tc.dhcp_timeout";
const KEY_ERROR_DELAY: &str = "tc.error_delay";
/// The keyboard layout (`us`, `de`) of the login screen and the viewer.
const KEY_LAYOUT: &str = "tc.layout";
/// The viewer's VNC encoding (`tight`, `tight-jpeg`, `zrle`, `trle`, `raw`).
const KEY_ENCODING: &str = "tc.encoding";
/// A boot LAN is local and fast: lossless Tight keeps text sharp, and the PC's screen is then
/// the desktop's pixel for pixel, which is what lets a check tell one person's desktop from
/// another's. `tc.encoding=tight-jpeg` suits a slow link.
const DEFAULT_ENCODING: &str = "tight";

/// The viewer's encoding from `tc.encoding`, or [`DEFAULT_ENCODING`] when it is absent or names
/// no encoding (a typo must not leave the PC without a desktop).
fn viewer_encoding(given: Option<&str>) -> String {
    let Some(v) = given else { return DEFAULT_ENCODING.into() };
    match <crate::viewer::Encoding as clap::ValueEnum>::from_str(v, true) {
        Ok(_) => v.to_ascii_lowercase(),
        Err(_) => {
            log::warn!("{KEY_ENCODING}={v:?} is not tight, tight-jpeg, zrle, trle or raw; using {DEFAULT_ENCODING}");
            DEFAULT_ENCODING.into()
        }
    }
}

fn extra<'a>(params: &'a BootParams, key: &str) -> Option<&'a str> {
    params.unknown.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn extra_secs(params: &BootParams, key: &str, default: u64) -> Duration {
    Duration::from_secs(extra(params, key).and_then(|v| v.parse().ok()).unwrap_or(default))
}

pub(crate) fn main(args: AgentArgs) -> anyhow::Result<()> {
    if let Some(Tool::Dhcp { interface, apply, timeout, resolv_conf, keep }) = args.tool {
        init_logger(None);
        return dhcp_tool(&interface, apply, keep, Duration::from_secs(timeout), &resolv_conf);
    }
    if let Some(Tool::LoginScreen { pc, layout, message }) = args.tool {
        init_logger(None);
        return login_tool(pc, layout, message);
    }
    let pid1 = std::process::id() == 1;
    let mut early_problems = Vec::new();
    if pid1 {
        early_problems = mounts::mount_early();
        reopen_console();
        std::env::set_var("PATH", "/sbin:/bin:/usr/sbin:/usr/bin");
    }
    let cmdline = std::fs::read_to_string(&args.cmdline_file).unwrap_or_default();
    let (params, params_error) = match BootParams::parse(&cmdline) {
        Ok(p) => (p, None),
        Err(e) => (BootParams::default(), Some(e)),
    };
    init_logger(params.log.as_deref());
    for p in early_problems {
        log::warn!("{p}");
    }
    if let Some(e) = params_error {
        log::warn!("ignoring the kernel command line's tc.* keys: {e}");
    }
    let error_delay = extra_secs(&params, KEY_ERROR_DELAY, 30);

    // Every thread's signals are handled by one thread with sigwait; children get a clean mask
    // from std's spawn.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGPWR, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;

    let console = Arc::new(Mutex::new(if pid1 {
        Console::open(Path::new("/sys"), Path::new("/dev"))
    } else {
        Console::stderr_only()
    }));
    let (tx, rx) = channel::<Event>();
    spawn_guarded("signals", tx.clone(), move |tx| loop {
        match mask.wait() {
            Ok(Signal::SIGCHLD) => {
                children::reap();
            }
            Ok(sig) => {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
            Err(e) => log::warn!("sigwait: {e}"),
        }
    });

    let viewer = args.viewer.clone().unwrap_or_else(|| {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"))
    });
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        boot(&params, &console, viewer, &args.ca_cert, tx, &rx)
    }));
    let show = |s: Screen| console.lock().unwrap_or_else(|e| e.into_inner()).show(s);
    let action = match outcome {
        Ok(Ok(action)) => action,
        Ok(Err(e)) => {
            log::error!("{e:#}");
            show(Screen::Error { reason: format!("{e:#}"), reboot_in: Some(error_delay) });
            std::thread::sleep(error_delay);
            Shutdown::Reboot
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            show(Screen::Error { reason: format!("internal error: {what}"), reboot_in: Some(error_delay) });
            std::thread::sleep(error_delay);
            Shutdown::Reboot
        }
    };
    shutdown(action, pid1, &console)
}

fn init_logger(filter: Option<&str>) {
    let env = env_logger::Env::default().default_filter_or(filter.unwrap_or("info"));
    let _ = env_logger::Builder::from_env(env).format_timestamp_millis().try_init();
}

/// The kernel opens `/dev/console` for init only if the image has that node; once devtmpfs is
/// mounted it exists, so make sure stdin, stdout and stderr are the console.
fn reopen_console() {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl(F_GETFD) only queries descriptor 1.
    let stdout_ok = unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0;
    if stdout_ok {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which are closed.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

/// Runs `f` on a named thread; a panic there becomes [`Event::Fatal`] for the main loop.
fn spawn_guarded(name: &str, tx: Sender<Event>, f: impl FnOnce(Sender<Event>) + Send + 'static) {
    let name = name.to_string();
    let tx2 = tx.clone();
    let thread_name = name.clone();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| f(tx2))) {
            let what = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            let _ = tx.send(Event::Fatal(format!("the {thread_name} thread failed: {what}")));
        }
    });
    if let Err(e) = spawned {
        log::error!("starting a thread: {e}");
    }
}

/// Records how long each boot step took, for the announce and the boot log.
struct Phases {
    list: Vec<BootPhase>,
    mark: Instant,
}

impl Phases {
    fn done(&mut self, name: &str) {
        let ms = self.mark.elapsed().as_millis() as u64;
        log::info!("boot phase {name}: {ms} ms");
        self.list.push(BootPhase { name: name.into(), ms });
        self.mark = Instant::now();
    }
}

fn boot(
    params: &BootParams,
    console: &Arc<Mutex<Console>>,
    viewer_program: PathBuf,
    ca_cert: &Path,
    tx: Sender<Event>,
    rx: &std::sync::mpsc::Receiver<Event>,
) -> anyhow::Result<Shutdown> {
    let show = |s: Screen| console.lock().unwrap_or_else(|e| e.into_inner()).show(s);
    let sys = Path::new("/sys");
    let kernel_ms = sysinfo::uptime_ms(Path::new("/proc")).unwrap_or(0);
    let mut phases = Phases { list: vec![BootPhase { name: "kernel".into(), ms: kernel_ms }], mark: Instant::now() };
    log::info!("thinclient agent {} started {kernel_ms} ms after the kernel", env!("CARGO_PKG_VERSION"));

    show(Screen::Booting { step: "Loading drivers".into() });
    let mut loader = match modules::ModuleIndex::for_running_kernel() {
        Ok(index) => Some(modules::Loader::new(index)),
        Err(e) => {
            log::warn!("no kernel modules ({e:#}); using built-in drivers only");
            None
        }
    };
    // Subscribed before the drivers load, so the NIC's appearance and carrier wake the waits.
    let mut link_events = net::LinkEvents::open()?;
    if let Some(l) = &mut loader {
        let n = l.load_for_hardware(sys);
        log::info!("loaded {n} modules for the hardware found");
    }
    phases.done("modules");
    sysinfo::warm_up_random(tx.clone());

    let iface = net::find_interface(sys, extra(params, KEY_IFACE), &mut link_events, Duration::from_secs(20))?;
    let mac = net::mac_of(sys, &iface)?;
    net::disable_ipv6(Path::new("/proc"), &iface);
    net::netlink::bring_up(&iface)?;
    if !net::wait_carrier(sys, &iface, &mut link_events, Duration::from_secs(10)) {
        log::warn!("{iface}: no link after 10 s; trying DHCP anyway");
    }
    phases.done("link");

    let mac_text = MacAddr(mac).to_string();
    show(Screen::Booting { step: format!("Getting a network address (DHCP) on {iface}, {mac_text}") });
    let dhcp_timeout = extra_secs(params, KEY_DHCP_TIMEOUT, 60);
    let lease = net::dhcp::acquire(&iface, mac, dhcp_timeout)
        .with_context(|| format!("no network address for {mac_text}: is the boot server running?"))?;
    net::netlink::apply(&iface, &lease, Path::new("/etc/resolv.conf"))?;
    log::info!("{iface}: {}/{} via {:?} from {}", lease.address, lease.prefix_len, lease.router, lease.server);
    phases.done("dhcp");
    spawn_renewal(&iface, mac, &lease, tx.clone());

    let broker = params.broker.or(lease.broker).with_context(|| {
        format!(
            "no broker address: neither {} on the kernel command line nor DHCP option {}",
            proto::cmdline::KEY_BROKER,
            net::dhcp::BROKER_OPTION
        )
    })?;

    // Without the CA the agent cannot tell its boot server's broker from any other on the LAN,
    // and it has no plain-TCP fallback that a rogue could ask for.
    let tls = proto::tls::client_config(ca_cert).with_context(|| {
        format!(
            "no CA certificate to check the broker with: this boot image was made without one (initramfs build --ca-cert {})",
            proto::tls::IMAGE_CA_PATH
        )
    })?;

    let mode = viewer::Mode::parse(extra(params, viewer::KEY_VIEWER)).unwrap_or_else(|e| {
        log::warn!("{e}; using auto");
        viewer::Mode::Auto
    });
    let root = match &params.nfsroot {
        None => Err(format!("no NFS root ({} is not set)", proto::cmdline::KEY_NFSROOT)),
        Some(_) if mode == viewer::Mode::Builtin => Err(format!("{}=builtin", viewer::KEY_VIEWER)),
        Some(spec) => {
            show(Screen::Booting { step: format!("Mounting the NFS root {spec}") });
            let mounted = mounts::NfsRoot::parse(spec).and_then(|root| {
                if let Some(l) = &mut loader {
                    // nfsv3 pulls in nfs and sunrpc; a `vers=3` mount needs it and the kernel
                    // cannot load it by itself (no modprobe in the image).
                    if let Err(e) = l.load("nfsv3") {
                        log::info!("nfsv3 module: {e:#} (built in?)");
                    }
                }
                root.mount()
            });
            phases.done("nfsroot");
            match mounted {
                Ok(()) => Ok(Path::new(mounts::NFS_MOUNTPOINT)),
                // The built-in viewer still reaches the desktop: only a forced NFS viewer
                // makes this fatal (in viewer::plan).
                Err(e) => Err(format!("{e:#}")),
            }
        }
    };
    let mut plan = viewer::plan(mode, &viewer_program, root).map_err(anyhow::Error::msg)?;
    // The viewer checks the proxy (VeNCrypt) against the same CA as the broker.
    let ca_pem = std::fs::read_to_string(ca_cert).with_context(|| format!("reading {}", ca_cert.display()))?;
    plan.env.push((crate::viewer::CA_PEM_ENV.into(), ca_pem));
    if let Some(v) = extra(params, viewer::KEY_ALLOW_VNC_AUTH) {
        plan.env.push(("TC_ALLOW_VNC_AUTH".into(), v.into()));
    }
    if let Some(v) = extra(params, KEY_LAYOUT) {
        match <crate::viewer::input::Layout as clap::ValueEnum>::from_str(v, true) {
            Ok(layout) => {
                console.lock().unwrap_or_else(|e| e.into_inner()).set_layout(layout);
                plan.env.push(("TC_LAYOUT".into(), v.to_ascii_lowercase()));
            }
            Err(_) => log::warn!("{KEY_LAYOUT}={v:?} is not us or de; using us"),
        }
    }
    plan.env.push(("TC_ENCODING".into(), viewer_encoding(extra(params, KEY_ENCODING))));

    show(Screen::Booting { step: format!("Announcing this PC to the broker at {broker}") });
    let hello = build_hello(sys, mac, lease.address, phases)?;
    let (order_tx, order_rx) = channel();
    let (status_tx, status_rx) = channel::<proto::agent::Input>();
    {
        let console = console.clone();
        let status_tx = status_tx.clone();
        spawn_guarded("viewer", tx.clone(), move |_| {
            supervise::run(plan, order_rx, |r| {
                let status = match &r {
                    supervise::Report::Started { pid } => {
                        log::info!("viewer started (pid {pid})");
                        Status { viewer: ViewerState::Starting, error: None }
                    }
                    supervise::Report::Shown => {
                        log::info!("viewer shows the desktop");
                        Status { viewer: ViewerState::Connected, error: None }
                    }
                    supervise::Report::LoggedOut => {
                        console.lock().unwrap_or_else(|e| e.into_inner()).show(Screen::Waiting { detail: "Logging out.".into() });
                        let _ = status_tx.send(proto::agent::Input::Logout);
                        Status { viewer: ViewerState::Idle, error: None }
                    }
                    supervise::Report::Exited { status, restart_in } => {
                        let msg = format!("The desktop viewer {status}.\nStarting it again in {} s.", restart_in.as_secs());
                        log::warn!("{}", msg.replace('\n', " "));
                        console.lock().unwrap_or_else(|e| e.into_inner()).show(Screen::Waiting { detail: msg });
                        Status { viewer: ViewerState::Exited, error: Some(status.clone()) }
                    }
                };
                let _ = status_tx.send(proto::agent::Input::Status(status));
            })
        });
    }
    {
        let console = console.clone();
        let order_tx = order_tx.clone();
        spawn_guarded("broker", tx.clone(), move |tx| {
            broker::run(broker, tls, hello, status_rx, status_tx, order_tx, tx, console)
        });
    }

    loop {
        let event = rx.recv().context("every event source is gone")?;
        match event {
            Event::Signal(Signal::SIGUSR2 | Signal::SIGPWR | Signal::SIGUSR1) => return Ok(Shutdown::PowerOff),
            Event::Signal(Signal::SIGHUP) => log::info!("SIGHUP ignored"),
            Event::Signal(sig) => {
                log::info!("{sig}: restarting");
                return Ok(Shutdown::Reboot);
            }
            Event::Command(cmd) => {
                log::info!("broker command: {}", broker::describe(&cmd));
                match cmd {
                    proto::agent::Command::Reboot => return Ok(Shutdown::Reboot),
                    proto::agent::Command::PowerOff => return Ok(Shutdown::PowerOff),
                    proto::agent::Command::ShowMessage { text } => show(Screen::Message { text }),
                    proto::agent::Command::Reconnect => {}
                }
            }
            Event::Fatal(reason) => bail!("{reason}"),
        }
    }
}

fn build_hello(sys: &Path, mac: [u8; 6], ipv4: std::net::Ipv4Addr, phases: Phases) -> anyhow::Result<Hello> {
    let (cpu_model, cpu_count) = sysinfo::cpu(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let ram_bytes = sysinfo::ram_bytes(sys, &std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let display_modes = sysinfo::display_modes(sys)
        .into_iter()
        .map(|m| DisplayMode { width: m.width, height: m.height, refresh_mhz: m.refresh_hz.map(|hz| hz * 1000) })
        .collect();
    let boot_ms = sysinfo::uptime_ms(Path::new("/proc")).unwrap_or(0);
    Ok(Hello {
        version: PROTOCOL,
        mac: MacAddr(mac),
        ipv4,
        cpu_model,
        cpu_count,
        ram_bytes,
        display_modes,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_ms,
        boot_phases: phases.list,
        resume_token: None,
    })
}

/// Keeps the lease for the life of the agent (RFC 2131 renewing and rebinding, and a new lease
/// when it is lost); the broker connection, bound to no address, follows by itself.
fn spawn_renewal(iface: &str, mac: [u8; 6], lease: &net::dhcp::Lease, tx: Sender<Event>) {
    let iface = iface.to_string();
    let lease = lease.clone();
    spawn_guarded("dhcp-renew", tx, move |_| net::keep::keep(&iface, mac, lease, Path::new("/etc/resolv.conf")));
}

fn shutdown(action: Shutdown, pid1: bool, console: &Arc<Mutex<Console>>) -> anyhow::Result<()> {
    let text = match action {
        Shutdown::Reboot => "Restarting.",
        Shutdown::PowerOff => "Powering off.",
    };
    log::info!("{text}");
    console.lock().unwrap_or_else(|e| e.into_inner()).show(Screen::Message { text: text.into() });
    if !pid1 {
        return Ok(());
    }
    children::terminate_all(Duration::from_secs(3));
    nix::unistd::sync();
    mounts::unmount_all();
    nix::unistd::sync();
    let mode = match action {
        Shutdown::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        Shutdown::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
    };
    let err = nix::sys::reboot::reboot(mode).unwrap_err();
    // PID 1 must not exit (the kernel would panic): say why and wait for the power button.
    log::error!("reboot({mode:?}) failed: {err}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn login_tool(pc: String, layout: crate::viewer::input::Layout, message: Option<String>) -> anyhow::Result<()> {
    let console = Arc::new(Mutex::new(Console::open(Path::new("/sys"), Path::new("/dev"))));
    let lock = || console.lock().unwrap_or_else(|e| e.into_inner());
    lock().set_layout(layout);
    let (tx, rx) = channel();
    let mut keys = login::Keys::new(console.clone(), tx);
    lock().login(&proto::agent::LoginPrompt { pc, enrolment: proto::agent::Enrolment::Enrolled, message, user: None, proxy: None });
    keys.grab();
    let got = rx.recv();
    keys.release();
    match got {
        Ok(proto::agent::Input::Login { user, password }) => {
            drop(password);
            println!("login: user {user:?}");
            lock().show(Screen::Starting { user });
            Ok(())
        }
        _ => bail!("the keyboard thread ended without a login"),
    }
}

fn dhcp_tool(iface: &str, apply: bool, keep: bool, timeout: Duration, resolv: &Path) -> anyhow::Result<()> {
    let sys = Path::new("/sys");
    let mac = net::mac_of(sys, iface)?;
    net::netlink::bring_up(iface)?;
    let started = Instant::now();
    let lease = net::dhcp::acquire(iface, mac, timeout)?;
    println!("interface: {iface}");
    println!("mac: {}", MacAddr(mac));
    println!("address: {}/{}", lease.address, lease.prefix_len);
    println!("router: {}", lease.router.map(|r| r.to_string()).unwrap_or_else(|| "(none)".into()));
    println!("dns: {}", lease.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" "));
    println!("server: {}", lease.server);
    let secs = |s: Option<u32>| s.map(|s| s.to_string()).unwrap_or_else(|| "(none)".into());
    println!("lease_secs: {}", secs(lease.lease_secs));
    println!("renew_secs: {}", secs(lease.renew_secs));
    println!("rebind_secs: {}", secs(lease.rebind_secs));
    println!("broker: {}", lease.broker.map(|b| b.to_string()).unwrap_or_else(|| "(none)".into()));
    println!("took_ms: {}", started.elapsed().as_millis());
    if apply {
        net::netlink::apply(iface, &lease, resolv)?;
        println!("applied");
    }
    if keep {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        net::keep::keep(iface, mac, lease, resolv);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::viewer_encoding;

    #[test]
    fn the_viewer_is_lossless_unless_the_command_line_says_otherwise() {
        assert_eq!(viewer_encoding(None), "tight");
        assert_eq!(viewer_encoding(Some("Tight-JPEG")), "tight-jpeg");
        assert_eq!(viewer_encoding(Some("zrle")), "zrle");
        // A typo keeps the PC on a desktop, with the default.
        assert_eq!(viewer_encoding(Some("tite")), "tight");
    }
}
