//! The session store: every running desktop (user, host, VM, level, memory, the SHA-256 of its
//! proxy token, the VM's VNC address and password), kept in SQLite so that a restarted broker
//! finds its sessions again. A row is written when a desktop starts, gets a new token or is
//! handed off, and removed when it stops. The token itself is never written: a file that leaks
//! opens no desktop. The VNC password is stored because a host tells it only once, when the VM
//! is made.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};

/// One stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub user: String,
    pub host: String,
    pub vm: String,
    pub level: usize,
    pub memory_mib: u64,
    /// SHA-256 of the viewer's proxy token, in hex.
    pub token_hash: String,
    /// The VM's VNC server as the proxy reaches it (`host:port` or `unix:/path`).
    pub vnc: String,
    pub vnc_password: Option<String>,
    /// Arrival order, larger is newer (the memory algorithm moves the newest first).
    pub arrived: u64,
    /// Unix seconds.
    pub since: u64,
    /// The template the desktop was made from; `None` in rows of an earlier version (the
    /// deployment's default).
    pub template: Option<String>,
    /// A one-time desktop: its disks are thrown away when it stops.
    pub one_time: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("session store {path}: row of {user}: {detail}")]
    Row { path: PathBuf, user: String, detail: String },
    #[error(transparent)]
    Create(#[from] crate::statefile::StateFileError),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    user         TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    vm           TEXT NOT NULL,
    level        INTEGER NOT NULL,
    memory_mib   INTEGER NOT NULL,
    token_sha256 TEXT NOT NULL,
    vnc          TEXT NOT NULL,
    vnc_password TEXT,
    arrived      INTEGER NOT NULL,
    since        INTEGER NOT NULL,
    template     TEXT,
    one_time     INTEGER NOT NULL DEFAULT 0
);";

/// The SQLite-backed store; one short write per start, handoff or stop, so one connection
/// behind a mutex is plenty.
pub struct SessionStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SessionStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let sql = |source| StoreError::Sql { path: path.to_path_buf(), source };
        // Tokens and VNC passwords: 0600 before SQLite opens it (its journal takes the mode).
        crate::statefile::create_private(path)?;
        let conn = Connection::open(path).map_err(sql)?;
        upgrade(&conn).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        add_spec_columns(&conn).map_err(sql)?;
        Ok(SessionStore { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql { path: self.path.clone(), source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces the user's session.
    pub fn put(&self, s: &StoredSession) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO sessions
                   (user, host, vm, level, memory_mib, token_sha256, vnc, vnc_password, arrived, since,
                    template, one_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    s.user,
                    s.host,
                    s.vm,
                    s.level as i64,
                    s.memory_mib as i64,
                    s.token_hash,
                    s.vnc,
                    s.vnc_password,
                    s.arrived as i64,
                    s.since as i64,
                    s.template,
                    s.one_time
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn delete(&self, user: &str) -> Result<(), StoreError> {
        self.lock().execute("DELETE FROM sessions WHERE user = ?1", [user]).map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every stored session, oldest arrival first.
    pub fn all(&self) -> Result<Vec<StoredSession>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT user, host, vm, level, memory_mib, token_sha256, vnc, vnc_password, arrived, since,
                        template, one_time
                 FROM sessions ORDER BY arrived, user",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    (r.get::<_, Option<String>>(10)?, r.get::<_, bool>(11)?),
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (user, host, vm, level, memory_mib, token_hash, vnc, vnc_password, arrived, since, (template, one_time)) =
                row.map_err(|e| self.sql(e))?;
            let unsigned = |what: &str, v: i64| {
                u64::try_from(v).map_err(|_| StoreError::Row {
                    path: self.path.clone(),
                    user: user.clone(),
                    detail: format!("{what} is {v}"),
                })
            };
            out.push(StoredSession {
                level: unsigned("level", level)? as usize,
                memory_mib: unsigned("memory_mib", memory_mib)?,
                arrived: unsigned("arrived", arrived)?,
                since: unsigned("since", since)?,
                user,
                host,
                vm,
                token_hash,
                vnc,
                vnc_password,
                template,
                one_time,
            });
        }
        Ok(out)
    }
}

/// A store of an earlier version kept the tokens themselves (column `token`): the column
/// becomes `token_sha256` and each token its hash, so that no token stays on disk.
fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let old: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('sessions') WHERE name = 'token'",
        [],
        |r| r.get(0),
    )?;
    if !old {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch("ALTER TABLE sessions RENAME COLUMN token TO token_sha256")?;
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT user, token_sha256 FROM sessions")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (user, token) in rows {
        let hash = super::proxy::auth::hash_hex(&super::proxy::auth::token_hash(&token));
        tx.execute("UPDATE sessions SET token_sha256 = ?2 WHERE user = ?1", params![user, hash])?;
    }
    tx.commit()?;
    // The plaintext may linger in free pages of the file until SQLite reuses them.
    conn.execute_batch("VACUUM")
}

