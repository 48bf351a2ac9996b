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
use super::orchestrator::{person_id, Orchestrator, Outcome, Spec, PERSON_PREFIX};
use super::seats::{Effect, Seats};
use crate::logsafe::Esc;

/// Shown on the viewer's status line; the agent watches for it.
pub const LOGOUT_KEYS: &str = "Ctrl+Alt+End";
/// Failed login attempts one PC may make per [`ATTEMPT_WINDOW`]: a person mistyping gets
/// through, a LAN device guessing passwords gets five a minute. A login that succeeds gives its
/// attempt back, so that people who log in and out often are never held up, while guesses
/// interleaved with a known account's logins still get only five a minute.
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

    /// The attempt of `pc` counted at `at` succeeded: it no longer counts.
    fn refund(&self, pc: &str, at: Instant) {
        let mut all = lock(&self.attempts);
        if let Some(times) = all.get_mut(pc) {
            if let Some(i) = times.iter().rposition(|t| *t == at) {
                times.remove(i);
            }
        }
    }

    /// How many people are logged in at a PC now.
    pub fn seated(&self) -> usize {
        lock(&self.seats).seated()
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
    let proxy = broker.desktops.as_ref().and_then(|o| o.standby_proxy());
    BrokerMessage::LoginPrompt(LoginPrompt { pc: pc_name(broker, mac), enrolment: Enrolment::Enrolled, message, user, proxy })
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
        let at = Instant::now();
        if let Err(wait) = self.broker.logins.attempt(&self.mac, at) {
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
            pc.check(user, password, at).await;
            busy.store(false, Ordering::Release);
        });
    }

    /// `at`: when the attempt was counted, given back if the login succeeds.
    async fn check(&self, user: String, password: Password, at: Instant) {
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
                self.broker.logins.refund(&self.mac, at);
                log::info!(
                    "login of {} at {} ({:?} account, {:?}) in {} ms",
                    Esc(&id.name),
                    self.mac,
                    id.backend,
                    id.role,
                    started.elapsed().as_millis()
                );
                let spec = self.orch.spec_of(&id.policy);
                self.seat(&id.name, true, spec).await;
            }
        }
    }

    /// `name` sits down at this PC: a login, or a kiosk's autologin (with no `logged_in`, as
    /// a kiosk has no logout). Their desktop follows; a new one is made after `spec`.
    pub async fn seat(&self, name: &str, logged_in: bool, spec: Spec) {
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
        let refusal = match self.orch.arrive_as(&user, spec).await {
            Ok(Outcome::Assigned { proxy, token }) => {
                self.send(BrokerMessage::Assignment(super::flow::assignment(proxy, token)));
                return;
            }
            Ok(Outcome::Refused { message }) => no_capacity(&self.orch, &message),
            // Not a matter of room: trying again later does not help.
            Ok(Outcome::NoTemplate { message }) => message,
            Err(e) => {
                log::error!("broker: login of {}: {e:#}", Esc(name));
                format!("the broker could not start a desktop: {e}")
            }
        };
        log::warn!("client {}: no desktop for {}: {refusal}", self.mac, Esc(name));
        // Nothing runs for them: their seat is given up at once.
        lock(&self.broker.logins.seats).pc_gone(&self.mac, self.conn, Instant::now());
        self.send(if logged_in {
            prompt(&self.broker, &self.mac, Some(refusal), Some(name.to_string()))
        } else {
            BrokerMessage::Command(Command::ShowMessage { text: refusal })
        });
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
    use crate::broker::memory::{Event, Levels, Planner, State};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A PC boots to its login screen.
        Screen(u8),
        Login(u8, u8),
        Logout(u8),
        /// The PC's connection ends.
        Gone(u8),
        KioskOn(u8),
        KioskOff(u8),
        Wait(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Screen),
            (0u8..4, 0u8..3).prop_map(|(pc, p)| Op::Login(pc, p)),
            (0u8..4).prop_map(Op::Logout),
            (0u8..4).prop_map(Op::Gone),
            (0u8..2).prop_map(Op::KioskOn),
            (0u8..2).prop_map(Op::KioskOff),
            (0u16..400).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// The memory algorithm counts people (and kiosk PCs) with a running desktop, not PCs:
        /// the seats' events are fed to the planner as the login flow feeds the orchestrator
        /// (a seat arrives under the person's id, an ended grace leaves, a kiosk PC's own
        /// desktop arrives under its MAC and leaves after the kiosk grace). A PC at its login
        /// screen counts nothing, a person roaming over PCs counts once, a person in grace
        /// counts until the desktop stops.
        #[test]
        fn the_memory_algorithm_counts_people_not_pcs(ops in proptest::collection::vec(op(), 1..50)) {
            const GRACE: Duration = Duration::from_secs(300);
            const KIOSK_GRACE: Duration = Duration::from_secs(15);
            let levels = Levels::explicit(vec![1 << 30, 512 << 20, 256 << 20]).unwrap();
            let planner = Planner::new(levels.clone());
            // Room for everybody at the lowest level: a refusal would hide a miscount.
            let mut state = State::uniform(2, 4 << 30);
            let mut seats = Seats::new(GRACE);
            let t0 = Instant::now();
            let mut now = t0;
            let mut screens = std::collections::HashSet::new();
            // Kiosk MAC -> Some(switched off at) or None while on.
            let mut kiosks: HashMap<String, Option<Instant>> = HashMap::new();
            let run = |state: &mut State, event: Event| {
                let d = planner.decide(state, &event).unwrap();
                state.apply(&levels, &d).unwrap();
            };
            for op in ops {
                match op {
                    Op::Screen(pc) => { screens.insert(format!("pc{pc}")); }
                    Op::Login(pc, p) => {
                        let (pc, person) = (format!("pc{pc}"), person_id(&format!("p{p}")));
                        screens.insert(pc.clone());
                        seats.login(&pc, 1, &person, now);
                        if state.user(&person).is_none() {
                            run(&mut state, Event::Arrive { user: person });
                        }
                    }
                    Op::Logout(pc) => { seats.logout(&format!("pc{pc}"), now); }
                    Op::Gone(pc) => {
                        let pc = format!("pc{pc}");
                        seats.pc_gone(&pc, 1, now);
                        screens.remove(&pc);
                    }
                    Op::KioskOn(k) => {
                        let mac = format!("52:54:00:00:0a:0{k}");
                        if !kiosks.contains_key(&mac) {
                            run(&mut state, Event::Arrive { user: mac.clone() });
                        }
                        kiosks.insert(mac, None);
                    }
                    Op::KioskOff(k) => {
                        if let Some(off @ None) = kiosks.get_mut(&format!("52:54:00:00:0a:0{k}")) {
                            *off = Some(now);
                        }
                    }
                    Op::Wait(secs) => {
                        now += Duration::from_secs(secs.into());
                        for user in seats.expire(now) {
                            run(&mut state, Event::Leave { user });
                        }
                        let gone: Vec<String> = kiosks.iter().filter(|(_, off)| off.is_some_and(|t| t + KIOSK_GRACE <= now)).map(|(m, _)| m.clone()).collect();
                        for mac in gone {
                            kiosks.remove(&mac);
                            run(&mut state, Event::Leave { user: mac });
                        }
                    }
                }
                let people: std::collections::HashSet<&str> = seats.people().collect();
                prop_assert_eq!(state.users.len(), people.len() + kiosks.len(), "screens: {}", screens.len());
                for u in &state.users {
                    prop_assert!(people.contains(u.id.as_str()) || kiosks.contains_key(&u.id), "{} counted", u.id);
                }
            }
        }
    }

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

    #[test]
    fn logins_that_succeed_do_not_count_and_guesses_between_them_do() {
        let l = Logins::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_millis(100 * i);
        // Someone logging in and out many times a minute, with guesses in between.
        let mut guesses = 0;
        for i in 0..40u64 {
            let ok = l.attempt("pc1", at(i)).is_ok();
            if i % 2 == 0 {
                assert!(ok || guesses == ATTEMPTS, "login {i} held up after {guesses} guesses");
                if ok {
                    l.refund("pc1", at(i));
                }
            } else if ok {
                guesses += 1;
            }
        }
        assert_eq!(guesses, ATTEMPTS, "guesses between good logins");
        // A refund of an attempt that was never counted changes nothing.
        l.refund("pc1", at(40));
        assert!(l.attempt("pc1", at(41)).is_err());
    }
}
