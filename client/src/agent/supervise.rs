//! Runs the viewer (`thinclient view ...`) for the current assignment and starts it again when
//! it exits or crashes, waiting longer after each quick failure. A viewer with a fallback (the
//! NFS root's SDL2 viewer) that keeps failing right at its start is replaced by the fallback.
//! A viewer that exits because the person pressed the logout keys is not started again.
//!
//! While the login form is up, a viewer may wait on standby (`view --standby`): connected to
//! the proxy and through the TLS handshake, holding neither the screen nor the keyboards. An
//! assignment to that proxy then only hands it the password (and the logout keys) through its
//! pipe, instead of starting a process and a TLS handshake, which take most of a second on a
//! slow PC.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::children;
use super::viewer::{GiveUp, Plan};
use crate::viewer::input::LOGOUT_EXIT_CODE;

/// What the viewer must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub vnc: SocketAddr,
    pub token: String,
    pub password: Option<String>,
    /// The logout keys (`Ctrl+Alt+End`) when a person is logged in: the viewer shows them and
    /// exits with [`LOGOUT_EXIT_CODE`] when they are pressed.
    pub logout_keys: Option<String>,
}

pub(crate) enum Order {
    Show(Target),
    /// With nothing to show: keep a viewer on standby at this proxy for the next `Show`.
    Standby(SocketAddr),
    /// Stop the viewer and do not start it again until the next `Show` (the login screen is up);
    /// the sender hears once it is gone, and with it its grab of the keyboards.
    Stop(std::sync::mpsc::Sender<()>),
}

/// What the supervisor reports (to the broker and the status screen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    Started { pid: u32 },
    /// The viewer drew its first frame of a connection: the person sees the desktop.
    Shown,
    Exited { status: String, restart_in: Duration },
    /// The person pressed the logout keys; the viewer stays stopped.
    LoggedOut,
}

/// Restart delays: doubling from `initial` up to `max`, back to `initial` once a run lasted
/// `stable` (a viewer that ran an hour and then lost its server is not crash-looping).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    stable: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, stable: Duration) -> Self {
        Backoff { initial, max, stable, next: initial }
    }

    /// The delay before the next start, given how long the last run lasted.
    pub(crate) fn after_run(&mut self, ran: Duration) -> Duration {
        if ran >= self.stable {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!("killed by {sig}{}", if *core { " (core dumped)" } else { "" })
        }
        other => format!("{other:?}"),
    }
}