/// A store of an earlier version has no desktop spec: its desktops were all persistent ones
/// of the default template.
fn add_spec_columns(conn: &Connection) -> rusqlite::Result<()> {
    let has = |col: &str| -> rusqlite::Result<bool> {
        conn.query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('sessions') WHERE name = ?1", [col], |r| r.get(0))
    };
    if !has("template")? {
        conn.execute_batch("ALTER TABLE sessions ADD COLUMN template TEXT")?;
    }
    if !has("one_time")? {
        conn.execute_batch("ALTER TABLE sessions ADD COLUMN one_time INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, arrived: u64) -> StoredSession {
        StoredSession {
            user: user.into(),
            host: "h1".into(),
            vm: format!("{user}-1"),
            level: 0,
            memory_mib: 256,
            token_hash: crate::broker::proxy::auth::hash_hex(&crate::broker::proxy::auth::token_hash("AbCd1234")),
            vnc: "127.0.0.1:5901".into(),
            vnc_password: Some("secret".into()),
            arrived,
            since: 1_700_000_000,
            template: (arrived > 0).then(|| "office".to_string()),
            one_time: arrived > 0,
        }
    }

    #[test]
    fn survives_reopen_follows_handoffs_and_forgets_stopped_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite");
        let store = SessionStore::open(&path).unwrap();
        let (a, b) = (session("u-a", 1), session("u-b", 0));
        store.put(&a).unwrap();
        store.put(&b).unwrap();
        drop(store);

        let store = SessionStore::open(&path).unwrap();
        assert_eq!(store.all().unwrap(), vec![b.clone(), a.clone()], "oldest arrival first");

        // A handoff replaces the row: new host, VM, level, memory, VNC server (and the hash of
        // the token issued with it).
        let moved = StoredSession {
            host: "h2".into(),
            vm: "u-a-2".into(),
            level: 1,
            memory_mib: 128,
            vnc: "unix:/run/vm.vnc".into(),
            vnc_password: None,
            ..a.clone()
        };
        store.put(&moved).unwrap();
        store.delete("u-b").unwrap();
        store.delete("nobody").unwrap();
        drop(store);

        let store = SessionStore::open(&path).unwrap();
        assert_eq!(store.all().unwrap(), vec![moved]);
    }

    #[test]
    fn a_store_that_kept_tokens_keeps_only_their_hashes_after_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            // That version had no desktop spec either.
            let old = SCHEMA.replace("token_sha256", "token").replace(",\n    template     TEXT,\n    one_time     INTEGER NOT NULL DEFAULT 0", "");
            assert!(!old.contains("one_time"));
            conn.execute_batch(&old).unwrap();
            conn.execute(
                "INSERT INTO sessions VALUES ('u-a', 'h1', 'u-a-1', 0, 256, 'Plain-Token_1', '127.0.0.1:5901', NULL, 1, 2)",
                [],
            )
            .unwrap();
        }
        let store = SessionStore::open(&path).unwrap();
        let rows = store.all().unwrap();
        assert_eq!(rows.len(), 1);
        let want = crate::broker::proxy::auth::hash_hex(&crate::broker::proxy::auth::token_hash("Plain-Token_1"));
        assert_eq!(rows[0].token_hash, want);
        assert_eq!((rows[0].template.as_deref(), rows[0].one_time), (None, false));
        drop(store);
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(13).any(|w| w == b"Plain-Token_1"), "the token is still in the file");
        // Opening again changes nothing.
        assert_eq!(SessionStore::open(&path).unwrap().all().unwrap()[0].token_hash, want);
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite");
        std::fs::write(&path, b"this is not a database, just text that is long enough").unwrap();
        let e = SessionStore::open(&path).err().expect("garbage must not open").to_string();
        assert!(e.contains("sessions.sqlite"), "{e}");
    }
}
