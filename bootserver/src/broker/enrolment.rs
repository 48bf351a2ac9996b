//! Enrolment: under `[pcs] enrolment = "approve"` a PC gets nothing until an administrator
//! approves its MAC. A PC that announces itself unapproved is recorded as pending with a short
//! code that its screen shows, so that the administrator can tell which row is the PC in front
//! of them; the same PC keeps its code while pending, across reboots.
//!
//! The decision ([`verdict`]) and the codes ([`new_code`]) are pure; [`Enrolments`] keeps the
//! state in SQLite (`enrolment.sqlite` in the state dir, 0600), beside the client registry.

use std::collections::{HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Path, State as With};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Bytes;
use proto::agent::MacAddr;
use rand::Rng;
use tokio::sync::oneshot;

use super::listener::Broker;
use crate::logsafe::Esc;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Deserializer, Serialize};

/// `[pcs] enrolment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrolmentMode {
    /// Every PC is taken as enrolled.
    #[default]
    Open,
    /// A PC waits for an administrator's approval.
    Approve,
}

impl<'de> Deserialize<'de> for EnrolmentMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "open" => Ok(EnrolmentMode::Open),
            "approve" => Ok(EnrolmentMode::Approve),
            other => Err(serde::de::Error::custom(format!(
                "pcs.enrolment: {:?} is not a mode; write enrolment = \"open\" (every PC is taken) or \"approve\" (an administrator approves each PC)",
                Esc(other)
            ))),
        }
    }
}

/// Where a MAC stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Unknown,
    Pending,
    Approved,
    Denied,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "denied" => State::Denied,
            _ => State::Unknown,
        }
    }
}

/// One MAC's enrolment, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub mac: String,
    pub state: State,
    /// Pending only: what the PC's screen shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// When (Unix seconds) and from which address the PC was first seen unapproved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_from: Option<String>,
    /// Who approved or denied it, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
}

impl Entry {
    pub fn unknown(mac: &str) -> Entry {
        Entry {
            mac: mac.into(),
            state: State::Unknown,
            code: None,
            first_seen: None,
            first_from: None,
            decided_by: None,
            decided_at: None,
        }
    }
}

/// What a hello gets, as far as enrolment goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// On to its policy (login screen, kiosk desktop).
    Admit,
    /// The approval screen; a pending entry is made or kept.
    Wait,
    /// Refused.
    Refuse,
}

/// The pure decision: `state` is the MAC's stored state (unknown when there is no row).
pub fn verdict(mode: EnrolmentMode, state: State) -> Verdict {
    match (mode, state) {
        (EnrolmentMode::Open, _) => Verdict::Admit,
        (EnrolmentMode::Approve, State::Approved) => Verdict::Admit,
        (EnrolmentMode::Approve, State::Denied) => Verdict::Refuse,
        (EnrolmentMode::Approve, State::Unknown | State::Pending) => Verdict::Wait,
    }
}

/// No 0/O, 1/I: a code is read aloud or copied from a screen.
pub const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// A code like `K7Q-2MX` that is not in `taken`. 32^6 codes: with a few hundred pending PCs a
/// draw collides about once in a million, so the loop ends at once in practice.
pub fn new_code(rng: &mut impl Rng, taken: &HashSet<String>) -> String {
    loop {
        let mut code = String::with_capacity(7);
        for i in 0..6 {
            if i == 3 {
                code.push('-');
            }
            code.push(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char);
        }
        if !taken.contains(&code) {
            return code;
        }
    }
}

