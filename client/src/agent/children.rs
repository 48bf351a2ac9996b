//! Child processes of PID 1. Every zombie in the system ends up as our child, so one place
//! reaps with `waitpid(-1)`; the exits of the processes we started ourselves are handed to
//! whoever started them.

use std::collections::HashMap;
use std::process::Command;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Exit statuses wanted by someone, by PID. Spawning and reaping both hold this lock, so an
/// exit is never reaped before its waiter is registered.
static WAITERS: Mutex<Option<HashMap<i32, Sender<WaitStatus>>>> = Mutex::new(None);

/// Starts `cmd` and returns its PID and a receiver for its exit status.
pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<(u32, Receiver<WaitStatus>)> {
    let mut guard = WAITERS.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let pid = child.id();
    // The reaper waits for it: dropping the handle neither kills nor waits.
    drop(child);
    let (tx, rx) = channel();
    guard.get_or_insert_with(HashMap::new).insert(pid as i32, tx);
    Ok((pid, rx))
}

/// Reaps every exited child; returns how many orphans (children nobody waited for) it reaped.
pub(crate) fn reap() -> usize {
    let mut guard = WAITERS.lock().unwrap_or_else(|e| e.into_inner());
    let waiters = guard.get_or_insert_with(HashMap::new);
    let mut orphans = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                match waiters.remove(&pid.as_raw()) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => {
                        log::debug!("reaped orphan {pid}: {status:?}");
                        orphans += 1;
                    }
                }
            }
        }
    }
    orphans
}

/// Asks every other process to stop, then kills what is left: before a reboot, so that the
/// viewer and programs from the NFS root close their files.
pub(crate) fn terminate_all(grace: std::time::Duration) {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        reap();
        // ECHILD: nothing left to wait for.
        if matches!(waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)), Err(nix::errno::Errno::ECHILD)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap();
}
