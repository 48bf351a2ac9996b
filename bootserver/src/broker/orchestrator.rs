//! Carries out the memory algorithm's decisions on the hosts and the proxy.
//!
//! One event at a time (arrival, departure, host down or up): the planner decides on the
//! current state, then each action runs in order and is applied to the state only once it has
//! succeeded, so the state always says what really runs. A failed action ends the decision;
//! the next event is planned from what is true.
//!
//! * Start: the host creates the VM, the proxy waits for its first frame, and the user gets a
//!   session token (or, when the user's host died, their live session is switched to it).
//!   Every assignment carries a fresh token, and so does every handoff (sent to the PC as a new
//!   assignment): a token seen on the wire or left in an old viewer opens nothing for long.
//! * Handoff: the replacement VM is created first (the host gives it the user's data disk only
//!   once the old VM has released it: never two writers), the proxy switches the viewer to it
//!   after its first frame, then the old VM is stopped and the host hands the data disk over.
//!   With `balloon` on and both sizes on the same host, the VM is resized in place instead.
//! * Stop: the session ends and the VM powers off.
//! * Refuse: the client is told why on its screen.
//!
//! Every step is logged with its duration and kept for the admin API. Each session is also
//! written to the session store, so that a restarted broker finds it again (see [`recovery`]).

mod recovery;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use proto::host::{CreateVm, VncAddress};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::hosts::{HostChange, HostRegistry};
use super::memory::{Action, Decision, Event, HostState, Levels, Planner, State};
use super::pool::{Pool, PoolVm};
use super::proxy::auth::{token_hash, TokenHash};
use super::proxy::{Backend, Proxy, VncAddr};
use super::settings::BrokerConfig;

/// Decisions kept for the admin API.
const DECISIONS_KEPT: usize = 200;

/// What the broker has to tell a client over the agent protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Show this on the PC's screen (a refusal, a host failure).
    Message { user: String, text: String },
    /// A new assignment for the PC (its token was rotated at a handoff).
    Assignment { user: String, assignment: proto::agent::Assignment },
}

/// The answer to an arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connect the viewer to the proxy with this token.
    Assigned { proxy: SocketAddr, token: String },
    /// No room, or the start failed.
    Refused { message: String },
    /// The user's template is on no host: nothing was started.
    NoTemplate { message: String },
}

/// Which desktop a user gets: the template it is made from, and whether its disks outlive it.
///
/// A one-time desktop is kept on its host under a name of its own ([`host_user`]) as if it
/// were persistent, so that a handoff to another memory size hands its data disk over like a
/// persistent one's; its disks are thrown away (the host's user reset) when it stops and again
/// before it starts, so the next start is clean even if the last reset failed. The host's own
/// `persistent: false` would lose the disk at the first handoff. The separate name keeps a
/// person's persistent disk safe when their policy switches between the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    pub template: String,
    pub one_time: bool,
}

impl Spec {
    pub fn kind(&self) -> &'static str {
        if self.one_time {
            "one-time"
        } else {
            "persistent"
        }
    }
}

/// A user's desktop VM as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Desktop {
    pub user: String,
    pub host: String,
    pub vm: String,
    pub level: usize,
    pub memory_mib: u64,
    pub vnc: String,
    pub template: String,
    /// Its disks are thrown away when it stops.
    pub one_time: bool,
    /// SHA-256 of the session's current token (the token itself is never kept here).
    #[serde(skip)]
    token_hash: TokenHash,
    #[serde(skip)]
    backend: Backend,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

/// One action as it was carried out.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub action: String,
    pub ok: bool,
    pub error: Option<String>,
    pub ms: u64,
    /// Timings of the action's parts (create, first frame, switch, stop, ...).
    pub detail: serde_json::Value,
}

/// A decision and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub at_ms: u64,
    pub decision: Decision,
    pub steps: Vec<Step>,
}

/// The broker's current picture, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub users: usize,
    /// The level a newcomer would get now, `None` when full.
    pub level: Option<usize>,
    pub level_mib: Option<u64>,
    pub levels_mib: Vec<u64>,
    /// `U_m` of that level: how many users it serves while keeping a slot free.
    pub max_users: Option<usize>,
    pub state: State,
}

