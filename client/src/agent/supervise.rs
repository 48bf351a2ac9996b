//! Runs the viewer (`thinclient view ...`) for the current assignment and starts it again when
//! it exits or crashes, waiting longer after each quick failure.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::children;

/// What the viewer must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub vnc: SocketAddr,
    pub token: String,
    pub password: Option<String>,
}

pub(crate) enum Order {
    Show(Target),
}

/// What the supervisor reports (to the broker and the status screen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    Started { pid: u32 },
    Exited { status: String, restart_in: Duration },
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
pub(crate) fn run(program: PathBuf, orders: Receiver<Order>, mut report: impl FnMut(Report)) {
    let mut target: Option<Target> = None;
    let mut running: Option<(u32, Receiver<WaitStatus>, Instant)> = None;
    let mut start_at: Option<Instant> = None;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), Duration::from_secs(60));
    loop {
        match orders.recv_timeout(Duration::from_millis(100)) {
            Ok(Order::Show(t)) => {
                if target.as_ref() != Some(&t) {
                    stop(&mut running);
                    target = Some(t);
                    start_at = Some(Instant::now());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                stop(&mut running);
                return;
            }
        }
        if let Some((_, rx, since)) = &running {
            if let Ok(status) = rx.try_recv() {
                let delay = backoff.after_run(since.elapsed());
                report(Report::Exited { status: describe(&status), restart_in: delay });
                running = None;
                start_at = Some(Instant::now() + delay);
            }
        }
        if running.is_none() && start_at.is_some_and(|t| Instant::now() >= t) {
            if let Some(t) = &target {
                let mut cmd = Command::new(&program);
                // The console has no window system: the viewer draws into /dev/fb0.
                cmd.arg("view").arg(t.vnc.to_string()).arg("--presenter").arg("fbdev");
                // In the environment rather than argv: /proc/PID/cmdline is world-readable.
                cmd.env("TC_SESSION_TOKEN", &t.token);
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
                // The child holds its own copy of the read end now.
                drop(password);
                match spawned {
                    Ok((pid, rx)) => {
                        report(Report::Started { pid });
                        running = Some((pid, rx, Instant::now()));
                        start_at = None;
                    }
                    Err(e) => {
                        let delay = backoff.after_run(Duration::ZERO);
                        report(Report::Exited {
                            status: format!("could not start {}: {e}", program.display()),
                            restart_in: delay,
                        });
                        start_at = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }
}

/// Puts `password` into a pipe whose read end the viewer inherits as `--password-fd`: the
/// password never shows in argv or the environment, and the pipe is empty once read.
fn password_pipe(cmd: &mut Command, password: &str) -> nix::Result<OwnedFd> {
    use std::os::unix::process::CommandExt;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // A password is far smaller than a pipe's buffer: the write never blocks.
    nix::unistd::write(&write, format!("{password}\n").as_bytes())?;
    drop(write);
    let fd = read.as_raw_fd();
    cmd.arg("--password-fd").arg(fd.to_string());
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
    Ok(read)
}

fn stop(running: &mut Option<(u32, Receiver<WaitStatus>, Instant)>) {
    if let Some((pid, rx, _)) = running.take() {
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
    fn backoff_doubles_caps_and_resets_after_a_stable_run() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(60));
        let quick = Duration::from_millis(10);
        let got: Vec<u64> = (0..5).map(|_| b.after_run(quick).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        assert_eq!(b.after_run(Duration::from_secs(61)).as_secs(), 1);
        assert_eq!(b.after_run(quick).as_secs(), 2);
    }
}
