//! The state database (SQLite): VMs, users' disks, backups and the history of events.
//! Every write is one statement or one transaction, so a crash of `server-host` leaves it whole.

use std::path::Path;

use proto::host::{DataDisk, Event, EventKind, VmState};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;

/// A VM row: what must survive a restart of `server-host` to re-adopt the QEMU process.
#[derive(Debug, Clone)]
pub(crate) struct VmRow {
    pub name: String,
    pub template: String,
    pub user: String,
    pub persistent: bool,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub state: VmState,
    pub pid: u32,
    pub vnc: String,
    pub data_disk: DataDisk,
    /// Path of the OS overlay this VM writes.
    pub os_disk: String,
    pub os_temporary: bool,
    pub created_at: u64,
}

pub(crate) struct Store {
    db: Connection,
}

fn state_str(s: VmState) -> &'static str {
    match s {
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Stopping => "stopping",
        VmState::Stopped => "stopped",
        VmState::Crashed => "crashed",
    }
}

fn parse_state(s: &str) -> VmState {
    match s {
        "starting" => VmState::Starting,
        "stopping" => VmState::Stopping,
        "stopped" => VmState::Stopped,
        "crashed" => VmState::Crashed,
        _ => VmState::Running,
    }
}

fn kind_str(k: EventKind) -> String {
    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn parse_kind(s: &str) -> EventKind {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(EventKind::Created)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the database, readable by its owner only: it names users and their
    /// disks. SQLite gives its `-wal` and `-shm` files the mode of the database.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        use anyhow::Context;
        crate::images::private_file(path).with_context(|| format!("creating {}", path.display()))?;
        for side in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(side);
            if Path::new(&p).exists() {
                crate::images::private_file(Path::new(&p)).with_context(|| format!("securing {}", Path::new(&p).display()))?;
            }
        }
        let db = Connection::open(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS vms (
               name TEXT PRIMARY KEY, template TEXT NOT NULL, user TEXT NOT NULL,
               persistent INTEGER NOT NULL, memory_mib INTEGER NOT NULL, vcpus INTEGER NOT NULL,
               state TEXT NOT NULL, pid INTEGER NOT NULL, vnc TEXT NOT NULL,
               data_disk TEXT NOT NULL, os_disk TEXT NOT NULL, os_temporary INTEGER NOT NULL,
               created_at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS backups (
               id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, at INTEGER NOT NULL,
               size INTEGER NOT NULL, dir TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS history (
               id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, kind TEXT NOT NULL,
               vm TEXT, user TEXT, size INTEGER, detail TEXT NOT NULL);",
        )
        .map_err(|e| anyhow::anyhow!("creating tables in {}: {e}", path.display()))?;
        Ok(Store { db })
    }

    pub fn insert_vm(&self, v: &VmRow) -> Result<()> {
        self.db.execute(
            "INSERT INTO vms VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
            params![
                v.name, v.template, v.user, v.persistent, v.memory_mib, v.vcpus, state_str(v.state), v.pid,
                v.vnc, data_str(v.data_disk), v.os_disk, v.os_temporary, v.created_at
            ],
        )?;
        Ok(())
    }

    pub fn set_state(&self, name: &str, state: VmState) -> Result<()> {
        self.db.execute("UPDATE vms SET state=?2 WHERE name=?1", params![name, state_str(state)])?;
        Ok(())
    }

    /// The PID of the QEMU just launched for a `starting` VM.
    pub fn set_pid(&self, name: &str, pid: u32) -> Result<()> {
        self.db.execute("UPDATE vms SET pid=?2 WHERE name=?1", params![name, pid])?;
        Ok(())
    }

    pub fn set_data_disk(&self, name: &str, d: DataDisk) -> Result<()> {
        self.db.execute("UPDATE vms SET data_disk=?2 WHERE name=?1", params![name, data_str(d)])?;
        Ok(())
    }

    /// A pool VM now belongs to `user` (persistent: its data disk is the user's own).
    pub fn assign(&self, name: &str, user: &str, d: DataDisk) -> Result<()> {
        self.db.execute(
            "UPDATE vms SET user=?2, persistent=1, data_disk=?3 WHERE name=?1",
            params![name, user, data_str(d)],
        )?;
        Ok(())
    }

    pub fn delete_vm(&self, name: &str) -> Result<()> {
        self.db.execute("DELETE FROM vms WHERE name=?1", params![name])?;
        Ok(())
    }

    pub fn vms(&self) -> Result<Vec<VmRow>> {
        let mut st = self.db.prepare("SELECT * FROM vms ORDER BY created_at, name")?;
        let rows = st.query_map([], |r| {
            Ok(VmRow {
                name: r.get(0)?,
                template: r.get(1)?,
                user: r.get(2)?,
                persistent: r.get(3)?,
                memory_mib: r.get(4)?,
                vcpus: r.get(5)?,
                state: parse_state(&r.get::<_, String>(6)?),
                pid: r.get(7)?,
                vnc: r.get(8)?,
                data_disk: match r.get::<_, String>(9)?.as_str() {
                    "waiting" => DataDisk::Waiting,
                    "none" => DataDisk::None,
                    _ => DataDisk::Attached,
                },
                os_disk: r.get(10)?,
                os_temporary: r.get(11)?,
                created_at: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn vm(&self, name: &str) -> Result<Option<VmRow>> {
        Ok(self.vms()?.into_iter().find(|v| v.name == name))
    }

    pub fn add_backup(&self, user: &str, at: u64, size: u64, dir: &str) -> Result<i64> {
        self.db.execute("INSERT INTO backups (user, at, size, dir) VALUES (?1,?2,?3,?4)", params![user, at, size, dir])?;
        Ok(self.db.last_insert_rowid())
    }

    /// (id, at, size, dir) of a user's backups, oldest first.
    pub fn backups(&self, user: &str) -> Result<Vec<(i64, u64, u64, String)>> {
        let mut st = self.db.prepare("SELECT id, at, size, dir FROM backups WHERE user=?1 ORDER BY id")?;
        let rows = st.query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn record(&self, kind: EventKind, vm: Option<&str>, user: Option<&str>, size: Option<u64>, detail: &str) -> Result<Event> {
        let at_ms = now_ms();
        self.db.execute(
            "INSERT INTO history (at_ms, kind, vm, user, size, detail) VALUES (?1,?2,?3,?4,?5,?6)",
            params![at_ms, kind_str(kind), vm, user, size, detail],
        )?;
        Ok(Event {
            id: self.db.last_insert_rowid(),
            at_ms,
            kind,
            vm: vm.map(str::to_owned),
            user: user.map(str::to_owned),
            size,
            detail: detail.to_owned(),
        })
    }

    /// Events after `since`, optionally of one user or VM, at most `limit`, oldest first.
    pub fn history(&self, since: i64, user: Option<&str>, vm: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        let mut st = self.db.prepare(
            "SELECT id, at_ms, kind, vm, user, size, detail FROM history
             WHERE id > ?1 AND (?2 IS NULL OR user = ?2) AND (?3 IS NULL OR vm = ?3)
             ORDER BY id LIMIT ?4",
        )?;
        let rows = st.query_map(params![since, user, vm, limit], |r| {
            Ok(Event {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                kind: parse_kind(&r.get::<_, String>(2)?),
                vm: r.get(3)?,
                user: r.get(4)?,
                size: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn backup(&self, id: i64) -> Result<Option<(String, String)>> {
        Ok(self
            .db
            .query_row("SELECT user, dir FROM backups WHERE id=?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }
}

fn data_str(d: DataDisk) -> &'static str {
    match d {
        DataDisk::Attached => "attached",
        DataDisk::Waiting => "waiting",
        DataDisk::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_history_and_backups_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        let row = VmRow {
            name: "a".into(),
            template: "t".into(),
            user: "u".into(),
            persistent: true,
            memory_mib: 128,
            vcpus: 1,
            state: VmState::Running,
            pid: 42,
            vnc: "unix:/x".into(),
            data_disk: DataDisk::Waiting,
            os_disk: "/o".into(),
            os_temporary: false,
            created_at: 7,
        };
        s.insert_vm(&row).unwrap();
        assert!(s.insert_vm(&row).is_err(), "duplicate names must be refused by the database too");
        s.set_data_disk("a", DataDisk::Attached).unwrap();
        s.set_state("a", VmState::Stopping).unwrap();
        let got = s.vm("a").unwrap().unwrap();
        assert_eq!((got.state, got.data_disk, got.pid), (VmState::Stopping, DataDisk::Attached, 42));
        let e1 = s.record(EventKind::Created, Some("a"), Some("u"), None, "x").unwrap();
        let e2 = s.record(EventKind::Backup, None, Some("v"), Some(10), "y").unwrap();
        assert!(e2.id > e1.id);
        assert_eq!(s.history(0, Some("v"), None, 10).unwrap(), vec![e2.clone()]);
        assert_eq!(s.history(e1.id, None, None, 10).unwrap(), vec![e2]);
        let b = s.add_backup("u", 5, 99, "/b").unwrap();
        assert_eq!(s.backups("u").unwrap(), vec![(b, 5, 99, "/b".to_string())]);
        assert_eq!(s.backup(b).unwrap(), Some(("u".into(), "/b".into())));
        s.delete_vm("a").unwrap();
        assert!(s.vm("a").unwrap().is_none());
    }

    #[test]
    fn a_starting_vm_is_stored_before_its_pid_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let row = VmRow {
            name: "b".into(),
            template: "t".into(),
            user: "u".into(),
            persistent: false,
            memory_mib: 64,
            vcpus: 1,
            state: VmState::Starting,
            pid: 0,
            vnc: "unix:/x".into(),
            data_disk: DataDisk::Attached,
            os_disk: "/o".into(),
            os_temporary: true,
            created_at: 1,
        };
        {
            let s = Store::open(&path).unwrap();
            s.insert_vm(&row).unwrap();
        }
        // What a restart finds after a crash right after the launch.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.vm("b").unwrap().map(|r| (r.state, r.pid)), Some((VmState::Starting, 0)));
        s.set_pid("b", 77).unwrap();
        s.set_state("b", VmState::Running).unwrap();
        assert_eq!(s.vm("b").unwrap().map(|r| (r.state, r.pid)), Some((VmState::Running, 77)));
        for f in ["s.db", "s.db-wal", "s.db-shm"] {
            let m = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o600, "{f}");
        }
    }
}
