//! The account store: one SQLite file in the state dir, 0600, in WAL mode with a busy timeout
//! so that `bootserver user ...` can change it while `bootserver serve` reads it.
//!
//! Every method is blocking (SQLite, and argon2 in the callers): async code calls it through
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::core::{validate_name, validate_template, Account, Desktop, InvalidInput, Policy, Role};

/// The store's file in the state dir.
pub const DB_FILE: &str = "accounts.sqlite";

/// How long a write waits for another process's write (the CLI while `serve` runs).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("user {0} already exists; change it with `bootserver user passwd {0}` or remove it with `bootserver user del {0}`")]
    Exists(String),
    #[error("no user {0}; `bootserver user list` shows who exists, `bootserver user add {0}` makes one")]
    NotFound(String),
    #[error("account store {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("account store {path}: row of {user}: {detail}")]
    Row { path: PathBuf, user: String, detail: String },
    #[error(transparent)]
    Create(#[from] crate::statefile::StateFileError),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    name      TEXT PRIMARY KEY,
    phc       TEXT NOT NULL,
    role      TEXT NOT NULL,
    enabled   INTEGER NOT NULL,
    template  TEXT,
    desktop   TEXT NOT NULL,
    created   INTEGER NOT NULL,
    updated   INTEGER NOT NULL
);";

/// What a change to an account sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub enabled: Option<bool>,
    pub role: Option<Role>,
    /// `Some(None)` goes back to the deployment's default template.
    pub template: Option<Option<String>>,
    pub desktop: Option<Desktop>,
    /// A PHC string made by [`super::core::hash_password`].
    pub phc: Option<String>,
}

impl Change {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(Some(t)) = &self.template {
            validate_template(t)?;
        }
        Ok(())
    }
}

/// An account with its hash, for the authentication code only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub account: Account,
    pub phc: String,
}

pub struct AccountStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now() -> u64 {
    crate::broker::registry::now_secs()
}

