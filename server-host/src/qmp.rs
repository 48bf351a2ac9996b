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
pub(crate) async fn exec<C: qapi::qmp::QmpCommand>(svc: &Service, vm: &str, cmd: C) -> Result<C::Ok> {
    let name = <C as qapi::Command>::NAME;
    match tokio::time::timeout(Duration::from_secs(30), svc.execute(cmd)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Internal(format!("VM {vm}: QMP {name}: {e}"))),
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
pub(crate) async fn exec_early<C: qapi::qmp::QmpCommand>(svc: &Service, events: &mut Events, vm: &str, cmd: C) -> Result<C::Ok> {
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
