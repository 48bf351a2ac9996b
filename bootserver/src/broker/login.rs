//! Logins on the PCs' screens: the password check, the person's desktop (which follows them
//! from PC to PC, see [`Seats`]), logouts, and the grace period after which a desktop nobody
//! sits at stops. The agent listener calls in here; the messages go out on the PC's
//! connection.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::agent::{BrokerMessage, Command, Enrolment, LoggedIn, LoginPrompt, MacAddr, Password};
use tokio::sync::mpsc::UnboundedSender;

use super::listener::Broker;
use super::orchestrator::{person_id, Orchestrator, PERSON_PREFIX};
use super::seats::{Effect, Seats};
use crate::logsafe::Esc;

/// Shown on the viewer's status line; the agent watches for it.
pub const LOGOUT_KEYS: &str = "Ctrl+Alt+End";
/// Login attempts one PC may make per [`ATTEMPT_WINDOW`]: a person mistyping gets through, a
/// LAN device guessing passwords gets five a minute.
const ATTEMPTS: usize = 5;
const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);
/// PCs whose attempts are remembered; past it, the oldest quiet ones are forgotten.
const ATTEMPT_PCS: usize = 4096;

/// The seats and the login attempts, shared by all connections.
pub struct Logins {
    seats: Mutex<Seats>,
    /// Held while desktops whose grace ended are stopped, and by a login while it takes its
    /// seat: a login never finds a desktop that is about to be stopped under it.
    gate: tokio::sync::Mutex<()>,
    attempts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Logins {
    pub fn new(grace: Duration) -> Self {
        Logins {
            seats: Mutex::new(Seats::new(grace)),
            gate: tokio::sync::Mutex::new(()),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt of `pc`; `Err` with the wait when it has had its share.
    fn attempt(&self, pc: &str, now: Instant) -> Result<(), Duration> {
        let mut all = lock(&self.attempts);
        if all.len() >= ATTEMPT_PCS && !all.contains_key(pc) {
            all.retain(|_, a| a.back().is_some_and(|t| now.duration_since(*t) < ATTEMPT_WINDOW));
        }
        let times = all.entry(pc.to_string()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= ATTEMPT_WINDOW) {
            times.pop_front();
        }
        if times.len() >= ATTEMPTS {
            return Err(ATTEMPT_WINDOW.saturating_sub(now.duration_since(times[0])));
        }
        times.push_back(now);
        Ok(())
    }

    /// The PC an orchestrator user's messages go to: a person's current PC, or the MAC itself.
    pub fn route(&self, user: &str) -> Option<String> {
        if user.starts_with(PERSON_PREFIX) {
            return lock(&self.seats).pc_of(user).map(str::to_string);
        }
        Some(user.to_string())
    }
}

/// The name the PC with `mac` shows.
fn pc_name(broker: &Broker, mac: &str) -> String {
    match mac.parse::<MacAddr>() {
        Ok(m) => broker.pcs.resolve(m).name,
        Err(_) => mac.to_string(),
    }
}

/// The login screen for the PC with `mac`.
pub fn prompt(broker: &Broker, mac: &str, message: Option<String>, user: Option<String>) -> BrokerMessage {
    BrokerMessage::LoginPrompt(LoginPrompt { pc: pc_name(broker, mac), enrolment: Enrolment::Enrolled, message, user })
}

/// Why no desktop could start, with the memory algorithm's figures.
fn no_capacity(orch: &Orchestrator, reason: &str) -> String {
    let o = orch.overview();
    let up: Vec<_> = o.state.hosts.iter().filter(|h| h.up).collect();
    let mib: u64 = up.iter().map(|h| h.capacity >> 20).sum();
    format!(
        "no desktop for you now: {reason} ({} desktops running on {} hosts with {mib} MiB; sizes {:?} MiB); try again later",
        o.users,
        up.len(),
        o.levels_mib
    )
}

/// One PC's connection, as the login code sees it.
#[derive(Clone)]
pub struct Pc {
    pub broker: Arc<Broker>,
    pub orch: Arc<Orchestrator>,
    pub mac: String,
    pub conn: u64,
    pub tx: UnboundedSender<BrokerMessage>,
}

impl Pc {
    fn send(&self, msg: BrokerMessage) {
        if self.tx.send(msg).is_err() {
            log::info!("client {}: gone before the answer to its login", self.mac);
        }
    }

    /// A login from the screen. Checked here for length and rate; the password check and the
    /// desktop run in a task of their own, so that pings go on.
    pub fn login(&self, user: String, password: Password, busy: Arc<std::sync::atomic::AtomicBool>) {
        use std::sync::atomic::Ordering;
        if user.len() > proto::agent::MAX_LOGIN_NAME || password.expose().len() > proto::agent::MAX_PASSWORD {
            log::warn!("client {}: dropping a login with an overlong user name or password", self.mac);
            self.send(prompt(&self.broker, &self.mac, Some("wrong user name or password".into()), None));
            return;
        }
        if let Err(wait) = self.broker.logins.attempt(&self.mac, Instant::now()) {
            log::warn!("client {}: too many login attempts; refusing {} without checking", self.mac, Esc(&user));
            let text = format!("too many attempts: wait {} s and try again", wait.as_secs().max(1));
            self.send(prompt(&self.broker, &self.mac, Some(text), Some(user)));
            return;
        }
        if busy.swap(true, Ordering::AcqRel) {
            log::warn!("client {}: a login while another is being checked; dropped", self.mac);
            return;
        }
        let pc = self.clone();
        tokio::spawn(async move {
            pc.check(user, password).await;
            busy.store(false, Ordering::Release);
        });
    }

    async fn check(&self, user: String, password: Password) {
        let Some(auth) = self.broker.auth.clone() else {
            self.send(prompt(&self.broker, &self.mac, Some("logins are not set up on this broker".into()), None));
            return;
        };
        let started = Instant::now();
        let result = auth.authenticate(&user, password.expose()).await;
        drop(password);
        match result {
            Err(e) => {
                log::warn!("login of {} at {} failed after {} ms: {e}", Esc(&user), self.mac, started.elapsed().as_millis());
                self.send(prompt(&self.broker, &self.mac, Some(e.to_string()), Some(user)));
            }
            Ok(id) => {
                log::info!(
                    "login of {} at {} ({:?} account, {:?}) in {} ms",
                    Esc(&id.name),
                    self.mac,
                    id.backend,
                    id.role,
                    started.elapsed().as_millis()
                );
                self.seat(&id.name, true).await;
            }
        }
    }

    /// `name` sits down at this PC: a login, or a kiosk's autologin (with no `logged_in`, as
    /// a kiosk has no logout). Their desktop follows.
    pub async fn seat(&self, name: &str, logged_in: bool) {
        let user = person_id(name);
        let effects = {
            let _gate = self.broker.logins.gate.lock().await;
            lock(&self.broker.logins.seats).login(&self.mac, self.conn, &user, Instant::now())
        };
        let how = if logged_in { "login" } else { "autologin" };
        self.broker.stages.record(&self.mac, crate::stages::Event::Login { person: Some(name.to_string()), how: how.into() });
        let here = pc_name(&self.broker, &self.mac);
        for e in effects {
            match e {
                Effect::Moved { from, .. } => {
                    log::info!("{} moved from {from} to {}", Esc(name), self.mac);
                    // The old PC's viewer must not keep showing the desktop; the new token
                    // below keeps it from coming back.
                    self.orch.disconnect_viewer(&user);
                    let text = format!("{name} logged in at {here}; this PC was logged out");
                    if let Err(e) = self.broker.deliver(&from, prompt(&self.broker, &from, Some(text), None)) {
                        log::info!("telling {from} that {} moved on: {e}", Esc(name));
                    }
                }
                Effect::Replaced { person } => log::info!("{} logged out of {} by the next login", Esc(&person), self.mac),
            }
        }
        if logged_in {
            self.send(BrokerMessage::LoggedIn(LoggedIn { user: name.to_string(), logout_keys: LOGOUT_KEYS.into() }));
        }
        match super::flow::on_announce(&self.orch, &user).await {
            BrokerMessage::Refused { reason } => {
                log::warn!("client {}: no desktop for {}: {reason}", self.mac, Esc(name));
                // Nothing runs for them: their seat is given up at once.
                lock(&self.broker.logins.seats).pc_gone(&self.mac, self.conn, Instant::now());
                let text = no_capacity(&self.orch, &reason);
                self.send(if logged_in {
                    prompt(&self.broker, &self.mac, Some(text), Some(name.to_string()))
                } else {
                    BrokerMessage::Command(Command::ShowMessage { text })
                });
            }
            other => self.send(other),
        }
    }

    /// The person at this PC logs out: the login screen comes back, the desktop keeps running
    /// for the grace period, and the PC's token stops opening it.
    pub fn logout(&self) {
        let person = lock(&self.broker.logins.seats).logout(&self.mac, Instant::now());
        let Some(user) = person else {
            log::info!("client {}: ignoring a logout: nobody is logged in", self.mac);
            return;
        };
        log::info!("{} logged out at {}", Esc(&user), self.mac);
        self.send(prompt(&self.broker, &self.mac, Some("logged out".into()), None));
        self.orch.disconnect_viewer(&user);
        let orch = self.orch.clone();
        tokio::spawn(async move {
            if let Err(e) = orch.viewer_token(&user).await {
                log::warn!("rotating {}'s token after the logout: {e:#}", Esc(&user));
            }
        });
    }
}

/// Connection `conn` of `mac` ended: whoever sat there goes into grace.
pub fn pc_gone(broker: &Broker, mac: &str, conn: u64) {
    if let Some(user) = lock(&broker.logins.seats).pc_gone(mac, conn, Instant::now()) {
        log::info!("{} left with {mac}; the desktop waits for them", Esc(&user));
    }
}

/// A desktop that came back from the session store: a person's waits the grace period for
/// them to log in; `false` for a PC's (the caller waits for the PC).
pub fn recovered(broker: &Broker, user: &str) -> bool {
    if !user.starts_with(PERSON_PREFIX) {
        return false;
    }
    lock(&broker.logins.seats).waiting(user, Instant::now());
    true
}

/// Stops the desktops whose grace ended, for ever (checked every `tick`).
pub async fn expire(broker: Arc<Broker>, orch: Arc<Orchestrator>, tick: Duration) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(tick).await;
        let _gate = broker.logins.gate.lock().await;
        let gone = lock(&broker.logins.seats).expire(Instant::now());
        for user in gone {
            log::info!("{}: nobody came back within the grace period; stopping the desktop", Esc(&user));
            if let Err(e) = orch.leave(&user).await {
                log::error!("stopping {}'s desktop: {e:#}", Esc(&user));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_attempts_a_minute_per_pc() {
        let l = Logins::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..ATTEMPTS {
            assert!(l.attempt("pc1", t0 + Duration::from_secs(i as u64)).is_ok());
        }
        let wait = l.attempt("pc1", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.attempt("pc2", t0 + Duration::from_secs(10)).is_ok(), "another PC has its own share");
        assert!(l.attempt("pc1", t0 + ATTEMPT_WINDOW).is_ok(), "the first attempt has aged out");
    }
}
