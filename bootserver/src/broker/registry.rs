//! The registry of client PCs: every PC that ever announced itself, kept in SQLite so that a
//! broker restart loses none of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use proto::agent::{BootPhase, DisplayMode, Hello};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Where a client is, as far as the broker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientState {
    /// Connected and announced.
    Online,
    /// Its connection ended without a command from the admin.
    Offline,
    /// Told to reboot; expected back.
    Rebooting,
    /// Told to power off.
    PoweredOff,
}

impl ClientState {
    fn as_str(self) -> &'static str {
        match self {
            ClientState::Online => "online",
            ClientState::Offline => "offline",
            ClientState::Rebooting => "rebooting",
            ClientState::PoweredOff => "powered_off",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "online" => ClientState::Online,
            "rebooting" => ClientState::Rebooting,
            "powered_off" => ClientState::PoweredOff,
            _ => ClientState::Offline,
        }
    }
}

/// What the PC reported about itself in its last announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub cpu_model: String,
    pub cpu_count: u32,
    pub ram_bytes: u64,
    #[serde(default)]
    pub display_modes: Vec<DisplayMode>,
    pub agent_version: String,
}

/// One row of the registry, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub mac: String,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    pub address: String,
    pub state: ClientState,
    /// Announces that started a new boot (reconnects of the same boot are not counted).
    pub boots: u64,
    pub hardware: Hardware,
    /// Milliseconds from power-on (or kernel start) to the last boot's announce.
    pub boot_ms: u64,
    #[serde(default)]
    pub boot_phases: Vec<BootPhase>,
    /// The viewer's last reported state and error, if any.
    #[serde(default)]
    pub viewer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("client registry {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("client registry {path}: stored hardware of {mac} is unreadable: {source}")]
    Json { path: PathBuf, mac: String, source: serde_json::Error },
    #[error(transparent)]
    Create(#[from] crate::statefile::StateFileError),
    #[error("client registry {path}: its writer thread has stopped")]
    Stopped { path: PathBuf },
}

/// The SQLite-backed registry, with blocking calls; the broker uses it through a
/// [`Recorder`], which keeps it off the runtime threads.
pub struct Registry {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    mac         TEXT PRIMARY KEY,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    address     TEXT NOT NULL,
    state       TEXT NOT NULL,
    boots       INTEGER NOT NULL,
    hardware    TEXT NOT NULL,
    boot_ms     INTEGER NOT NULL,
    boot_phases TEXT NOT NULL,
    viewer      TEXT,
    token       TEXT
);";

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Registry {
    /// Opens (or creates) the registry. Clients recorded as online by an earlier run are
    /// marked offline: their connections died with that run, and they reconnect by themselves.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let sql = |source| RegistryError::Sql { path: path.to_path_buf(), source };
        // Created 0600 before SQLite opens it: SQLite would make it 0644, and its journal
        // takes the database's mode.
        crate::statefile::create_private(path)?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute("UPDATE clients SET state = 'offline' WHERE state = 'online'", []).map_err(sql)?;
        Ok(Registry { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    fn sql(&self, source: rusqlite::Error) -> RegistryError {
        RegistryError::Sql { path: self.path.clone(), source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an announce. `token` is the resume token handed out with this welcome; an
    /// announce that carries the previous one is the same boot reconnecting.
    pub fn announce(&self, hello: &Hello, token: &str, now: u64) -> Result<ClientRecord, RegistryError> {
        let mac = hello.mac.to_string();
        let hardware = Hardware {
            cpu_model: hello.cpu_model.clone(),
            cpu_count: hello.cpu_count,
            ram_bytes: hello.ram_bytes,
            display_modes: hello.display_modes.clone(),
            agent_version: hello.agent_version.clone(),
        };
        let hw_json = serde_json::to_string(&hardware).unwrap_or_default();
        let phases_json = serde_json::to_string(&hello.boot_phases).unwrap_or_default();
        {
            let conn = self.lock();
            let old_token: Option<Option<String>> = conn
                .query_row("SELECT token FROM clients WHERE mac = ?1", [&mac], |r| r.get(0))
                .optional()
                .map_err(|e| self.sql(e))?;
            let same_boot = matches!((&old_token, &hello.resume_token), (Some(Some(a)), Some(b)) if a == b);
            let new_boot = i64::from(!same_boot);
            conn.execute(
                "INSERT INTO clients (mac, first_seen, last_seen, address, state, boots, hardware, boot_ms, boot_phases, viewer, token)
                 VALUES (?1, ?2, ?2, ?3, 'online', 1, ?4, ?5, ?6, NULL, ?7)
                 ON CONFLICT(mac) DO UPDATE SET last_seen = ?2, address = ?3, state = 'online',
                    boots = boots + ?8, hardware = ?4,
                    boot_ms = CASE WHEN ?8 = 1 THEN ?5 ELSE boot_ms END,
                    boot_phases = CASE WHEN ?8 = 1 THEN ?6 ELSE boot_phases END,
                    viewer = CASE WHEN ?8 = 1 THEN NULL ELSE viewer END,
                    token = ?7",
                params![mac, now as i64, hello.ipv4.to_string(), hw_json, hello.boot_ms as i64, phases_json, token, new_boot],
            )
            .map_err(|e| self.sql(e))?;
        }
        self.get(&mac)?.ok_or_else(|| self.sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Sets the state (and the last-seen time).
    pub fn set_state(&self, mac: &str, state: ClientState, now: u64) -> Result<(), RegistryError> {
        self.lock()
            .execute(
                "UPDATE clients SET state = ?2, last_seen = ?3 WHERE mac = ?1",
                params![mac, state.as_str(), now as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The connection ended: offline, unless the admin sent it away on purpose.
    pub fn disconnected(&self, mac: &str, now: u64) -> Result<(), RegistryError> {
        self.lock()
            .execute(
                "UPDATE clients SET state = 'offline', last_seen = ?2 WHERE mac = ?1 AND state = 'online'",
                params![mac, now as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn seen(&self, mac: &str, now: u64) -> Result<(), RegistryError> {
        self.lock()
            .execute("UPDATE clients SET last_seen = ?2 WHERE mac = ?1", params![mac, now as i64])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn set_viewer(&self, mac: &str, viewer: &str, now: u64) -> Result<(), RegistryError> {
        self.lock()
            .execute(
                "UPDATE clients SET viewer = ?2, last_seen = ?3 WHERE mac = ?1",
                params![mac, viewer, now as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn get(&self, mac: &str) -> Result<Option<ClientRecord>, RegistryError> {
        Ok(self.query("WHERE mac = ?1", &[&mac])?.pop())
    }

    /// Every client, most recently seen first.
    pub fn list(&self) -> Result<Vec<ClientRecord>, RegistryError> {
        self.query("ORDER BY last_seen DESC, mac", &[])
    }

    fn query(&self, tail: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<ClientRecord>, RegistryError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT mac, first_seen, last_seen, address, state, boots, hardware, boot_ms, boot_phases, viewer
                 FROM clients {tail}"
            ))
            .map_err(|e| self.sql(e))?;
        type Row = (String, i64, i64, String, String, i64, String, i64, String, Option<String>);
        let rows: Vec<Row> = stmt
            .query_map(args, |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?))
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        rows.into_iter()
            .map(|(mac, first, last, address, state, boots, hw, boot_ms, phases, viewer)| {
                let json = |source| RegistryError::Json { path: self.path.clone(), mac: mac.clone(), source };
                Ok(ClientRecord {
                    hardware: serde_json::from_str(&hw).map_err(json)?,
                    boot_phases: serde_json::from_str(&phases).map_err(json)?,
                    mac,
                    first_seen: first as u64,
                    last_seen: last as u64,
                    address,
                    state: ClientState::parse(&state),
                    boots: boots as u64,
                    boot_ms: boot_ms as u64,
                    viewer,
                })
            })
            .collect()
    }
}

/// A registry call queued for the registry's thread.
enum Op {
    Seen { mac: String, now: u64 },
    Viewer { mac: String, text: String, now: u64 },
    State { mac: String, state: ClientState, now: u64 },
    Disconnected { mac: String, now: u64 },
    Announce { hello: Box<Hello>, token: String, now: u64, reply: Reply<ClientRecord> },
    Get { mac: String, reply: Reply<Option<ClientRecord>> },
    List { reply: Reply<Vec<ClientRecord>> },
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, RegistryError>>;

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    /// Where the pending pong (false) or status (true) of a client sits in `ops`: a newer one
    /// replaces it there.
    latest: HashMap<(String, bool), usize>,
    /// Something waits for an answer or changes a state: do not wait for the flush interval.
    urgent: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The registry as the async code uses it: every call runs on a thread of its own, so that
/// SQLite and its fsyncs never hold a runtime thread. Pongs and statuses are coalesced (the
/// last per client wins) and written together once per flush interval, in one transaction;
/// announces, state changes and reads go at once, after everything queued before them.
pub struct Recorder {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    pub fn start(registry: Registry, flush: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { queue: Mutex::default(), wake: Condvar::new() });
        let path = registry.path.clone();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("registry".into())
            .spawn(move || writer(registry, s, flush))?;
        Ok(Recorder { path, shared, thread: Some(thread) })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, op: Op, urgent: bool) {
        let mut q = self.queue();
        let key = match &op {
            Op::Seen { mac, .. } => Some((mac.clone(), false)),
            Op::Viewer { mac, .. } => Some((mac.clone(), true)),
            _ => None,
        };
        match key.as_ref().and_then(|k| q.latest.get(k).copied()) {
            Some(i) => q.ops[i] = op,
            None => {
                q.ops.push(op);
                if let Some(k) = key {
                    let i = q.ops.len() - 1;
                    q.latest.insert(k, i);
                }
            }
        }
        q.urgent |= urgent;
        drop(q);
        self.shared.wake.notify_one();
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, RegistryError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.push(make(tx), true);
        rx.await.unwrap_or_else(|_| Err(RegistryError::Stopped { path: self.path.clone() }))
    }

    /// An agent answered a ping: written with the next batch.
    pub fn seen(&self, mac: &str, now: u64) {
        self.push(Op::Seen { mac: mac.into(), now }, false);
    }

    /// An agent reported its viewer's state: written with the next batch.
    pub fn set_viewer(&self, mac: &str, viewer: &str, now: u64) {
        self.push(Op::Viewer { mac: mac.into(), text: viewer.into(), now }, false);
    }

    pub fn set_state(&self, mac: &str, state: ClientState, now: u64) {
        self.push(Op::State { mac: mac.into(), state, now }, true);
        crate::web::events::emit(crate::web::events::Kind::Clients);
    }

    pub fn disconnected(&self, mac: &str, now: u64) {
        self.push(Op::Disconnected { mac: mac.into(), now }, true);
        crate::web::events::emit(crate::web::events::Kind::Clients);
    }

    pub async fn announce(&self, hello: &Hello, token: &str, now: u64) -> Result<ClientRecord, RegistryError> {
        let (hello, token) = (Box::new(hello.clone()), token.to_string());
        let record = self.ask(|reply| Op::Announce { hello, token, now, reply }).await;
        crate::web::events::emit(crate::web::events::Kind::Clients);
        record
    }

    pub async fn get(&self, mac: &str) -> Result<Option<ClientRecord>, RegistryError> {
        let mac = mac.to_string();
        self.ask(|reply| Op::Get { mac, reply }).await
    }

    pub async fn list(&self) -> Result<Vec<ClientRecord>, RegistryError> {
        self.ask(|reply| Op::List { reply }).await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.queue().closed = true;
        self.shared.wake.notify_one();
        // The thread writes what is queued and ends; no runtime is involved.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The registry's thread: waits for work, then applies everything queued in one transaction.
fn writer(registry: Registry, shared: Arc<Shared>, flush: Duration) {
    let mut last = Instant::now();
    loop {
        let (ops, closed) = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if q.closed || q.urgent {
                    break;
                }
                if q.ops.is_empty() {
                    q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                let due = last + flush;
                let now = Instant::now();
                if now >= due {
                    break;
                }
                q = shared.wake.wait_timeout(q, due - now).unwrap_or_else(|p| p.into_inner()).0;
            }
            q.urgent = false;
            q.latest.clear();
            (std::mem::take(&mut q.ops), q.closed)
        };
        if !ops.is_empty() {
            registry.apply(ops);
            last = Instant::now();
        }
        if closed {
            return;
        }
    }
}

impl Registry {
    /// Runs `ops` in order in one transaction (one fsync), then answers those that wait.
    fn apply(&self, ops: Vec<Op>) {
        let log_err = |r: Result<(), RegistryError>| {
            if let Err(e) = r {
                log::error!("{e}");
            }
        };
        let mut answers: Vec<Box<dyn FnOnce()>> = Vec::new();
        log_err(self.lock().execute_batch("BEGIN").map_err(|e| self.sql(e)));
        for op in ops {
            match op {
                Op::Seen { mac, now } => log_err(self.seen(&mac, now)),
                Op::Viewer { mac, text, now } => log_err(self.set_viewer(&mac, &text, now)),
                Op::State { mac, state, now } => log_err(self.set_state(&mac, state, now)),
                Op::Disconnected { mac, now } => log_err(self.disconnected(&mac, now)),
                Op::Announce { hello, token, now, reply } => {
                    let r = self.announce(&hello, &token, now);
                    answers.push(Box::new(move || drop(reply.send(r))));
                }
                Op::Get { mac, reply } => {
                    let r = self.get(&mac);
                    answers.push(Box::new(move || drop(reply.send(r))));
                }
                Op::List { reply } => {
                    let r = self.list();
                    answers.push(Box::new(move || drop(reply.send(r))));
                }
            }
        }
        log_err(self.lock().execute_batch("COMMIT").map_err(|e| self.sql(e)));
        for a in answers {
            a();
        }
    }
}

/// An announce of PC `52:54:00:00:00:{last}` with 256 MiB, for tests.
#[cfg(test)]
pub(crate) fn sample_hello(last: u8) -> Hello {
    Hello {
        version: proto::agent::PROTOCOL,
        mac: proto::agent::MacAddr([0x52, 0x54, 0, 0, 0, last]),
        ipv4: "10.0.0.100".parse().unwrap(),
        cpu_model: "QEMU".into(),
        cpu_count: 1,
        ram_bytes: 256 << 20,
        display_modes: vec![DisplayMode { width: 1024, height: 768, refresh_mhz: None }],
        agent_version: "0.1.0".into(),
        boot_ms: 9000,
        boot_phases: vec![BootPhase { name: "kernel".into(), ms: 1700 }],
        resume_token: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(last: u8, token: Option<&str>) -> Hello {
        Hello { resume_token: token.map(str::to_string), ..sample_hello(last) }
    }

    #[test]
    fn announces_count_boots_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.sqlite");
        {
            let reg = Registry::open(&path).unwrap();
            let r = reg.announce(&hello(1, None), "t1", 100).unwrap();
            assert_eq!((r.boots, r.state, r.first_seen), (1, ClientState::Online, 100));
            // Same boot reconnecting (carries the token it was given): not a new boot.
            let r = reg.announce(&hello(1, Some("t1")), "t2", 110).unwrap();
            assert_eq!((r.boots, r.last_seen), (1, 110));
            // A fresh boot carries no token.
            let r = reg.announce(&hello(1, None), "t3", 120).unwrap();
            assert_eq!(r.boots, 2);
            reg.announce(&hello(2, None), "u1", 130).unwrap();
            reg.set_state("52:54:00:00:00:02", ClientState::Rebooting, 131).unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let all = reg.list().unwrap();
        assert_eq!(all.len(), 2);
        let one = reg.get("52:54:00:00:00:01").unwrap().unwrap();
        assert_eq!(one.first_seen, 100);
        assert_eq!(one.hardware.ram_bytes, 256 << 20);
        assert_eq!(one.boot_phases[0].ms, 1700);
        // Online rows of the previous run are offline now; deliberate states stay.
        assert_eq!(one.state, ClientState::Offline);
        assert_eq!(reg.get("52:54:00:00:00:02").unwrap().unwrap().state, ClientState::Rebooting);
    }

    #[test]
    fn disconnect_keeps_admin_states() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        reg.announce(&hello(1, None), "t", 1).unwrap();
        reg.announce(&hello(2, None), "t", 1).unwrap();
        reg.set_state("52:54:00:00:00:02", ClientState::PoweredOff, 2).unwrap();
        reg.disconnected("52:54:00:00:00:01", 3).unwrap();
        reg.disconnected("52:54:00:00:00:02", 3).unwrap();
        assert_eq!(reg.get("52:54:00:00:00:01").unwrap().unwrap().state, ClientState::Offline);
        assert_eq!(reg.get("52:54:00:00:00:02").unwrap().unwrap().state, ClientState::PoweredOff);
        assert!(reg.get("52:54:00:00:00:09").unwrap().is_none());
    }

    #[tokio::test]
    async fn the_recorder_coalesces_pongs_and_keeps_the_order_of_state_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let rec = Recorder::start(Registry::open(&path).unwrap(), Duration::from_secs(3600)).unwrap();
        rec.announce(&hello(1, None), "t", 10).await.unwrap();
        for now in 11..5000 {
            rec.seen("52:54:00:00:00:01", now);
            rec.set_viewer("52:54:00:00:00:01", "connected", now);
        }
        // One pending pong and one pending status for the PC, whatever the flood.
        assert_eq!(rec.queue().ops.len(), 2);
        // Reboot, then the connection's end: still rebooting (the order holds).
        rec.set_state("52:54:00:00:00:01", ClientState::Rebooting, 5000);
        rec.disconnected("52:54:00:00:00:01", 5001);
        let r = rec.get("52:54:00:00:00:01").await.unwrap().unwrap();
        assert_eq!((r.state, r.last_seen, r.viewer.as_deref()), (ClientState::Rebooting, 5000, Some("connected")));
        // Pending writes reach the file when the recorder goes.
        rec.seen("52:54:00:00:00:01", 6000);
        drop(rec);
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.get("52:54:00:00:00:01").unwrap().unwrap().last_seen, 6000);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }
}