pub struct Orchestrator {
    planner: Planner,
    cfg: BrokerConfig,
    hosts: Arc<HostRegistry>,
    proxy: Arc<Proxy>,
    proxy_addr: SocketAddr,
    /// Serializes events: one decision is carried out at a time.
    run_lock: tokio::sync::Mutex<()>,
    view: Mutex<View>,
    notices: mpsc::UnboundedSender<Notice>,
    recovery: recovery::Recovery,
    pool: Arc<Pool>,
    /// Where arrivals are counted, for the pool analysis and `/metrics`.
    metrics: std::sync::OnceLock<Arc<super::metrics::Metrics>>,
}

struct View {
    state: State,
    desktops: HashMap<String, Desktop>,
    /// The spec of each arrival being planned (a user with a desktop keeps the desktop's).
    arriving: HashMap<String, Spec>,
    decisions: VecDeque<DecisionRecord>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A name `server-host` accepts (`[a-z0-9][a-z0-9_-]{0,62}`) for a broker user id such as a
/// MAC address. A person's id (`user:NAME`) maps one to one, since the host keeps each
/// name's data disk: see [`person_host_name`].
pub fn host_user_name(user: &str) -> String {
    if let Some(name) = user.strip_prefix(PERSON_PREFIX) {
        return person_host_name(name);
    }
    let mut s: String = user
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' { c } else { '-' })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        s.insert(0, 'u');
    }
    s.truncate(40);
    s
}

/// The host's user name of `user`'s desktop: a one-time desktop's disks are kept apart from
/// the persistent ones (a `t` first: neither a MAC's nor a person's name starts so).
pub fn host_user(user: &str, one_time: bool) -> String {
    let name = host_user_name(user);
    if one_time {
        format!("t{name}")
    } else {
        name
    }
}

/// Whether a host's user name is a one-time desktop's (see [`host_user`]): other names start
/// with a hex digit, `u` or `user`.
pub fn one_time_host_user(name: &str) -> bool {
    name.starts_with('t')
}

/// The orchestrator's user id of a person who logged in, `user:NAME`: a MAC id has no `u`.
pub const PERSON_PREFIX: &str = "user:";

pub fn person_id(name: &str) -> String {
    format!("{PERSON_PREFIX}{name}")
}