/// A code as an admin may type it: any case, with or without the dash, spaces around.
pub fn normalize_code(text: &str) -> Option<String> {
    let chars: Vec<char> = text.trim().chars().filter(|c| *c != '-' && *c != ' ').map(|c| c.to_ascii_uppercase()).collect();
    if chars.len() != 6 || !chars.iter().all(|c| c.is_ascii() && CODE_ALPHABET.contains(&(*c as u8))) {
        return None;
    }
    let s: String = chars.into_iter().collect();
    Some(format!("{}-{}", &s[..3], &s[3..]))
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("enrolment database {path}: {source}")]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error(transparent)]
    Create(#[from] crate::statefile::StateFileError),
    #[error("enrolment database {path}: its worker stopped: {detail}")]
    Stopped { path: PathBuf, detail: String },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS enrolment (
    mac         TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    code        TEXT,
    first_seen  INTEGER,
    first_from  TEXT,
    decided_by  TEXT,
    decided_at  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS pending_codes ON enrolment(code) WHERE state = 'pending';";

/// The enrolment table. Calls block (SQLite); they are rare (a hello, an admin's decision),
/// and the async code runs them with `spawn_blocking`.
pub struct Enrolments {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Enrolments {
    pub const FILE: &'static str = "enrolment.sqlite";

    pub fn open(path: &FsPath) -> Result<Self, EnrolError> {
        let sql = |source| EnrolError::Sql { path: path.to_path_buf(), source };
        crate::statefile::create_private(path)?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Enrolments { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    fn sql(&self, source: rusqlite::Error) -> EnrolError {
        EnrolError::Sql { path: self.path.clone(), source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, mac: &str) -> Result<Entry, EnrolError> {
        Ok(self.query("WHERE mac = ?1", &[&mac])?.pop().unwrap_or_else(|| Entry::unknown(mac)))
    }

    pub fn list(&self) -> Result<Vec<Entry>, EnrolError> {
        self.query("ORDER BY mac", &[])
    }

    /// The MAC of the pending entry with `code`.
    pub fn by_code(&self, code: &str) -> Result<Option<String>, EnrolError> {
        self.lock()
            .query_row("SELECT mac FROM enrolment WHERE state = 'pending' AND code = ?1", [code], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// An unapproved PC was seen at `from`: its pending entry, made now with a fresh code
    /// unless it has one. Approved and denied entries are returned as they are.
    pub fn seen(&self, mac: &str, from: &str, now: u64) -> Result<Entry, EnrolError> {
        {
            let conn = self.lock();
            let tx = conn.unchecked_transaction().map_err(|e| self.sql(e))?;
            let state: Option<String> = tx
                .query_row("SELECT state FROM enrolment WHERE mac = ?1", [mac], |r| r.get(0))
                .optional()
                .map_err(|e| self.sql(e))?;
            if matches!(state.as_deref().map(State::parse), None | Some(State::Unknown)) {
                let taken: HashSet<String> = tx
                    .prepare("SELECT code FROM enrolment WHERE state = 'pending'")
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(|e| self.sql(e))?;
                let code = new_code(&mut rand::rngs::OsRng, &taken);
                tx.execute(
                    "INSERT INTO enrolment (mac, state, code, first_seen, first_from) VALUES (?1, 'pending', ?2, ?3, ?4)
                     ON CONFLICT(mac) DO UPDATE SET state = 'pending', code = ?2, first_seen = ?3, first_from = ?4",
                    params![mac, code, now as i64, from],
                )
                .map_err(|e| self.sql(e))?;
            }
            tx.commit().map_err(|e| self.sql(e))?;
        }
        self.get(mac)
    }

    /// An administrator's decision; a MAC never seen may be approved or denied beforehand.
    pub fn decide(&self, mac: &str, approve: bool, by: &str, now: u64) -> Result<Entry, EnrolError> {
        let state = if approve { State::Approved } else { State::Denied };
        self.lock()
            .execute(
                "INSERT INTO enrolment (mac, state, decided_by, decided_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(mac) DO UPDATE SET state = ?2, code = NULL, decided_by = ?3, decided_at = ?4",
                params![mac, state.as_str(), by, now as i64],
            )
            .map_err(|e| self.sql(e))?;
        self.get(mac)
    }

    fn query(&self, tail: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Entry>, EnrolError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT mac, state, code, first_seen, first_from, decided_by, decided_at FROM enrolment {tail}"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(Entry {
                    mac: r.get(0)?,
                    state: State::parse(&r.get::<_, String>(1)?),
                    code: r.get(2)?,
                    first_seen: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    first_from: r.get(4)?,
                    decided_by: r.get(5)?,
                    decided_at: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                })
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e));
        rows
    }
}

/// The approved MACs, shared with the DHCP server.
pub type Approved = Arc<RwLock<HashSet<String>>>;

/// The enrolment table as the broker uses it: the blocking calls off the runtime threads, and
/// the connections of pending PCs that wait for a decision.
pub struct Gate {
    store: Arc<Enrolments>,
    /// The approved MACs, for the DHCP server (`pxe_enrolled_only`).
    approved: Approved,
    /// The denied MACs: with `approved`, every decision, read where a waiter registers.
    denied: RwLock<HashSet<String>>,
    /// Pending PCs connected now: MAC to (connection id, where the decision goes).
    waiting: Mutex<HashMap<String, (u64, oneshot::Sender<bool>)>>,
}

impl Gate {
    pub fn new(store: Enrolments) -> Result<Self, EnrolError> {
        let entries = store.list()?;
        let of = |state| entries.iter().filter(|e| e.state == state).map(|e| e.mac.clone()).collect::<HashSet<_>>();
        let (approved, denied) = (of(State::Approved), of(State::Denied));
        Ok(Gate {
            store: Arc::new(store),
            approved: Arc::new(RwLock::new(approved)),
            denied: RwLock::new(denied),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// The gate over `enrolment.sqlite` in `state_dir`.
    pub fn open_in(state_dir: &FsPath) -> anyhow::Result<Self> {
        let store = Enrolments::open(&state_dir.join(Enrolments::FILE))?;
        Ok(Gate::new(store)?)
    }

    pub fn approved(&self) -> Approved {
        self.approved.clone()
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Enrolments) -> Result<T, EnrolError> + Send + 'static,
    ) -> Result<T, EnrolError> {
        let store = self.store.clone();
        let path = store.path.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or_else(|e| Err(EnrolError::Stopped { path, detail: e.to_string() }))
    }

    pub async fn get(&self, mac: &str) -> Result<Entry, EnrolError> {
        let mac = mac.to_string();
        self.run(move |s| s.get(&mac)).await
    }

    pub async fn list(&self) -> Result<Vec<Entry>, EnrolError> {
        self.run(|s| s.list()).await
    }

    pub async fn seen(&self, mac: &str, from: &str, now: u64) -> Result<Entry, EnrolError> {
        let (mac, from) = (mac.to_string(), from.to_string());
        let entry = self.run(move |s| s.seen(&mac, &from, now)).await;
        crate::web::events::emit(crate::web::events::Kind::Enrolment);
        entry
    }

    pub async fn by_code(&self, code: &str) -> Result<Option<String>, EnrolError> {
        let code = code.to_string();
        self.run(move |s| s.by_code(&code)).await
    }

    /// Connection `conn` of `mac` shows the approval screen: the decision arrives here.
    ///
    /// The hello read the PC's entry before this: a decision made in between found no waiter
    /// to tell, so it is read here. Under the waiters' lock, which [`Gate::decide`] takes only
    /// after its decision is in the sets: either this sees the decision or `decide` sees the
    /// waiter.
    pub fn wait(&self, mac: &str, conn: u64) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        match self.decided(mac) {
            Some(approve) => {
                let _ = tx.send(approve);
            }
            None => {
                waiting.insert(mac.to_string(), (conn, tx));
            }
        }
        rx
    }

    /// The decision on `mac` so far, if any.
    fn decided(&self, mac: &str) -> Option<bool> {
        if self.approved.read().unwrap_or_else(|e| e.into_inner()).contains(mac) {
            Some(true)
        } else if self.denied.read().unwrap_or_else(|e| e.into_inner()).contains(mac) {
            Some(false)
        } else {
            None
        }
    }

    /// Connection `conn` of `mac` ended.
    pub fn forget(&self, mac: &str, conn: u64) {
        let mut w = self.lock();
        if w.get(mac).is_some_and(|(c, _)| *c == conn) {
            w.remove(mac);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, oneshot::Sender<bool>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the decision and hands it to the PC's live connection, if it waits.
    pub async fn decide(&self, mac: &str, approve: bool, by: &str) -> Result<Entry, EnrolError> {
        let (m, b) = (mac.to_string(), by.to_string());
        let entry = self.run(move |s| s.decide(&m, approve, &b, crate::broker::registry::now_secs())).await?;
        crate::web::events::emit(crate::web::events::Kind::Enrolment);
        {
            let mut set = self.approved.write().unwrap_or_else(|e| e.into_inner());
            let mut denied = self.denied.write().unwrap_or_else(|e| e.into_inner());
            if approve {
                set.insert(mac.to_string());
                denied.remove(mac);
            } else {
                set.remove(mac);
                denied.insert(mac.to_string());
            }
        }
        let waiter = self.lock().remove(mac);
        let live = waiter.is_some_and(|(_, tx)| tx.send(approve).is_ok());
        log::info!(
            "enrolment: {mac} {} by {}{}",
            if approve { "approved" } else { "denied" },
            Esc(by),
            if live { " (its connection is told now)" } else { "" }
        );
        Ok(entry)
    }
}

/// `POST /api/clients/{mac}/approve` and `/deny`: the body may name who decides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct By {
    by: Option<String>,
}

/// `POST /api/enrolment`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ByCode {
    pub code: String,
    pub approve: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Who decided, as the log and the table show it: the body's `by`, else "admin API".
fn who(by: Option<String>) -> Result<String, Response> {
    match by {
        None => Ok("admin API".into()),
        Some(b) if !b.trim().is_empty() && b.chars().count() <= 64 && !b.chars().any(char::is_control) => Ok(b),
        Some(_) => Err(error(StatusCode::BAD_REQUEST, "by: use 1 to 64 printable characters")),
    }
}

fn gate(broker: &Broker) -> Result<&Arc<Gate>, Response> {
    broker.enrolments.as_ref().ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "enrolment is not kept by this server"))
}

async fn decide_mac(broker: Arc<Broker>, mac: String, body: Bytes, approve: bool) -> Response {
    let mac = match mac.parse::<MacAddr>() {
        Ok(m) => m.to_string(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let by: By = if body.iter().all(u8::is_ascii_whitespace) {
        By::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}; send {{}} or {{\"by\": \"NAME\"}}")),
        }
    };
    let (gate, by) = match (gate(&broker), who(by.by)) {
        (Ok(g), Ok(b)) => (g, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    match gate.decide(&mac, approve, &by).await {
        Ok(entry) => Json(entry).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn approve(With(broker): With<Arc<Broker>>, Path(mac): Path<String>, body: Bytes) -> Response {
    decide_mac(broker, mac, body, true).await
}

async fn deny(With(broker): With<Arc<Broker>>, Path(mac): Path<String>, body: Bytes) -> Response {
    decide_mac(broker, mac, body, false).await
}

async fn by_code(With(broker): With<Arc<Broker>>, Json(req): Json<ByCode>) -> Response {
    let Some(code) = normalize_code(&req.code) else {
        return error(StatusCode::BAD_REQUEST, "code: write it as the PC's screen shows it, e.g. K7Q-2MX");
    };
    let (gate, by) = match (gate(&broker), who(req.by)) {
        (Ok(g), Ok(b)) => (g, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let mac = match gate.by_code(&code).await {
        Ok(Some(mac)) => mac,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no PC waits with code {code}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match gate.decide(&mac, req.approve, &by).await {
        Ok(entry) => Json(entry).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list(With(broker): With<Arc<Broker>>) -> Response {
    let gate = match gate(&broker) {
        Ok(g) => g,
        Err(r) => return r,
    };
    match gate.list().await {
        Ok(all) => Json(all).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The enrolment routes of the admin API (behind its guard).
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/api/clients/:mac/approve", post(approve))
        .route("/api/clients/:mac/deny", post(deny))
        .route("/api/enrolment", get(list).post(by_code))
        .with_state(broker)
}

/// `bootserver client MAC approve|deny` and `bootserver enrol CODE`: sends the decision,
/// prints the entry.
pub fn send_decision(api: &crate::admin::Endpoint, path: &str, body: String) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, answer) = rt.block_on(crate::admin::request(api, "POST", path, Some(body)))?;
    if status != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(answer);
        anyhow::bail!("{msg} (admin API answered {status})");
    }
    let e: Entry = serde_json::from_str(&answer).map_err(|e| anyhow::anyhow!("the admin API sent unreadable JSON: {e}"))?;
    println!("{}: {}", e.mac, e.state.as_str());
    Ok(())
}

/// Who runs the command, for `by`.
pub fn cli_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).map(|u| format!("{u} (cli)")).unwrap_or_else(|| "cli".into())
}

/// The enrolment column of `bootserver clients`: the state, and the code of a pending PC.
pub fn column(entry: Option<&Entry>) -> String {
    match entry {
        None => "-".into(),
        Some(Entry { state: State::Pending, code: Some(c), .. }) => format!("pending {c}"),
        Some(e) => e.state.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_verdict_follows_the_mode_and_the_state() {
        use State::*;
        for s in [Unknown, Pending, Approved, Denied] {
            assert_eq!(verdict(EnrolmentMode::Open, s), Verdict::Admit);
        }
        assert_eq!(verdict(EnrolmentMode::Approve, Unknown), Verdict::Wait);
        assert_eq!(verdict(EnrolmentMode::Approve, Pending), Verdict::Wait);
        assert_eq!(verdict(EnrolmentMode::Approve, Approved), Verdict::Admit);
        assert_eq!(verdict(EnrolmentMode::Approve, Denied), Verdict::Refuse);
    }

    #[test]
    fn codes_are_readable_and_avoid_the_taken_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut taken = HashSet::new();
        for _ in 0..2000 {
            let c = new_code(&mut rng, &taken);
            assert_eq!(c.len(), 7);
            assert_eq!(&c[3..4], "-");
            assert!(!c.contains(['0', 'O', '1', 'I']), "{c}");
            assert_eq!(normalize_code(&c.to_lowercase().replace('-', "")).as_deref(), Some(c.as_str()));
            assert!(taken.insert(c));
        }
        // The same draws again, the first one taken: the next one is given instead.
        let first = new_code(&mut rand::rngs::StdRng::seed_from_u64(1), &HashSet::new());
        let second = new_code(&mut rand::rngs::StdRng::seed_from_u64(1), &HashSet::from([first.clone()]));
        assert_ne!(first, second);
        assert_eq!(normalize_code(" k7q 2mx "), Some("K7Q-2MX".into()));
        for bad in ["K7Q-2M0", "K7Q2M", "K7Q-2MXX", "", "K7Q-2MI"] {
            assert_eq!(normalize_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_pending_pc_keeps_its_code_until_decided_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(Enrolments::FILE);
        let (a, b) = ("52:54:00:00:00:01", "52:54:00:00:00:02");
        let code = {
            let e = Enrolments::open(&path).unwrap();
            assert_eq!(e.get(a).unwrap().state, State::Unknown);
            let first = e.seen(a, "10.0.0.5", 100).unwrap();
            assert_eq!((first.state, first.first_seen, first.first_from.as_deref()), (State::Pending, Some(100), Some("10.0.0.5")));
            let other = e.seen(b, "10.0.0.6", 101).unwrap();
            assert_ne!(other.code, first.code);
            first.code.unwrap()
        };
        // A reboot (and a broker restart): the same code, the first sighting kept.
        let e = Enrolments::open(&path).unwrap();
        let again = e.seen(a, "10.0.0.9", 200).unwrap();
        assert_eq!((again.code.as_deref(), again.first_seen), (Some(code.as_str()), Some(100)));
        assert_eq!(e.by_code(&code).unwrap().as_deref(), Some(a));
        let ok = e.decide(a, true, "admin", 300).unwrap();
        assert_eq!((ok.state, ok.code, ok.decided_by.as_deref(), ok.decided_at), (State::Approved, None, Some("admin"), Some(300)));
        assert_eq!(e.by_code(&code).unwrap(), None);
        // Approved stays approved when seen; a MAC never seen can be denied beforehand.
        assert_eq!(e.seen(a, "10.0.0.5", 400).unwrap().state, State::Approved);
        assert_eq!(e.decide("52:54:00:00:00:03", false, "admin", 500).unwrap().state, State::Denied);
        assert_eq!(e.seen("52:54:00:00:00:03", "10.0.0.7", 501).unwrap().state, State::Denied);
        assert_eq!(e.list().unwrap().len(), 3);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A decision between the hello's lookup (pending) and the connection's wait reaches the
    /// wait; one made after the wait is pushed to it.
    #[tokio::test]
    async fn a_decision_made_before_the_wait_still_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::open_in(dir.path()).unwrap();
        let (a, b, c) = ("52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03");
        for mac in [a, b, c] {
            assert_eq!(gate.seen(mac, "10.0.0.5", 100).await.unwrap().state, State::Pending);
        }
        gate.decide(a, true, "admin").await.unwrap();
        gate.decide(b, false, "admin").await.unwrap();
        // Already decided: the answer is there at once, not at the next decision.
        let now = |rx| tokio::time::timeout(std::time::Duration::from_secs(5), rx);
        assert_eq!(now(gate.wait(a, 1)).await.expect("the approval is lost"), Ok(true));
        assert_eq!(now(gate.wait(b, 2)).await.expect("the denial is lost"), Ok(false));
        let waits = gate.wait(c, 3);
        gate.decide(c, true, "admin").await.unwrap();
        assert_eq!(waits.await, Ok(true));
        // A broker restarted after the decisions knows them too.
        drop(gate);
        let gate = Gate::open_in(dir.path()).unwrap();
        assert_eq!(now(gate.wait(b, 4)).await.unwrap(), Ok(false));
        assert_eq!(now(gate.wait(a, 5)).await.unwrap(), Ok(true));
    }

    #[test]
    fn a_bad_mode_names_the_key_and_the_fix() {
        let err = toml::from_str::<PcsMode>("enrolment = \"closed\"").err().unwrap().to_string();
        assert!(err.contains("pcs.enrolment") && err.contains("\"approve\""), "{err}");
        assert_eq!(toml::from_str::<PcsMode>("enrolment = \"approve\"").unwrap().enrolment, EnrolmentMode::Approve);
    }

    #[derive(Deserialize)]
    struct PcsMode {
        enrolment: EnrolmentMode,
    }
}
