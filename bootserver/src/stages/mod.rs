//! Boot-stage reports per PC (see [`core`]): the DHCP, TFTP, HTTP and NFS services and the
//! broker report to a [`Sink`]; the admin API reads it. Reports live in memory and are
//! written to the registry's SQLite file (`boot_stages` table) by a thread of their own, in
//! one transaction per flush interval, so that a file transfer never waits for a disk.

pub mod api;
pub mod core;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};

pub use self::core::{Caps, DhcpClient, Event, PcBoots, Protocol, ServerMode, StagesView};
use crate::dhcp::LeaseView;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("boot stages in {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error(transparent)]
    Create(#[from] crate::statefile::StateFileError),
    #[error("boot stages in {path}: starting the writer thread: {source}")]
    Thread { path: PathBuf, source: std::io::Error },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS boot_stages (
    mac       TEXT PRIMARY KEY,
    updated   INTEGER NOT NULL,
    announced INTEGER NOT NULL,
    boots     TEXT NOT NULL
);";

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where the services report; cheap to clone. [`Sink::default`] keeps reports in memory only.
#[derive(Clone, Default)]
pub struct Sink {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    core: Mutex<core::Stages>,
    /// Addresses our DHCP bound before this run (the core knows those it saw given).
    leases: Option<LeaseView>,
    store: Option<Store>,
}

impl Sink {
    /// Reports kept in `db` (created 0600 if missing), loaded from it now; addresses that the
    /// core did not see given are looked up in `leases`.
    pub fn open(db: &Path, leases: LeaseView, flush: Duration) -> Result<Sink, StoreError> {
        let sql = |source| StoreError::Sql { path: db.to_path_buf(), source };
        crate::statefile::create_private(db)?;
        let conn = Connection::open(db).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        let mut core = core::Stages::new(Caps::default());
        {
            let mut stmt = conn.prepare("SELECT mac, boots FROM boot_stages ORDER BY updated").map_err(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql)?;
            for (mac, json) in rows {
                match serde_json::from_str::<PcBoots>(&json) {
                    Ok(pc) => core.restore(mac, pc),
                    Err(e) => log::warn!("boot stages in {}: the row of {mac} is unreadable, dropped: {e}", db.display()),
                }
            }
        }
        let store = Store::start(db.to_path_buf(), conn, flush)?;
        Ok(Sink { inner: Arc::new(Inner { core: Mutex::new(core), leases: Some(leases), store: Some(store) }) })
    }

    fn core(&self) -> std::sync::MutexGuard<'_, core::Stages> {
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `event` of `mac` (any spelling `MacAddr` parses).
    pub fn record(&self, mac: &str, event: Event) {
        let Ok(mac) = mac.parse::<proto::agent::MacAddr>().map(|m| m.to_string()) else {
            log::debug!("boot stages: dropped an event of a malformed MAC {}", crate::logsafe::Esc(mac));
            return;
        };
        let mut core = self.core();
        let changed = core.record(&mac, event, now_ms());
        if !changed.is_empty() {
            crate::web::events::emit(crate::web::events::Kind::Stages);
        }
        if let Some(store) = &self.inner.store {
            store.queue(changed.into_iter().map(|m| {
                let pc = core.get(&m).cloned();
                (m, pc)
            }));
        }
    }

    /// Records `event` of the PC at `ip`, if its MAC is known; file servers know only that.
    pub fn record_from(&self, ip: Ipv4Addr, event: Event) {
        let known = self.core().mac_of(ip).map(str::to_string);
        let mac = known.or_else(|| {
            let leases = self.inner.leases.as_ref()?;
            leases.holder(ip, crate::broker::registry::now_secs()).map(|m| m.to_string())
        });
        match mac {
            Some(mac) => self.record(&mac, event),
            None => log::debug!("boot stages: {ip} has no lease of ours; its {event:?} is not recorded"),
        }
    }

    pub fn view(&self, mac: &str) -> Option<StagesView> {
        self.core().view(mac, now_ms())
    }

    /// Every PC with a report, the most recent first.
    pub fn list(&self) -> Vec<StagesView> {
        let now = now_ms();
        let core = self.core();
        let mut all: Vec<StagesView> = core.macs().filter_map(|m| core.view(m, now)).collect();
        all.sort_by_key(|v| (v.since_ms, v.mac.clone()));
        all
    }
}

/// The writer thread: the latest report of each changed PC (None: dropped), written together.
struct Store {
    shared: Arc<(Mutex<Pending>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Pending {
    rows: HashMap<String, Option<PcBoots>>,
    closed: bool,
}

impl Store {
    fn start(path: PathBuf, conn: Connection, flush: Duration) -> Result<Store, StoreError> {
        let shared = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let s = shared.clone();
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("boot-stages".into())
            .spawn(move || write_loop(&p, conn, &s, flush))
            .map_err(|source| StoreError::Thread { path, source })?;
        Ok(Store { shared, thread: Some(thread) })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, rows: impl Iterator<Item = (String, Option<PcBoots>)>) {
        self.pending().rows.extend(rows);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.pending().closed = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(path: &Path, mut conn: Connection, shared: &(Mutex<Pending>, Condvar), flush: Duration) {
    loop {
        let (rows, closed) = {
            let q = shared.0.lock().unwrap_or_else(|p| p.into_inner());
            // Woken early only to close: the rows wait for the interval.
            let (mut q, _) = shared.1.wait_timeout_while(q, flush, |q| !q.closed).unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut q.rows), q.closed)
        };
        if !rows.is_empty() {
            if let Err(e) = write(&mut conn, rows) {
                log::error!("boot stages in {}: {e}", path.display());
            }
        }
        if closed {
            return;
        }
    }
}

fn write(conn: &mut Connection, rows: HashMap<String, Option<PcBoots>>) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for (mac, pc) in rows {
        match pc {
            Some(pc) => {
                let json = serde_json::to_string(&pc).unwrap_or_default();
                tx.execute(
                    "INSERT INTO boot_stages (mac, updated, announced, boots) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(mac) DO UPDATE SET updated = ?2, announced = ?3, boots = ?4",
                    params![mac, pc.updated as i64, pc.announced, json],
                )?;
            }
            None => {
                tx.execute("DELETE FROM boot_stages WHERE mac = ?1", [&mac])?;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_survive_a_restart_and_unknown_addresses_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("clients.sqlite");
        let mac = "52:54:00:00:00:01";
        let ip = Ipv4Addr::new(10, 0, 0, 7);
        {
            let sink = Sink::open(&db, LeaseView::default(), Duration::from_secs(3600)).unwrap();
            let offered = Event::Offered { address: Some(ip), mode: ServerMode::Dhcp, client: DhcpClient::Plain, boot_file: None };
            sink.record("52-54-00-00-00-01", offered);
            let file = |name: &str| Event::File { name: name.into(), protocol: Protocol::Tftp, bytes: Some(3), ms: 1, error: None };
            sink.record_from(ip, file("a"));
            sink.record_from(Ipv4Addr::new(10, 0, 0, 8), file("b"));
            sink.record("not a mac", Event::DesktopShown);
            // Written when the sink goes, not before the interval.
            let rows: i64 = Connection::open(&db).unwrap().query_row("SELECT count(*) FROM boot_stages", [], |r| r.get(0)).unwrap();
            assert_eq!(rows, 0);
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&db).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let sink = Sink::open(&db, LeaseView::default(), Duration::from_secs(3600)).unwrap();
        let v = sink.view(mac).unwrap();
        assert_eq!(v.current.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>(), ["dhcp_offered", "boot_file"]);
        assert_eq!(v.current[1].details["name"], "a");
        assert_eq!(v.stuck.as_deref(), Some("stuck after boot_file"));
        assert_eq!(sink.list().len(), 1);
    }
}