/// `user-NAME` with `_` written `__` and `.` written `_d`, so that `a.b`, `a_b` and `a-b` keep
/// apart; a name too long for that becomes `user_x` and a hash (no escaped name starts so).
fn person_host_name(name: &str) -> String {
    let mut s = String::from("user-");
    for c in name.chars() {
        match c {
            '_' => s.push_str("__"),
            '.' => s.push_str("_d"),
            c if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' => s.push(c),
            c => s.push_str(&format!("_{:x}_", c as u32)),
        }
    }
    if s.len() > 40 {
        use sha2::Digest;
        let h = sha2::Sha256::digest(name.as_bytes());
        s = format!("user_x{}", h[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    s
}

/// The proxy's backend for a VM as its host reported it.
pub fn backend_of(vnc: &VncAddress, password: &str) -> anyhow::Result<Backend> {
    let addr = match vnc {
        VncAddress::Unix(p) => VncAddr::Unix(p.into()),
        VncAddress::Tcp(a) => a.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        VncAddress::Tls(a) => format!("tls:{a}").parse().map_err(|e: String| anyhow::anyhow!(e))?,
    };
    Ok(Backend { addr, password: Some(password.to_string()) })
}

impl Orchestrator {
    pub fn new(
        cfg: BrokerConfig,
        hosts: Arc<HostRegistry>,
        proxy: Arc<Proxy>,
        proxy_addr: SocketAddr,
    ) -> anyhow::Result<(Arc<Self>, mpsc::UnboundedReceiver<Notice>)> {
        let levels: Levels = cfg.levels().map_err(|e| anyhow::anyhow!(e))?;
        let state = State {
            hosts: hosts
                .capacities()
                .into_iter()
                .map(|(id, mib, up)| HostState { id, capacity: mib << 20, up })
                .collect(),
            users: Vec::new(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let pool = Pool::new(&cfg, Planner::new(levels.clone()), hosts.clone(), state.clone());
        pool.settle(state.clone());
        let me = Orchestrator {
            planner: Planner::new(levels),
            cfg,
            hosts,
            proxy,
            proxy_addr,
            run_lock: tokio::sync::Mutex::new(()),
            view: Mutex::new(View { state, desktops: HashMap::new(), arriving: HashMap::new(), decisions: VecDeque::new() }),
            notices: tx,
            recovery: Default::default(),
            pool,
            metrics: Default::default(),
        };
        Ok((Arc::new(me), rx))
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn overview(&self) -> Overview {
        let v = self.view();
        let levels = &self.planner.levels;
        let level = v.state.level_for(levels, v.state.users.len() + 1);
        Overview {
            users: v.state.users.len(),
            level,
            level_mib: level.and_then(|l| levels.get(l)).map(|b| b >> 20),
            levels_mib: levels.sizes().iter().map(|b| b >> 20).collect(),
            max_users: level.map(|l| v.state.max_users(levels, l)),
            state: v.state.clone(),
        }
    }

    /// Counts every arrival that needs a new desktop into `m` from now on.
    pub fn set_metrics(&self, m: Arc<super::metrics::Metrics>) {
        let _ = self.metrics.set(m);
    }

    /// Where viewers reach the proxy.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where a PC at its login form may connect its viewer ahead of a login
    /// (`viewer_standby_secs`), if anywhere.
    pub fn standby_proxy(&self) -> Option<SocketAddr> {
        (self.cfg.viewer_standby_secs > 0).then_some(self.proxy_addr)
    }

    pub fn desktops(&self) -> Vec<Desktop> {
        let mut d: Vec<_> = self.view().desktops.values().cloned().collect();
        d.sort_by_key(|d| d.since);
        d
    }

    /// The pre-booted VMs.
    pub fn pool(&self) -> Vec<PoolVm> {
        self.pool.vms()
    }

    pub fn decisions(&self) -> Vec<DecisionRecord> {
        self.view().decisions.iter().cloned().collect()
    }

    /// The deployment's default desktop: persistent, of `desktops.template`.
    pub fn default_spec(&self) -> Spec {
        Spec { template: self.cfg.template.clone(), one_time: false }
    }

    /// A kiosk PC's own desktop: thrown away when the PC goes.
    pub fn kiosk_spec(&self) -> Spec {
        Spec { one_time: true, ..self.default_spec() }
    }

    /// The desktop of an account with `policy`.
    pub fn spec_of(&self, policy: &crate::accounts::Policy) -> Spec {
        Spec {
            template: policy.template.clone().unwrap_or_else(|| self.cfg.template.clone()),
            one_time: policy.desktop == crate::accounts::Desktop::OneTime,
        }
    }

    /// A client announced itself with the default desktop spec.
    pub async fn arrive(&self, user: &str) -> anyhow::Result<Outcome> {
        self.arrive_as(user, self.default_spec()).await
    }

    /// A client announced itself: give it its desktop (the one it has, after a reconnect, even
    /// if its policy changed since), with a fresh token; a new one is made after `spec`.
    pub async fn arrive_as(&self, user: &str, spec: Spec) -> anyhow::Result<Outcome> {
        let _one = self.run_lock.lock().await;
        if self.view().desktops.contains_key(user) {
            return Ok(Outcome::Assigned { proxy: self.proxy_addr, token: self.new_token(user)? });
        }
        let outcome = self.arrive_new(user, spec).await;
        if let Some(m) = self.metrics.get() {
            m.arrival(user.starts_with(PERSON_PREFIX), !matches!(outcome, Ok(Outcome::Assigned { .. })));
        }
        outcome
    }

    /// [`Self::arrive_as`] for a user who has no desktop yet.
    async fn arrive_new(&self, user: &str, spec: Spec) -> anyhow::Result<Outcome> {
        if let Some(message) = self.missing_template(&spec.template).await {
            log::warn!("broker: {user}: {message}");
            return Ok(Outcome::NoTemplate { message });
        }
        self.view().arriving.insert(user.to_string(), spec);
        let record = self.run(Event::Arrive { user: user.to_string() }).await;
        self.view().arriving.remove(user);
        let record = record?;
        if self.view().desktops.contains_key(user) {
            return Ok(Outcome::Assigned { proxy: self.proxy_addr, token: self.new_token(user)? });
        }
        let message = record
            .decision
            .refusal()
            .map(str::to_string)
            .or_else(|| record.steps.iter().find_map(|s| s.error.clone()))
            .unwrap_or_else(|| "no desktop could be started".into());
        Ok(Outcome::Refused { message })
    }

    /// Why a desktop of `template` cannot start: no host that answers has it. `None` when one
    /// has it, or when none answers (the start then fails with the host's own words). The
    /// default template is not asked about: a host without it is a setup fault for every user.
    async fn missing_template(&self, template: &str) -> Option<String> {
        if template == self.cfg.template {
            return None;
        }
        let up: Vec<String> = self.view().state.hosts.iter().filter(|h| h.up).map(|h| h.id.clone()).collect();
        let mut answered = Vec::new();
        for host in up {
            let Some(client) = self.hosts.client(&host) else { continue };
            match client.templates(std::time::Duration::from_secs(5)).await {
                Ok(list) if list.iter().any(|t| t.name == template) => return None,
                Ok(_) => answered.push(host),
                Err(e) => log::warn!("broker: asking {host} for its templates: {e}"),
            }
        }
        if answered.is_empty() {
            return None;
        }
        Some(format!(
            "your desktop template \"{template}\" is not installed on the desktop servers ({}); ask an administrator",
            answered.join(", ")
        ))
    }

    /// Throws away the one-time disks of `user` on `host`.
    async fn discard(&self, user: &str, host: &str) -> anyhow::Result<()> {
        let client = self.hosts.client(host).with_context(|| format!("host {host} is not configured"))?;
        let name = host_user(user, true);
        let ev = client.reset(&name).await.with_context(|| format!("throwing away {user}'s one-time disks on {host}"))?;
        log::info!("broker: {user}'s one-time disks on {host} thrown away ({})", ev.detail);
        Ok(())
    }

    /// Rotates the user's token: the proxy takes the new one, the desktop and the session store
    /// its hash. A viewer connected with the old one stays connected.
    fn new_token(&self, user: &str) -> anyhow::Result<String> {
        let token = self.proxy.issue_token(user).with_context(|| format!("{user} has no session on the proxy"))?;
        if let Some(d) = self.view().desktops.get_mut(user) {
            d.token_hash = token_hash(&token);
        }
        self.persist(user);
        Ok(token)
    }

    /// A new token, sent to the PC as a new assignment (its viewer carries on and uses the new
    /// token whenever it connects again); also returned.
    fn rotate_and_tell(&self, user: &str) -> anyhow::Result<String> {
        let token = self.new_token(user)?;
        let assignment = super::flow::assignment(self.proxy_addr, token.clone());
        let _ = self.notices.send(Notice::Assignment { user: user.to_string(), assignment });
        Ok(token)
    }

    fn rotate_after_handoff(&self, user: &str) {
        if let Err(e) = self.rotate_and_tell(user) {
            log::error!("broker: rotating {user}'s token after the handoff: {e:#}");
        }
    }

    /// A token for another viewer of the user's desktop (an admin's TigerVNC, say): the PC
    /// gets the same new token with a new assignment, so both keep working. `None` when the
    /// user has no desktop.
    pub async fn viewer_token(&self, user: &str) -> anyhow::Result<Option<String>> {
        let _one = self.run_lock.lock().await;
        if !self.view().desktops.contains_key(user) {
            return Ok(None);
        }
        self.rotate_and_tell(user).map(Some)
    }

    /// Cuts the viewer off the user's desktop (its person logged out or moved to another PC).
    /// The agent of a PC at `ip` is connected: see [`Proxy::pc_present`].
    pub fn pc_present(&self, ip: std::net::IpAddr) -> super::proxy::PcPresence {
        self.proxy.pc_present(ip)
    }

    pub fn disconnect_viewer(&self, user: &str) {
        self.proxy.disconnect_viewer(user);
    }

    /// A client is gone for good: its VM stops and the others may grow back.
    pub async fn leave(&self, user: &str) -> anyhow::Result<()> {
        let _one = self.run_lock.lock().await;
        if self.view().state.user(user).is_none() {
            return Ok(());
        }
        self.run(Event::Leave { user: user.to_string() }).await?;
        Ok(())
    }

    pub async fn host_change(&self, change: HostChange) -> anyhow::Result<()> {
        let _one = self.run_lock.lock().await;
        let event = match change {
            HostChange::Down(host) => Event::HostDown { host },
            HostChange::Up(host) => Event::HostUp { host },
        };
        self.run(event).await?;
        Ok(())
    }

    /// Follows the host registry's health changes until it stops.
    pub async fn follow_hosts(self: Arc<Self>, rx: &mut mpsc::Receiver<HostChange>) {
        while let Some(change) = rx.recv().await {
            if let Err(e) = self.host_change(change).await {
                log::error!("broker: host change: {e:#}");
            }
        }
    }

    async fn run(&self, event: Event) -> anyhow::Result<DecisionRecord> {
        let state = self.view().state.clone();
        let decision = self.planner.decide(&state, &event).context("memory algorithm")?;
        log::info!("broker: {}", decision.summary);
        if let Event::HostDown { host } | Event::HostUp { host } = &event {
            let up = matches!(event, Event::HostUp { .. });
            if let Some(h) = self.view().state.hosts.iter_mut().find(|h| &h.id == host) {
                h.up = up;
            }
            if !up {
                self.host_lost(host);
            }
        }
        // Pool VMs give way first; the pool waits until this decision is over.
        let now = self.view().state.clone();
        let pool_turn = self.pool.make_room(&now, &decision.actions).await;
        let mut record = DecisionRecord { at_ms: now_ms(), decision: decision.clone(), steps: Vec::new() };
        for action in &decision.actions {
            let t0 = Instant::now();
            log::info!("broker: {action}");
            let res = self.execute(action).await;
            let ms = t0.elapsed().as_millis() as u64;
            let step = match res {
                Ok(detail) => {
                    if let Err(e) = self.view().state.apply_action(&self.planner.levels, action) {
                        log::error!("broker: {action} ran but does not fit the state: {e}");
                    }
                    self.persist(action.user());
                    log::info!("broker: done in {ms} ms: {detail}");
                    Step { action: action.to_string(), ok: true, error: None, ms, detail }
                }
                Err(e) => {
                    log::error!("broker: failed after {ms} ms: {action}: {e:#}");
                    Step { action: action.to_string(), ok: false, error: Some(format!("{e:#}")), ms, detail: json!({}) }
                }
            };
            let failed = !step.ok;
            record.steps.push(step);
            if failed {
                break;
            }
        }
        self.keep_record(record.clone());
        let now = self.view().state.clone();
        self.pool.settle(now);
        drop(pool_turn);
        Ok(record)
    }

    fn keep_record(&self, record: DecisionRecord) {
        let mut v = self.view();
        v.decisions.push_back(record);
        while v.decisions.len() > DECISIONS_KEPT {
            v.decisions.pop_front();
        }
        crate::web::events::emit(crate::web::events::Kind::Vms);
    }

    /// A host died: tell its users; their sessions stay open (the viewers see a frozen
    /// screen) until the decision starts their new VMs.
    fn host_lost(&self, host: &str) {
        let users: Vec<String> =
            self.view().desktops.values().filter(|d| d.host == host).map(|d| d.user.clone()).collect();
        for user in users {
            let text = format!("The server running your desktop ({host}) stopped answering; starting it again elsewhere.");
            let _ = self.notices.send(Notice::Message { user, text });
        }
    }

    async fn create_vm(&self, user: &str, host: &str, bytes: u64, spec: &Spec) -> anyhow::Result<(String, Backend, u64)> {
        let client = self.hosts.client(host).with_context(|| format!("host {host} is not configured"))?;
        let owner = host_user(user, spec.one_time);
        let name = format!("{owner}-{}", now_ms() % 100_000_000);
        let t0 = Instant::now();
        let created = client
            .create(&CreateVm {
                name: name.clone(),
                template: spec.template.clone(),
                memory_mib: bytes >> 20,
                vcpus: 1,
                user: owner,
                // One-time too: see [`Spec`].
                persistent: true,
                vnc_password: None,
                pool: false,
            })
            .await?;
        let backend = backend_of(&created.vm.vnc, &created.vnc_password)?;
        Ok((name, backend, t0.elapsed().as_millis() as u64))
    }

    /// Waits until a booting replacement VM shows a desktop: its screen has the size of the
    /// old VM's (a guest still in its firmware or boot console has another mode). Returns the
    /// milliseconds waited.
    async fn wait_desktop(&self, old: &Backend, new: &Backend) -> anyhow::Result<u64> {
        let t0 = Instant::now();
        let want = self.proxy.probe(old).await.context("probing the old VM's screen")?;
        let deadline = t0 + std::time::Duration::from_secs(self.cfg.switch_timeout_secs);
        loop {
            match self.proxy.probe(new).await {
                Ok(r) if (r.width, r.height) == (want.width, want.height) => {
                    return Ok(t0.elapsed().as_millis() as u64);
                }
                Ok(r) => log::debug!("broker: new VM shows {}x{}, waiting for {}x{}", r.width, r.height, want.width, want.height),
                Err(e) => log::debug!("broker: new VM not ready: {e}"),
            }
            if Instant::now() > deadline {
                bail!("no {}x{} screen within {} s", want.width, want.height, self.cfg.switch_timeout_secs);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// The desktop of `user`, whose proxy session is open already.
    #[allow(clippy::too_many_arguments)]
    fn desktop(&self, user: &str, host: &str, vm: &str, level: usize, bytes: u64, backend: Backend, spec: &Spec) -> Desktop {
        Desktop {
            template: spec.template.clone(),
            one_time: spec.one_time,
            user: user.to_string(),
            host: host.to_string(),
            vm: vm.to_string(),
            level,
            memory_mib: bytes >> 20,
            vnc: backend.describe(),
            token_hash: self.proxy.token_hash(user).unwrap_or_default(),
            backend,
            since: now_ms() / 1000,
        }
    }

    async fn execute(&self, action: &Action) -> anyhow::Result<serde_json::Value> {
        match action {
            Action::Start { user, host, level, bytes, .. } => {
                let (existing, spec) = {
                    let v = self.view();
                    let mine = v.desktops.get(user).map(|d| Spec { template: d.template.clone(), one_time: d.one_time });
                    (mine.is_some(), mine.or_else(|| v.arriving.get(user).cloned()))
                };
                let spec = spec.unwrap_or_else(|| self.default_spec());
                if spec.one_time {
                    // Whatever an earlier one-time desktop left (a reset that failed) goes.
                    self.discard(user, host).await?;
                }
                // Pool VMs are of the default template.
                let poolable = !existing && spec.template == self.cfg.template;
                let pooled =
                    if poolable { self.pool.claim(host, *level, user, &host_user(user, spec.one_time)).await } else { None };
                let (vm, backend, create_ms) = match pooled {
                    Some((vm, backend)) => {
                        // Its token goes out with the assignment (`arrive` issues one).
                        self.proxy.open_session(user, backend.clone());
                        let d = self.desktop(user, host, &vm, *level, *bytes, backend, &spec);
                        self.view().desktops.insert(user.clone(), d);
                        return Ok(json!({ "vm": vm, "pool": true, "template": spec.template, "desktop": spec.kind() }));
                    }
                    None => self.create_vm(user, host, *bytes, &spec).await?,
                };
                let frame = if existing {
                    // The user's host died: move the live session to the new VM.
                    self.proxy.switch(user, backend.clone()).await?
                } else {
                    let r = self.proxy.probe(&backend).await?;
                    self.proxy.open_session(user, backend.clone());
                    r
                };
                let d = self.desktop(user, host, &vm, *level, *bytes, backend, &spec);
                self.view().desktops.insert(user.clone(), d);
                Ok(json!({
                    "vm": vm, "create_ms": create_ms, "first_frame_ms": frame.first_frame_ms, "switch": frame,
                    "template": spec.template, "desktop": spec.kind(),
                }))
            }
            Action::Handoff { user, from_host, to_host, to_level, to_bytes, .. } => {
                let old = self.view().desktops.get(user).cloned().with_context(|| format!("{user} has no desktop"))?;
                if self.cfg.balloon && from_host == to_host && self.hosts.balloon(from_host) {
                    let t0 = Instant::now();
                    let client = self.hosts.client(from_host).context("host vanished")?;
                    client.balloon(&old.vm, to_bytes >> 20).await?;
                    if let Some(d) = self.view().desktops.get_mut(user) {
                        d.level = *to_level;
                        d.memory_mib = to_bytes >> 20;
                    }
                    self.rotate_after_handoff(user);
                    return Ok(json!({ "balloon": true, "vm": old.vm, "balloon_ms": t0.elapsed().as_millis() as u64 }));
                }
                if from_host != to_host {
                    log::warn!(
                        "broker: {user} moves from {from_host} to {to_host}: the data disk follows only where the hosts share storage"
                    );
                }
                let spec = Spec { template: old.template.clone(), one_time: old.one_time };
                let (vm, backend, create_ms) = self.create_vm(user, to_host, *to_bytes, &spec).await?;
                let ready_ms = match self.wait_desktop(&old.backend, &backend).await {
                    Ok(ms) => ms,
                    Err(e) => {
                        if let Some(c) = self.hosts.client(to_host) {
                            let _ = c.stop(&vm, 0).await;
                        }
                        bail!("new VM {vm} never showed a desktop: {e:#}");
                    }
                };
                let switch = match self.proxy.switch(user, backend.clone()).await {
                    Ok(r) => r,
                    Err(e) => {
                        // Never leave a half-made handoff behind: the old VM keeps the user.
                        if let Some(c) = self.hosts.client(to_host) {
                            let _ = c.stop(&vm, 0).await;
                        }
                        bail!("switching the proxy to the new VM {vm}: {e}");
                    }
                };
                let t_stop = Instant::now();
                let old_client = self.hosts.client(from_host).context("host vanished")?;
                let stopped = old_client.stop(&old.vm, self.cfg.stop_deadline_secs).await;
                let stop_ms = t_stop.elapsed().as_millis() as u64;
                if let Some(d) = self.view().desktops.get_mut(user) {
                    d.host = to_host.clone();
                    d.vm = vm.clone();
                    d.level = *to_level;
                    d.memory_mib = to_bytes >> 20;
                    d.vnc = backend.describe();
                    d.backend = backend;
                }
                if let Err(e) = stopped {
                    log::warn!("broker: stopping {user}'s old VM {} on {from_host}: {e}", old.vm);
                }
                self.rotate_after_handoff(user);
                Ok(json!({
                    "from_vm": old.vm, "to_vm": vm, "create_ms": create_ms, "desktop_ready_ms": ready_ms,
                    "first_frame_ms": switch.first_frame_ms, "switched_ms": switch.swapped_ms,
                    "viewer_connected": switch.viewer_connected, "resized": switch.resized, "stop_ms": stop_ms,
                }))
            }
            Action::Stop { user, host, .. } => {
                let d = self.view().desktops.remove(user);
                let Some(d) = d else { return Ok(json!({ "vm": null })) };
                self.proxy.close_session(user);
                let t0 = Instant::now();
                if let Some(c) = self.hosts.client(host) {
                    c.stop(&d.vm, self.cfg.stop_deadline_secs).await?;
                }
                let stop_ms = t0.elapsed().as_millis() as u64;
                // The VM is off: nothing holds the disks any more.
                let discarded = d.one_time && {
                    let r = self.discard(user, host).await;
                    if let Err(e) = &r {
                        log::error!("broker: {e:#}; they go before the next start");
                    }
                    r.is_ok()
                };
                Ok(json!({ "vm": d.vm, "stop_ms": stop_ms, "discarded": discarded }))
            }
            Action::Refuse { user, message } => {
                if self.view().desktops.remove(user).is_some() {
                    self.proxy.close_session(user);
                }
                let _ = self.notices.send(Notice::Message { user: user.clone(), text: message.clone() });
                Ok(json!({ "message": message }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_become_host_names() {
        assert_eq!(host_user_name("52:54:00:AB:cd:01"), "52-54-00-ab-cd-01");
        assert_eq!(host_user_name("-x"), "u-x");
        assert!(proto::host::valid_name(&host_user_name(&"Ö".repeat(100))));
        // People: no two names share a host name, and none looks like a MAC's.
        let names = ["a.b", "a_b", "a-b", "a__b", "a_db", "a", &"x".repeat(32), &"x.".repeat(16), &"y.".repeat(16)];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let h = host_user_name(&person_id(n));
            assert!(proto::host::valid_name(&h) && h.len() <= 40 && h.starts_with("user"), "{h}");
            assert!(seen.insert(h.clone()), "{n} shares {h}");
        }
        assert_eq!(host_user_name(&person_id("alice")), "user-alice");
        // One-time desktops keep their disks apart, under names no other user id maps to.
        assert_eq!(host_user(&person_id("alice"), true), "tuser-alice");
        assert_eq!(host_user(&person_id("alice"), false), "user-alice");
        assert_eq!(host_user("52:54:00:AB:cd:01", true), "t52-54-00-ab-cd-01");
        for id in ["52:54:00:ab:cd:01", "fe:00:00:00:00:01", "-x", &person_id("tom"), &person_id(&"t".repeat(32))] {
            assert!(!one_time_host_user(&host_user(id, false)), "{id}");
            assert!(one_time_host_user(&host_user(id, true)), "{id}");
            assert!(proto::host::valid_name(&host_user(id, true)), "{id}");
        }
    }
}