/// The supervisor's loop; returns when `orders` is closed.
pub(crate) fn run(plan: Plan, orders: Receiver<Order>, mut report: impl FnMut(Report)) {
    let Plan { first: mut launch, mut fallback, env } = plan;
    // Under TCG, Mesa's first frame alone takes seconds: only a viewer gone within 20 s of
    // its start, three times in a row, counts as one that cannot start.
    let mut give_up = GiveUp::new(3, Duration::from_secs(20));
    let mut target: Option<Target> = None;
    let mut running: Option<Running> = None;
    // Where a viewer should wait on standby while there is no target...
    let mut standby: Option<SocketAddr> = None;
    // ...and, while the running viewer is such a one, its proxy and its pipe's write end.
    let mut handover: Option<(SocketAddr, OwnedFd)> = None;
    let mut start_at: Option<Instant> = None;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), Duration::from_secs(60));
    log::info!("viewer: {}", launch.describe());
    loop {
        match orders.recv_timeout(Duration::from_millis(100)) {
            Ok(Order::Show(t)) if handover.as_ref().is_some_and(|(addr, _)| *addr == t.vnc) && running.is_some() => {
                let (_, pipe) = handover.take().expect("checked above");
                let pid = running.as_ref().map_or(0, |r| r.pid);
                standby = None;
                match hand_over(pipe, &t) {
                    Ok(()) => {
                        log::info!("viewer (pid {pid}) on standby at {}: password handed over", t.vnc);
                        report(Report::Started { pid });
                    }
                    Err(e) => {
                        log::warn!("handing the password to the viewer on standby (pid {pid}): {e}; starting another");
                        stop(&mut running);
                        start_at = Some(Instant::now());
                    }
                }
                target = Some(t);
            }
            Ok(Order::Show(t)) => match restart_for(target.as_ref(), &t) {
                Restart::No => {}
                // The broker rotates the token at every reconnect and handoff: the viewer
                // connected with the old one stays connected, and its next start uses the new.
                Restart::NewTokenOnly => target = Some(t),
                Restart::Yes => {
                    stop(&mut running);
                    handover = None;
                    standby = None;
                    target = Some(t);
                    start_at = Some(Instant::now());
                }
            },
            Ok(Order::Standby(addr)) => {
                if target.is_none() && standby != Some(addr) {
                    stop(&mut running);
                    handover = None;
                    standby = Some(addr);
                    start_at = Some(Instant::now());
                }
            }
            Ok(Order::Stop(done)) => {
                // A viewer on standby holds neither the screen nor the keyboards: it stays for
                // the next login (after a wrong password, say) instead of starting over.
                if handover.is_none() {
                    stop(&mut running);
                    standby = None;
                    start_at = None;
                }
                target = None;
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                stop(&mut running);
                return;
            }
        }
        if let Some(r) = &running {
            if r.shown() {
                report(Report::Shown);
            }
        }
        if let Some(Running { exit: rx, since, .. }) = &running {
            if let Ok(status) = rx.try_recv() {
                let ran = since.elapsed();
                if let Some((addr, _)) = handover.take() {
                    // The form is on the screen: nothing to tell the person. A proxy that ends
                    // an idle standby connection is the usual cause; the viewer reconnects by
                    // itself, so an exit is a failure.
                    let delay = backoff.after_run(ran);
                    log::warn!("viewer on standby at {addr} {}; again in {} s", describe(&status), delay.as_secs());
                    running = None;
                    start_at = Some(Instant::now() + delay);
                    continue;
                }
                if matches!(status, WaitStatus::Exited(_, LOGOUT_EXIT_CODE)) {
                    log::info!("viewer exited with status {LOGOUT_EXIT_CODE}: the logout keys were pressed");
                    running = None;
                    target = None;
                    start_at = None;
                    report(Report::LoggedOut);
                    continue;
                }
                let status = describe(&status);
                running = None;
                if fallback.is_some() && give_up.after_run(ran) {
                    let next = fallback.take().expect("checked above");
                    log::warn!(
                        "{} {} (last: {status}); switching to {}",
                        launch.describe(),
                        give_up.describe(),
                        next.describe()
                    );
                    launch = next;
                    backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), Duration::from_secs(60));
                    report(Report::Exited { status, restart_in: Duration::ZERO });
                    start_at = Some(Instant::now());
                } else {
                    let delay = backoff.after_run(ran);
                    report(Report::Exited { status, restart_in: delay });
                    start_at = Some(Instant::now() + delay);
                }
            }
        }
        if running.is_none() && start_at.is_some_and(|t| Instant::now() >= t) && target.is_none() {
            if let Some(addr) = standby {
                match start_standby(&launch, addr, &env) {
                    Ok((running_now, pipe)) => {
                        log::info!("viewer on standby at {addr} (pid {})", running_now.pid);
                        running = Some(running_now);
                        handover = Some((addr, pipe));
                    }
                    Err(e) => log::warn!("could not start a viewer on standby at {addr}: {e:#}"),
                }
                start_at = None;
            }
        }
        if running.is_none() && start_at.is_some_and(|t| Instant::now() >= t) {
            if let Some(t) = &target {
                let spawned = launch.command(t.vnc).and_then(|mut cmd| {
                    // In the environment rather than argv: /proc/PID/cmdline is world-readable.
                    cmd.env("TC_SESSION_TOKEN", &t.token);
                    let shown = match shown_pipe(&mut cmd) {
                        Ok(fds) => Some(fds),
                        Err(e) => {
                            log::error!("making the viewer's first-frame pipe: {e}");
                            None
                        }
                    };
                    if let Some(keys) = &t.logout_keys {
                        cmd.arg("--logout-keys").arg(keys);
                    }
                    cmd.envs(env.iter().map(|(k, v)| (k, v)));
                    let password = match &t.password {
                        Some(p) => match password_pipe(&mut cmd, p) {
                            Ok(fd) => Some(fd),
                            Err(e) => {
                                log::error!("handing the viewer its password: {e}");
                                None
                            }
                        },
                        None => None,
                    };
                    let spawned = children::spawn(&mut cmd);
                    // The child holds its own copies of the pipes' ends now; with the write
                    // end closed here, the read end sees the end once the viewer is gone.
                    drop(password);
                    let shown = shown.map(|(read, _write)| read);
                    let (pid, exit) = spawned?;
                    Ok((pid, exit, shown))
                });
                match spawned {
                    Ok((pid, exit, shown)) => {
                        report(Report::Started { pid });
                        running = Some(Running { pid, exit, since: Instant::now(), shown: shown.map(std::fs::File::from) });
                        start_at = None;
                    }
                    Err(e) if fallback.is_some() => {
                        let next = fallback.take().expect("checked above");
                        log::warn!("could not start {}: {e:#}; switching to {}", launch.describe(), next.describe());
                        launch = next;
                    }
                    Err(e) => {
                        let delay = backoff.after_run(Duration::ZERO);
                        report(Report::Exited {
                            status: format!("could not start {}: {e:#}", launch.describe()),
                            restart_in: delay,
                        });
                        start_at = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Restart {
    /// The same assignment again.
    No,
    /// The same desktop with a new token: keep the running viewer.
    NewTokenOnly,
    /// Another desktop (or the first): start the viewer anew.
    Yes,
}

fn restart_for(current: Option<&Target>, new: &Target) -> Restart {
    match current {
        Some(c) if c == new => Restart::No,
        Some(c) if c.vnc == new.vnc => Restart::NewTokenOnly,
        _ => Restart::Yes,
    }
}

/// Puts `password` into a pipe whose read end the viewer inherits as `--password-fd`: the
/// password never shows in argv or the environment, and the pipe is empty once read.
fn password_pipe(cmd: &mut Command, password: &str) -> nix::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // A password is far smaller than a pipe's buffer: the write never blocks.
    nix::unistd::write(&write, format!("{password}\n").as_bytes())?;
    drop(write);
    inherit_as_password_fd(cmd, &read);
    Ok(read)
}

/// Passes `read` to the viewer as `--password-fd`.
fn inherit_as_password_fd(cmd: &mut Command, read: &OwnedFd) {
    cmd.arg("--password-fd").arg(read.as_raw_fd().to_string());
    inherit(cmd, read.as_raw_fd());
}

/// Lets the child started by `cmd` inherit `fd` (made close-on-exec).
fn inherit(cmd: &mut Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only fcntl(2) runs between fork and exec, which is async-signal-safe. Clearing
    // close-on-exec there, not before, keeps other children started meanwhile from inheriting it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A viewer that runs.
struct Running {
    pid: u32,
    exit: Receiver<WaitStatus>,
    since: Instant,
    /// The read end of its `--shown-fd` pipe (non-blocking).
    shown: Option<std::fs::File>,
}

impl Running {
    /// True when the viewer signalled a first frame drawn since the last call.
    fn shown(&self) -> bool {
        use std::io::Read;
        let Some(mut f) = self.shown.as_ref() else { return false };
        let mut buf = [0u8; 16];
        // Empty (WouldBlock) or the viewer gone (end): nothing new.
        matches!(f.read(&mut buf), Ok(n) if n > 0)
    }
}

/// A pipe whose write end the viewer inherits as `--shown-fd`, where it writes a byte at each
/// connection's first frame drawn: a real signal, not a scrape of its log. Returns (read end,
/// non-blocking, for the supervisor's loop; write end, to close once the viewer holds it).
fn shown_pipe(cmd: &mut Command) -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    cmd.arg("--shown-fd").arg(write.as_raw_fd().to_string());
    inherit(cmd, write.as_raw_fd());
    Ok((read, write))
}

/// Starts a viewer on standby at `addr`; returns it and the write end of its password pipe.
fn start_standby(launch: &super::viewer::Launch, addr: SocketAddr, env: &[(String, String)]) -> anyhow::Result<(Running, OwnedFd)> {
    let mut cmd = launch.command(addr)?;
    cmd.arg("--standby");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let (shown, shown_write) = shown_pipe(&mut cmd)?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    inherit_as_password_fd(&mut cmd, &read);
    let (pid, exit) = children::spawn(&mut cmd)?;
    // The child holds its own copies now.
    drop((read, shown_write));
    Ok((Running { pid, exit, since: Instant::now(), shown: Some(std::fs::File::from(shown)) }, write))
}

/// Writes what a viewer on standby waits for (the password, then the logout keys) and closes
/// the pipe.
fn hand_over(pipe: OwnedFd, t: &Target) -> nix::Result<()> {
    let text = format!("{}\n{}\n", t.password.as_deref().unwrap_or(""), t.logout_keys.as_deref().unwrap_or(""));
    // Far smaller than a pipe's buffer: the write never blocks.
    let n = nix::unistd::write(&pipe, text.as_bytes())?;
    if n != text.len() {
        return Err(nix::errno::Errno::EPIPE);
    }
    Ok(())
}

fn stop(running: &mut Option<Running>) {
    if let Some(Running { pid, exit: rx, .. }) = running.take() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if rx.recv_timeout(Duration::from_secs(3)).is_err() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_token_keeps_the_viewer_and_another_desktop_restarts_it() {
        let t = |port: u16, token: &str| Target {
            vnc: SocketAddr::from(([10, 0, 0, 1], port)),
            token: token.into(),
            password: Some(token.into()),
            logout_keys: None,
        };
        assert_eq!(restart_for(None, &t(5900, "a")), Restart::Yes);
        assert_eq!(restart_for(Some(&t(5900, "a")), &t(5900, "a")), Restart::No);
        assert_eq!(restart_for(Some(&t(5900, "a")), &t(5900, "b")), Restart::NewTokenOnly);
        assert_eq!(restart_for(Some(&t(5900, "a")), &t(5901, "b")), Restart::Yes);
    }

    /// A shell script in `dir` that stands in for the viewer.
    fn fake_viewer(dir: &std::path::Path, script: impl AsRef<str>) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("viewer");
        std::fs::write(&program, script.as_ref()).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        program
    }

    /// The supervisor running `program` as its viewer, and a reaper for its children.
    struct Harness {
        supervisor: std::thread::JoinHandle<()>,
        reaping: std::sync::Arc<std::sync::atomic::AtomicBool>,
        reaper: std::thread::JoinHandle<()>,
    }

    impl Harness {
        fn start(program: std::path::PathBuf) -> (std::sync::mpsc::Sender<Order>, Receiver<Report>, Harness) {
            let plan = Plan { first: super::super::viewer::Launch::Builtin { program }, fallback: None, env: vec![] };
            let (orders, orders_rx) = std::sync::mpsc::channel();
            let (reports_tx, reports) = std::sync::mpsc::channel();
            let supervisor = std::thread::spawn(move || run(plan, orders_rx, |r| reports_tx.send(r).unwrap()));
            let reaping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let reaper = {
                let reaping = reaping.clone();
                std::thread::spawn(move || {
                    while reaping.load(std::sync::atomic::Ordering::Acquire) {
                        children::reap();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            };
            (orders, reports, Harness { supervisor, reaping, reaper })
        }

        /// Stops the viewer (acknowledged) and the supervisor.
        fn stop(self, orders: std::sync::mpsc::Sender<Order>) {
            let (done, gone) = std::sync::mpsc::channel();
            orders.send(Order::Stop(done)).unwrap();
            gone.recv_timeout(Duration::from_secs(10)).expect("Stop is acknowledged");
            // Closing the orders stops the viewer.
            drop(orders);
            self.supervisor.join().unwrap();
            self.reaping.store(false, std::sync::atomic::Ordering::Release);
            self.reaper.join().unwrap();
        }
    }

    #[test]
    fn a_viewer_that_exits_for_a_logout_is_not_started_again_and_others_are() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        // Stands in for the viewer's exit statuses (the real viewer's 10 is shown by the fbdev
        // guest test): the first run crashes, the second is logged out.
        let program = fake_viewer(
            dir.path(),
            format!(
                "#!/bin/sh\necho \"$*\" >> {r}\n[ $(wc -l < {r}) -eq 1 ] && exit 3\nexit {LOGOUT_EXIT_CODE}\n",
                r = runs.display()
            ),
        );
        let (orders, reports, h) = Harness::start(program);
        let target = Target {
            vnc: SocketAddr::from(([127, 0, 0, 1], 5901)),
            token: "t".into(),
            password: None,
            logout_keys: Some("Ctrl+Alt+End".into()),
        };
        orders.send(Order::Show(target)).unwrap();
        let next = || reports.recv_timeout(Duration::from_secs(10)).expect("a report");
        assert!(matches!(next(), Report::Started { .. }));
        assert!(matches!(next(), Report::Exited { ref status, .. } if status == "exited with status 3"));
        assert!(matches!(next(), Report::Started { .. }));
        assert!(matches!(next(), Report::LoggedOut));
        // Longer than the restart delay a crash would get.
        assert!(reports.recv_timeout(Duration::from_secs(3)).is_err(), "the viewer was started again");
        let argv = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(argv.lines().count(), 2, "{argv}");
        assert!(argv.lines().all(|l| l.ends_with("--logout-keys Ctrl+Alt+End")), "{argv}");
        h.stop(orders);
    }

    #[test]
    fn a_viewer_on_standby_is_handed_the_password_instead_of_a_new_start() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let got = dir.path().join("got");
        // Stands in for `view --standby`: waits on its password fd, keeps what it was handed,
        // then runs on as a viewer does.
        let program = fake_viewer(
            dir.path(),
            format!(
                "#!/bin/sh\necho \"$*\" >> {r}\neval \"fd=\\${{$#}}\"\ncat /proc/self/fd/$fd > {g}.tmp\nmv {g}.tmp {g}\nexec sleep 30\n",
                r = runs.display(),
                g = got.display()
            ),
        );
        let (orders, reports, h) = Harness::start(program);
        let proxy = SocketAddr::from(([127, 0, 0, 1], 5901));
        orders.send(Order::Standby(proxy)).unwrap();
        let started = Instant::now();
        while std::fs::read_to_string(&runs).map_or(true, |r| r.is_empty()) {
            assert!(started.elapsed() < Duration::from_secs(10), "no viewer on standby");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Started silently: the form is on the screen.
        assert!(reports.try_recv().is_err());
        assert!(!got.exists(), "the viewer on standby was handed something before the login");
        let target = Target {
            vnc: proxy,
            token: "tok".into(),
            password: Some("tok".into()),
            logout_keys: Some("Ctrl+Alt+End".into()),
        };
        orders.send(Order::Show(target)).unwrap();
        assert!(matches!(reports.recv_timeout(Duration::from_secs(10)), Ok(Report::Started { .. })));
        while !got.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "the password never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&got).unwrap(), "tok\nCtrl+Alt+End\n");
        let argv = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(argv.lines().count(), 1, "the viewer was started again: {argv}");
        assert!(argv.starts_with("view 127.0.0.1:5901 --presenter fbdev --standby --shown-fd "), "{argv}");
        assert!(argv.contains(" --password-fd "), "{argv}");
        h.stop(orders);
    }

    #[test]
    fn a_viewer_signalling_its_first_frame_is_reported_shown_once_per_signal() {
        let dir = tempfile::tempdir().unwrap();
        // Stands in for the viewer (the real one writes at "first frame drawn", shown by the
        // people scenario): one byte on the fd after --shown-fd, then it stays up.
        let program = fake_viewer(
            dir.path(),
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --shown-fd ] && fd=$2; shift; done\n\
             [ -n \"$fd\" ] || exit 4\neval \"printf S >&$fd\"\nexec sleep 30\n",
        );
        let (orders, reports, h) = Harness::start(program);
        let target =
            Target { vnc: SocketAddr::from(([127, 0, 0, 1], 5901)), token: "t".into(), password: None, logout_keys: None };
        orders.send(Order::Show(target)).unwrap();
        let next = || reports.recv_timeout(Duration::from_secs(10)).expect("a report");
        assert!(matches!(next(), Report::Started { .. }));
        assert_eq!(next(), Report::Shown);
        assert!(reports.recv_timeout(Duration::from_millis(500)).is_err(), "one byte, one report");
        h.stop(orders);
    }

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_stable_run() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(60));
        let quick = Duration::from_millis(10);
        let got: Vec<u64> = (0..5).map(|_| b.after_run(quick).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        assert_eq!(b.after_run(Duration::from_secs(61)).as_secs(), 1);
        assert_eq!(b.after_run(quick).as_secs(), 2);
    }
}