impl AccountStore {
    /// Opens (creating, 0600) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, AccountError> {
        let sql = |source| AccountError::Sql { path: path.to_path_buf(), source };
        // Password hashes: private before SQLite opens it; its -wal and -shm take its mode.
        crate::statefile::create_private(path)?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(AccountStore { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    /// Opens the store of `state_dir`, making the dir (0700) if needed.
    pub fn open_in(state_dir: &Path) -> Result<Self, AccountError> {
        crate::statefile::private_dir(state_dir)?;
        Self::open(&state_dir.join(DB_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> AccountError {
        AccountError::Sql { path: self.path.clone(), source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `name` with the hash `phc`; refuses a name that exists.
    pub fn add(&self, name: &str, phc: &str, role: Role, policy: &Policy) -> Result<Account, AccountError> {
        validate_name(name)?;
        if let Some(t) = &policy.template {
            validate_template(t)?;
        }
        let t = now();
        let n = self
            .lock()
            .execute(
                "INSERT INTO accounts (name, phc, role, enabled, template, desktop, created, updated)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?6) ON CONFLICT(name) DO NOTHING",
                params![name, phc, role.as_str(), policy.template, policy.desktop.as_str(), t as i64],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(AccountError::Exists(name.to_string()));
        }
        Ok(Account { name: name.into(), role, enabled: true, policy: policy.clone(), created: t, updated: t })
    }

    /// The account `name` with its hash, if it exists.
    pub fn credentials(&self, name: &str) -> Result<Option<Credentials>, AccountError> {
        let conn = self.lock();
        let row = conn
            .query_row(&format!("{SELECT} WHERE name = ?1"), [name], raw)
            .optional()
            .map_err(|e| self.sql(e))?;
        row.map(|r| self.decode(r)).transpose()
    }

    /// The account `name`, without its hash.
    pub fn get(&self, name: &str) -> Result<Option<Account>, AccountError> {
        Ok(self.credentials(name)?.map(|c| c.account))
    }

    /// Every account, by name.
    pub fn list(&self) -> Result<Vec<Account>, AccountError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY name")).map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], raw).map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.decode(r.map_err(|e| self.sql(e))?)?.account);
        }
        Ok(out)
    }

    /// Applies `change` to `name` in one statement; returns the account as it is now.
    pub fn update(&self, name: &str, change: &Change) -> Result<Account, AccountError> {
        change.validate()?;
        let n = self
            .lock()
            .execute(
                "UPDATE accounts SET
                    enabled  = COALESCE(?2, enabled),
                    role     = COALESCE(?3, role),
                    template = CASE WHEN ?4 THEN ?5 ELSE template END,
                    desktop  = COALESCE(?6, desktop),
                    phc      = COALESCE(?7, phc),
                    updated  = ?8
                 WHERE name = ?1",
                params![
                    name,
                    change.enabled,
                    change.role.map(Role::as_str),
                    change.template.is_some(),
                    change.template.clone().flatten(),
                    change.desktop.map(Desktop::as_str),
                    change.phc,
                    now() as i64,
                ],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(AccountError::NotFound(name.to_string()));
        }
        self.get(name)?.ok_or_else(|| AccountError::NotFound(name.to_string()))
    }

    /// Removes `name`.
    pub fn delete(&self, name: &str) -> Result<(), AccountError> {
        let n = self.lock().execute("DELETE FROM accounts WHERE name = ?1", [name]).map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(AccountError::NotFound(name.to_string()));
        }
        Ok(())
    }

    fn decode(&self, r: Raw) -> Result<Credentials, AccountError> {
        let bad = |detail: String| AccountError::Row { path: self.path.clone(), user: r.name.clone(), detail };
        let role = serde_json::from_value(serde_json::Value::String(r.role.clone()))
            .map_err(|_| bad(format!("role {:?} is not user, admin or readonly", r.role)))?;
        let desktop = serde_json::from_value(serde_json::Value::String(r.desktop.clone()))
            .map_err(|_| bad(format!("desktop {:?} is neither persistent nor one-time", r.desktop)))?;
        Ok(Credentials {
            account: Account {
                name: r.name.clone(),
                role,
                enabled: r.enabled,
                policy: Policy { template: r.template, desktop },
                created: r.created.max(0) as u64,
                updated: r.updated.max(0) as u64,
            },
            phc: r.phc,
        })
    }
}

const SELECT: &str = "SELECT name, phc, role, enabled, template, desktop, created, updated FROM accounts";

struct Raw {
    name: String,
    phc: String,
    role: String,
    enabled: bool,
    template: Option<String>,
    desktop: String,
    created: i64,
    updated: i64,
}

fn raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok(Raw {
        name: row.get(0)?,
        phc: row.get(1)?,
        role: row.get(2)?,
        enabled: row.get(3)?,
        template: row.get(4)?,
        desktop: row.get(5)?,
        created: row.get(6)?,
        updated: row.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn add_change_list_delete_and_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = AccountStore::open_in(&state).unwrap();
        let policy = Policy { template: Some("kiosk".into()), desktop: Desktop::OneTime };
        let a = store.add("alice", "$argon2id$x", Role::Admin, &policy).unwrap();
        assert!(a.enabled);
        assert!(matches!(store.add("alice", "h", Role::User, &Policy::default()), Err(AccountError::Exists(_))));
        assert!(matches!(store.add("Bob", "h", Role::User, &Policy::default()), Err(AccountError::Invalid(_))));
        let bad_template = Policy { template: Some("../x".into()), ..Default::default() };
        assert!(store.add("bob", "h", Role::User, &bad_template).is_err());
        store.add("bob", "h", Role::User, &Policy::default()).unwrap();

        let b = store.update("bob", &Change { enabled: Some(false), phc: Some("h2".into()), ..Default::default() }).unwrap();
        assert!(!b.enabled);
        assert_eq!(store.credentials("bob").unwrap().unwrap().phc, "h2");
        let a = store.update("alice", &Change { template: Some(None), role: Some(Role::User), ..Default::default() }).unwrap();
        assert_eq!((a.policy.template, a.policy.desktop, a.role), (None, Desktop::OneTime, Role::User));
        assert!(matches!(store.update("carol", &Change::default()), Err(AccountError::NotFound(_))));

        let names: Vec<String> = store.list().unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["alice", "bob"]);
        store.delete("bob").unwrap();
        assert!(matches!(store.delete("bob"), Err(AccountError::NotFound(_))));
        assert!(store.get("bob").unwrap().is_none());

        // The hashes never leave through the public view.
        assert!(!serde_json::to_string(&store.list().unwrap()).unwrap().contains("argon2"));
        for f in std::fs::read_dir(&state).unwrap() {
            let f = f.unwrap().path();
            assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
        }
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_second_connection_writes_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let one = AccountStore::open_in(dir.path()).unwrap();
        let two = AccountStore::open_in(dir.path()).unwrap();
        one.add("alice", "h", Role::User, &Policy::default()).unwrap();
        two.update("alice", &Change { enabled: Some(false), ..Default::default() }).unwrap();
        assert!(!one.get("alice").unwrap().unwrap().enabled);
    }
}
