//! QMP connections to the VMs (the `qapi` crate over tokio unix sockets).

use std::path::Path;
use std::time::Duration;

use qapi::futures::{QapiEvents, QapiService, QmpStreamTokio};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

pub(crate) type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;
pub(crate) type Events = QapiEvents<QmpStreamTokio<ReadHalf<UnixStream>>>;

/// Connects and negotiates; retries briefly because a just-started QEMU may not listen yet.
pub(crate) async fn connect(path: &Path) -> Result<(Service, Events)> {
    let mut last = String::new();
    for _ in 0..50 {
        match QmpStreamTokio::open_uds(path).await {
            Ok(n) => match tokio::time::timeout(Duration::from_secs(10), n.negotiate()).await {
                Ok(Ok(s)) => return Ok(s.into_parts()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no QMP greeting within 10 s".into(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Internal(format!("QMP {}: {last}", path.display())))
}

/// Runs one command with a deadline, naming the VM in errors.
///
/// The command runs to its end in a task of its own, and the deadline (or a caller that goes
/// away, such as an HTTP client that hangs up) only stops the waiting. The `qapi` crate keeps a
/// command's answer slot until its answer is read; a command future dropped before that leaves
/// the slot behind, and the VM's next command then panics ("duplicate command id") with the
/// crate's lock poisoned, so that every later command of that VM, its listing in `/v1/vms`
/// included, would fail. A task that runs on keeps the connection's commands in order: the
/// crate holds its write lock until the answer comes.
pub(crate) async fn exec<C>(svc: &Service, vm: &str, cmd: C) -> Result<C::Ok>
where
    C: qapi::qmp::QmpCommand + Send + 'static,
    C::Ok: Send + 'static,
{
    let name = <C as qapi::Command>::NAME;
    let task = tokio::spawn(svc.execute(cmd));
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(Error::Internal(format!("VM {vm}: QMP {name}: {e}"))),
        Ok(Err(e)) => Err(Error::Internal(format!("VM {vm}: QMP {name}: the command's task failed: {e}"))),
        Err(_) => Err(Error::Internal(format!("VM {vm}: QMP {name}: no answer within 30 s"))),
    }
}

/// Runs a human-monitor command; QEMU reports their failures as text, which is checked here.
pub(crate) async fn hmp(svc: &Service, vm: &str, line: &str) -> Result<()> {
    let out = exec(svc, vm, qapi::qmp::human_monitor_command { cpu_index: None, command_line: line.to_owned() }).await?;
    let out = out.trim();
    if !out.is_empty() && !out.starts_with("OK") {
        return Err(Error::Internal(format!("VM {vm}: monitor {line:?}: {out}")));
    }
    Ok(())
}

/// Runs a command before the VM's watcher owns the event stream: answers arrive through that
/// stream, so it is driven here meanwhile (events this early carry nothing we act on).
pub(crate) async fn exec_early<C>(svc: &Service, events: &mut Events, vm: &str, cmd: C) -> Result<C::Ok>
where
    C: qapi::qmp::QmpCommand + Send + 'static,
    C::Ok: Send + 'static,
{
    use futures::StreamExt;
    let fut = exec(svc, vm, cmd);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            ev = events.next() => if ev.is_none() {
                return Err(Error::Internal(format!("VM {vm}: QEMU closed QMP while starting")));
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers that give up on a command (a deadline, a client that hung up) must not break
    /// the VM's next commands: against a real QEMU, a command dropped right after it was
    /// started is followed at once by another, many times over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_given_up_on_leaves_the_next_ones_working() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _qemu = Kill(std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-display", "none", "-nodefaults", "-S", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/setup installs it)"));
        let (svc, events) = connect(&sock).await.unwrap();
        let pump = tokio::spawn(async move {
            use futures::StreamExt;
            let mut events = events;
            while events.next().await.is_some() {}
        });
        for _ in 0..200 {
            let _ = tokio::time::timeout(Duration::ZERO, exec(&svc, "t", qapi::qmp::query_status {})).await;
            exec(&svc, "t", qapi::qmp::query_status {}).await.unwrap();
        }
        pump.abort();
    }
}
