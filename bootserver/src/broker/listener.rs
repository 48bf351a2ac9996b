//! Accepts the agents' connections: one task per PC speaking `proto::agent` (hello, welcome,
//! pings, commands). A connection that sends garbage, a truncated or an oversized frame is
//! dropped with a log line; every other connection carries on.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::agent::{
    encode, negotiate, AgentMessage, BrokerMessage, Command, DecodeError, Decoder, Hello, Welcome, LOGIN_MINOR,
    PROTOCOL,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::agent_tls::{AgentIo, AgentTls};
use super::enrolment::{EnrolmentMode, Gate, Verdict};
use super::flow::Desktops;
use super::hello_binding::HelloBinding;
use super::login::Logins;
use super::pcs::{Mode, PcsConfig};
use super::orchestrator::{Notice, Orchestrator};
use super::registry::{now_secs, ClientState, Recorder, Registry};
use crate::logsafe::Esc;
use crate::net::limits::{accept_loop, ConnLimiter, FdBudget, LogEvery, TokenBucket};
use crate::supervise::{Rebind, Supervisor};

/// The broker's view of the connected PCs, shared by the listener and the admin API.
pub struct Broker {
    pub registry: Recorder,
    live: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<BrokerMessage>)>>,
    next_id: AtomicU64,
    /// How often each PC is pinged; three missed pongs end its connection.
    pub ping_interval: Duration,
    /// How long a new connection may take to send its hello.
    pub hello_timeout: Duration,
    /// Desktops for the announced PCs, where `[desktops]` names hosts.
    pub desktops: Option<Arc<Orchestrator>>,
    /// A PC whose agent connection stays gone this long has left: its desktop stops.
    pub leave_after: Duration,
    /// The same for a kiosk PC's own desktop, which is thrown away: short, so that what was
    /// written is gone soon after the PC is switched off, yet a network blip keeps it.
    pub kiosk_grace: Duration,
    /// Messages one connection may send per second, and in a burst; the rest are dropped.
    pub messages_per_sec: u32,
    pub message_burst: u32,
    /// TLS for the agents' connections; `bootserver serve` always sets it.
    pub tls: Option<AgentTls>,
    /// Which hellos are believed: `bootserver serve` ties each to its source address.
    pub binding: HelloBinding,
    /// Who may log in (`[auth]`), for the login screens.
    pub auth: Option<Arc<crate::accounts::Authenticator>>,
    /// `[pcs]`: login screen, kiosk or refusal, per PC.
    pub pcs: PcsConfig,
    /// Who sits where, and the grace periods of desktops nobody sits at.
    pub logins: Logins,
    /// Boot-stage reports: hellos, logins and desktops shown.
    pub stages: crate::stages::Sink,
    /// Which PCs an administrator approved (`[pcs] enrolment`); `bootserver serve` sets it.
    pub enrolments: Option<Arc<Gate>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("client {0} is not connected")]
    NotConnected(String),
}

impl Broker {
    /// A broker over `registry`, which writes pongs and statuses once per `flush`.
    pub fn new(registry: Registry, flush: Duration) -> std::io::Result<Self> {
        Ok(Broker {
            registry: Recorder::start(registry, flush)?,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            ping_interval: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            desktops: None,
            leave_after: Duration::from_secs(120),
            kiosk_grace: Duration::from_secs(15),
            messages_per_sec: 20,
            message_burst: 100,
            tls: None,
            binding: HelloBinding::Off,
            auth: None,
            pcs: PcsConfig::default(),
            logins: Logins::new(Duration::from_secs(600)),
            stages: crate::stages::Sink::default(),
            enrolments: None,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::UnboundedSender<BrokerMessage>)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_connected(&self, mac: &str) -> bool {
        self.live().contains_key(mac)
    }

    /// Queues `msg` on the PC's connection.
    pub(crate) fn deliver(&self, mac: &str, msg: BrokerMessage) -> Result<(), SendError> {
        let sent = self.live().get(mac).map(|(_, tx)| tx.send(msg).is_ok()).unwrap_or(false);
        if !sent {
            return Err(SendError::NotConnected(mac.to_string()));
        }
        Ok(())
    }

    /// Queues `cmd` on the PC's connection and records what it means for the PC's state.
    pub fn command(&self, mac: &str, cmd: Command) -> Result<(), SendError> {
        let state = match cmd {
            Command::Reboot => Some(ClientState::Rebooting),
            Command::PowerOff => Some(ClientState::PoweredOff),
            _ => None,
        };
        self.deliver(mac, BrokerMessage::Command(cmd))?;
        if let Some(state) = state {
            self.registry.set_state(mac, state, now_secs());
        }
        Ok(())
    }
}

/// Accepts connections for ever, within `limiter`'s caps.
pub async fn run(listener: TcpListener, broker: Arc<Broker>, limiter: Arc<ConnLimiter>) -> anyhow::Result<()> {
    log::info!("broker listening for agents on {}", listener.local_addr()?);
    accept_loop(listener, limiter, move |stream, peer| {
        let broker = broker.clone();
        async move {
            let _ = stream.set_nodelay(true);
            let mut who = peer.to_string();
            let io: anyhow::Result<(Box<dyn AgentIo>, bool)> = match &broker.tls {
                Some(tls) => tls.accept(stream).await,
                None => Ok((Box::new(stream), false)),
            };
            let served = match io {
                Ok((io, encrypted)) => serve(io, encrypted, peer, &broker, &mut who).await,
                Err(e) => Err(e),
            };
            match served {
                Ok(reason) => log::info!("agent {who}: {reason}"),
                Err(e) => log::warn!("agent {who}: dropping the connection: {}", Esc(&format!("{e:#}"))),
            }
        }
    })
    .await
}

async fn send(wr: &mut (impl AsyncWrite + Unpin), msg: &BrokerMessage) -> anyhow::Result<()> {
    let bytes = encode(msg)?;
    // The flush pushes TLS records out; on plain TCP it costs nothing.
    let write = async {
        wr.write_all(&bytes).await?;
        wr.flush().await
    };
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .context("the agent stopped reading")?
        .context("writing to the agent")
}

/// Reads until at least one frame result is queued; `Ok(false)` at a clean end of stream.
async fn fill(
    rd: &mut (impl AsyncRead + Unpin),
    dec: &mut Decoder<AgentMessage>,
    queue: &mut VecDeque<Result<AgentMessage, DecodeError>>,
) -> anyhow::Result<bool> {
    let mut buf = [0u8; 8192];
    while queue.is_empty() {
        let n = rd.read(&mut buf).await.context("reading from the agent")?;
        if n == 0 {
            dec.finish()?;
            return Ok(false);
        }
        queue.extend(dec.feed(&buf[..n]));
    }
    Ok(true)
}

/// A decoded frame, or why the connection must end. Unknown message types (a newer agent)
/// are skipped; anything else malformed ends the connection.
fn accept(r: Result<AgentMessage, DecodeError>, who: &str) -> anyhow::Result<Option<AgentMessage>> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(e @ DecodeError::UnknownType { .. }) => {
            log::warn!("agent {who}: skipping a message: {}", Esc(&e.to_string()));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `encrypted`: the link is TLS. Only such a link gets a login screen, since a login carries a
/// password.
async fn serve(
    stream: Box<dyn AgentIo>,
    encrypted: bool,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    who: &mut String,
) -> anyhow::Result<String> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut dec = Decoder::<AgentMessage>::new();
    let mut queue = VecDeque::new();

    let hello: Hello = tokio::time::timeout(broker.hello_timeout, async {
        loop {
            if !fill(&mut rd, &mut dec, &mut queue).await? {
                bail!("closed before its hello");
            }
            while let Some(r) = queue.pop_front() {
                match accept(r, who)? {
                    Some(AgentMessage::Hello(h)) => return Ok(h),
                    Some(other) => bail!("sent {} before its hello", proto::agent::Message::type_name(&other)),
                    None => {}
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no hello within {:?}", broker.hello_timeout))??;

    let mac = hello.mac.to_string();
    *who = format!("{mac} at {peer}");
    let version = match negotiate(PROTOCOL, hello.version) {
        Ok(v) => v,
        Err(reason) => {
            send(&mut wr, &BrokerMessage::Refused { reason: reason.clone() }).await?;
            return Ok(format!("refused: {reason}"));
        }
    };
    // Before anything of the PC's is touched: a spoofed hello must leave its registry row,
    // desktop, token and connections as they are.
    let t_check = Instant::now();
    if let Err(r) = broker.binding.check(hello.mac, peer.ip()).await {
        log::warn!("agent at {peer}: hello refused: {}", Esc(&r.detail));
        send(&mut wr, &BrokerMessage::Refused { reason: r.reason.clone() }).await?;
        return Ok(format!("refused: {}", r.reason));
    }
    let checked_in = t_check.elapsed();
    let token = format!("{:032x}", rand::random::<u128>());
    let record = broker.registry.announce(&hello, &token, now_secs()).await?;
    broker.stages.record(
        &mac,
        crate::stages::Event::Hello {
            agent_version: hello.agent_version.clone(),
            address: hello.ipv4,
            boot_ms: hello.boot_ms,
            new_boot: hello.resume_token.is_none(),
        },
    );
    log::info!(
        "client {mac} announced from {peer}: {} MiB RAM, {} x {}, agent {}, {} ms after power-on, boot #{}, address checked in {} us",
        hello.ram_bytes >> 20,
        hello.cpu_count,
        Esc(&hello.cpu_model),
        Esc(&hello.agent_version),
        hello.boot_ms,
        record.boots,
        checked_in.as_micros()
    );
    let policy = broker.pcs.resolve(hello.mac);
    if policy.mode == Mode::Disabled {
        let reason = "this PC is disabled by the administrator".to_string();
        send(&mut wr, &BrokerMessage::Refused { reason: reason.clone() }).await?;
        broker.registry.disconnected(&mac, now_secs());
        return Ok(format!("refused: {reason} (key `pcs`)"));
    }
    // Under `enrolment = "approve"` an unapproved PC is recorded as pending and waits.
    let enrolment = match (&broker.enrolments, broker.pcs.enrolment) {
        (Some(gate), EnrolmentMode::Approve) => {
            let entry = gate.seen(&mac, &peer.ip().to_string(), now_secs()).await?;
            let verdict = super::enrolment::verdict(EnrolmentMode::Approve, entry.state);
            Some((gate.clone(), verdict, entry.code.unwrap_or_default()))
        }
        _ => None,
    };
    if let Some((_, Verdict::Refuse, _)) = &enrolment {
        let reason = DENIED.to_string();
        send(&mut wr, &BrokerMessage::Refused { reason: reason.clone() }).await?;
        broker.registry.disconnected(&mac, now_secs());
        return Ok(format!("refused: {reason} (enrolment)"));
    }
    let welcome = Welcome {
        version,
        resume_token: token,
        ping_interval_ms: broker.ping_interval.as_millis() as u64,
    };
    send(&mut wr, &BrokerMessage::Welcome(welcome)).await?;

    let id = broker.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some((_, old)) = broker.live().insert(mac.clone(), (id, tx)) {
        // Dropping the old sender ends the older connection of the same PC.
        drop(old);
    }
    let tx = broker.live().get(&mac).map(|(_, tx)| tx.clone());
    let kiosk_own = policy.mode == Mode::Kiosk && policy.autologin.is_none();
    let fresh = hello.resume_token.is_none();
    let pc = Arc::new(std::sync::OnceLock::new());
    let admission = Admission { broker: broker.clone(), policy, version, encrypted, who: who.clone(), mac: mac.clone(), id, fresh };
    match (enrolment, tx) {
        (Some((gate, Verdict::Wait, code)), Some(tx)) => {
            log::info!("client {mac}: waits for approval with code {code}");
            let decided = gate.wait(&mac, id);
            let _ = tx.send(BrokerMessage::Approval { pc: admission.policy.name.clone(), code });
            let pc = pc.clone();
            tokio::spawn(async move {
                match decided.await {
                    Ok(true) => {
                        if let Some(me) = admission.admit(tx) {
                            let _ = pc.set(me);
                        }
                    }
                    Ok(false) => {
                        let _ = tx.send(BrokerMessage::Refused { reason: DENIED.into() });
                        log::info!("agent {}: denied; closing its connection", admission.who);
                        // The session ends once the refusal is written: no sender is left.
                        let mut live = admission.broker.live();
                        if live.get(&admission.mac).is_some_and(|(i, _)| *i == admission.id) {
                            live.remove(&admission.mac);
                        }
                    }
                    Err(_) => {}
                }
            });
        }
        (_, Some(tx)) => {
            if let Some(me) = admission.admit(tx) {
                let _ = pc.set(me);
            }
        }
        (_, None) => {}
    }
    // Its viewer may wait at the proxy while its form is up (`desktops.viewer_standby_secs`).
    let presence = broker.desktops.as_ref().map(|o| o.pc_present(peer.ip()));
    let result = session(&mut rd, &mut wr, &mut dec, &mut queue, &mut rx, broker, &mac, who, &pc).await;
    drop(presence);
    if let Some(gate) = &broker.enrolments {
        gate.forget(&mac, id);
    }
    {
        let mut live = broker.live();
        if live.get(&mac).is_some_and(|(i, _)| *i == id) {
            live.remove(&mac);
        }
    }
    broker.registry.disconnected(&mac, now_secs());
    super::login::pc_gone(broker, &mac, id);
    let wait = if kiosk_own { broker.kiosk_grace } else { broker.leave_after };
    leave_unless_back(broker, mac, wait);
    result
}

const DENIED: &str = "an administrator has denied this PC; ask them to approve it";

/// What a welcomed PC gets once it may have it (at once, or when an administrator approves it).
struct Admission {
    broker: Arc<Broker>,
    policy: super::pcs::PcPolicy,
    version: proto::agent::ProtocolVersion,
    encrypted: bool,
    who: String,
    mac: String,
    id: u64,
    /// A hello without the token of an earlier welcome: the PC booted again.
    fresh: bool,
}

impl Admission {
    /// Sends what the PC's policy says: a kiosk desktop, or the login screen (whose logins
    /// the returned [`super::login::Pc`] then takes).
    fn admit(&self, tx: mpsc::UnboundedSender<BrokerMessage>) -> Option<super::login::Pc> {
        let (broker, mac, who) = (&self.broker, &self.mac, &self.who);
        let orch = broker.desktops.as_ref()?;
        let me = super::login::Pc { broker: broker.clone(), orch: orch.clone(), mac: mac.clone(), conn: self.id, tx: tx.clone() };
        match (self.policy.mode, self.policy.autologin.clone()) {
            // A fresh boot: the last one's desktop goes.
            (Mode::Kiosk, None) => {
                broker.stages.record(mac, crate::stages::Event::Login { person: None, how: "kiosk".into() });
                assign(orch.clone(), Some(tx), mac.clone(), self.fresh)
            }
            (Mode::Kiosk, Some(account)) => {
                let policy = broker.auth.as_ref().and_then(|a| a.local_policy(&account)).unwrap_or_default();
                let spec = orch.spec_of(&policy);
                tokio::spawn(async move { me.seat(&account, false, spec).await });
            }
            (_, _) if self.version.minor < LOGIN_MINOR => {
                let text = "this PC's boot image is too old for logins; ask an administrator to update it".into();
                let _ = tx.send(BrokerMessage::Command(Command::ShowMessage { text }));
            }
            // An old agent let in by `agent_plain_tcp`: a password typed there would cross the
            // LAN in clear, so it gets no login screen and its logins are ignored.
            (_, _) if !self.encrypted => {
                log::warn!("agent {who}: no login screen on a plain TCP connection (agent_plain_tcp)");
                let text = "logins need an encrypted connection to the broker; ask an administrator to rebuild this PC's boot image with the server's CA".into();
                let _ = tx.send(BrokerMessage::Command(Command::ShowMessage { text }));
            }
            (_, _) => {
                let _ = tx.send(super::login::prompt(broker, mac, None, None));
                return Some(me);
            }
        }
        None
    }
}

/// Starts or finds the kiosk PC's one-time desktop and sends the assignment, or the refusal as
/// a message on its screen (the agent takes `Refused` only in answer to its hello). `fresh`:
/// the PC booted again, so a desktop of its last boot is thrown away first. In a task of its
/// own: a VM boot takes a while and pings must go on meanwhile.
fn assign(orch: Arc<Orchestrator>, tx: Option<mpsc::UnboundedSender<BrokerMessage>>, mac: String, fresh: bool) {
    let Some(tx) = tx else { return };
    tokio::spawn(async move {
        if fresh {
            if let Err(e) = orch.leave(&mac).await {
                log::error!("client {mac}: stopping the desktop of its last boot: {e:#}");
            }
        }
        let msg = match super::flow::on_announce(&orch, &mac, orch.kiosk_spec()).await {
            BrokerMessage::Refused { reason } => {
                log::warn!("client {mac}: no desktop: {reason}");
                BrokerMessage::Command(Command::ShowMessage { text: reason })
            }
            other => other,
        };
        if tx.send(msg).is_err() {
            log::info!("client {mac}: gone before its desktop was ready");
        }
    });
}

/// After a connection ends: if the same PC has not connected again within `wait`, it has left
/// for good and its desktop is stopped.
fn leave_unless_back(broker: &Arc<Broker>, mac: String, wait: Duration) {
    let Some(orch) = broker.desktops.clone() else { return };
    let broker = broker.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if broker.is_connected(&mac) {
            return;
        }
        log::info!("client {mac}: gone for {wait:?}, stopping its desktop");
        if let Err(e) = orch.leave(&mac).await {
            log::error!("client {mac}: stopping its desktop: {e:#}");
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn session(
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    dec: &mut Decoder<AgentMessage>,
    queue: &mut VecDeque<Result<AgentMessage, DecodeError>>,
    rx: &mut mpsc::UnboundedReceiver<BrokerMessage>,
    broker: &Broker,
    mac: &str,
    who: &str,
    pc: &std::sync::OnceLock<super::login::Pc>,
) -> anyhow::Result<String> {
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut ping = tokio::time::interval(broker.ping_interval);
    ping.tick().await;
    let mut seq = 0u64;
    let mut last_heard = Instant::now();
    let dead_after = broker.ping_interval * 3;
    let mut bucket = TokenBucket::new(broker.messages_per_sec, broker.message_burst, Instant::now());
    // Dropping the excess still costs its decryption and decoding. An agent that keeps over
    // its rate by more than this (ten times the rate and the burst) is no PC with a burst of
    // news but a flood, and its connection is closed.
    let mut tolerance = TokenBucket::new(
        broker.messages_per_sec.saturating_mul(10),
        broker.message_burst.saturating_mul(10),
        Instant::now(),
    );
    let mut dropped = LogEvery::new(Duration::from_secs(10));
    loop {
        while let Some(r) = queue.pop_front() {
            let now = Instant::now();
            last_heard = now;
            let msg = accept(r, who)?;
            if msg.is_some() && !bucket.allow(now) {
                if !tolerance.allow(now) {
                    bail!(
                        "flooding: far over {} messages a second for too long; closing the connection",
                        broker.messages_per_sec
                    );
                }
                if let Some(more) = dropped.hit(now) {
                    log::warn!(
                        "agent {who}: more than {} messages a second, dropping the excess ({more} dropped before this one)",
                        broker.messages_per_sec
                    );
                }
                continue;
            }
            match msg {
                Some(AgentMessage::Pong { .. }) => broker.registry.seen(mac, now_secs()),
                Some(AgentMessage::Status(s)) => {
                    let text = match &s.error {
                        Some(e) => format!("{:?}: {e}", s.viewer).to_lowercase(),
                        None => format!("{:?}", s.viewer).to_lowercase(),
                    };
                    log::info!("agent {who}: viewer {}", Esc(&text));
                    broker.registry.set_viewer(mac, &text, now_secs());
                    if s.viewer == proto::agent::ViewerState::Connected {
                        broker.stages.record(mac, crate::stages::Event::DesktopShown);
                    }
                }
                Some(AgentMessage::Hello(_)) => bail!("sent a second hello on one connection"),
                Some(AgentMessage::Login { user, password }) => match pc.get() {
                    Some(pc) => pc.login(user, password, busy.clone()),
                    // Never prompted for one: this PC's desktop comes without a login.
                    None => log::warn!("agent {who}: ignoring a login as {} that nobody asked for", Esc(&user)),
                },
                Some(AgentMessage::Logout) => match pc.get() {
                    Some(pc) => pc.logout(),
                    None => log::info!("agent {who}: ignoring a logout: this PC has no logins"),
                },
                None => {}
            }
        }
        tokio::select! {
            more = fill(rd, dec, queue) => {
                if !more? {
                    return Ok("closed by the agent".into());
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > dead_after {
                    bail!("no answer to pings for {:?}", last_heard.elapsed());
                }
                seq += 1;
                send(wr, &BrokerMessage::Ping { seq }).await?;
            }
            msg = rx.recv() => match msg {
                Some(msg) => {
                    if let BrokerMessage::Command(c) = &msg {
                        log::info!("agent {who}: sending command {c:?}");
                    }
                    send(wr, &msg).await?;
                }
                None => return Ok("replaced by a newer connection of the same PC".into()),
            },
        }
    }
}

/// The names the boot server's certificate is issued for: what agents and viewers dial.
pub(crate) fn server_names(settings: &crate::config::Settings) -> crate::ca::ServerNames {
    crate::ca::ServerNames::of_this_machine(&[settings.broker.ip(), settings.address.into()])
}

/// Opens the registry in the state dir and starts the agent listener on the broker address
/// and the admin API on [`crate::admin::admin_addr`]; with `desktops`, announced PCs get their
/// desktops and the orchestrator's notices reach their screens. Both listeners are bound here,
/// so that a taken port stops the start, and bound again when `sup` restarts their service.
pub async fn start(
    settings: &crate::config::Settings,
    desktops: Option<Desktops>,
    binding: HelloBinding,
    enrolments: Arc<Gate>,
    sup: &mut Supervisor,
    budget: &Arc<FdBudget>,
    stages: crate::stages::Sink,
) -> anyhow::Result<Arc<Broker>> {
    let db = settings.state_dir.join("clients.sqlite");
    let limits = &settings.limits;
    let mut broker = Broker::new(Registry::open(&db)?, limits.registry_flush)
        .with_context(|| format!("starting the client registry's thread for {}", db.display()))?;
    broker.leave_after = Duration::from_secs(settings.desktops.leave_after_secs);
    broker.kiosk_grace = Duration::from_secs(settings.desktops.kiosk_grace_secs);
    broker.pcs = settings.pcs.clone();
    broker.logins = Logins::new(Duration::from_secs(settings.desktops.disconnect_grace_secs));
    broker.hello_timeout = limits.broker.handshake_timeout;
    broker.messages_per_sec = limits.agent_messages_per_sec;
    broker.message_burst = limits.agent_message_burst;
    let names = server_names(settings);
    let (cert, key) = crate::ca::ensure_server(&settings.state_dir, &names)?;
    broker.tls = Some(AgentTls {
        acceptor: tokio_rustls::TlsAcceptor::from(proto::tls::server_config(&cert, &key)?),
        plain_too: settings.agent_plain_tcp,
        handshake_timeout: broker.hello_timeout,
    });
    match &binding {
        HelloBinding::Leases(_) => log::info!("broker: a hello is taken only from the address its MAC leased"),
        HelloBinding::Arp { interface, .. } => {
            log::info!("broker: a hello is taken only from an address its MAC answers ARP for on {interface}")
        }
        HelloBinding::Off => log::warn!("hello_binding = false: any LAN device that sends a PC's MAC is taken for that PC"),
    }
    broker.binding = binding;
    broker.stages = stages.clone();
    broker.enrolments = Some(enrolments);
    if settings.pcs.enrolment == EnrolmentMode::Approve {
        log::info!("broker: enrolment = approve: a new PC waits for an administrator (bootserver client MAC approve)");
    }
    // The accounts: their admin routes, and the backends a login is checked against.
    let accounts = Arc::new(crate::accounts::AccountStore::open_in(&settings.state_dir)?);
    broker.auth = Some(Arc::new(
        crate::accounts::Authenticator::new(&settings.auth, accounts.clone()).context("key `auth`")?,
    ));
    if settings.agent_plain_tcp {
        log::warn!("agent_plain_tcp = true: agents without TLS are taken too; their hellos and tokens cross the LAN in clear");
    }
    let mut extra = Some(crate::accounts::api::router(accounts).merge(crate::stages::api::router(stages)));
    let mut notices = None;
    let mut recovered = Vec::new();
    let has_desktops = desktops.is_some();
    let orchestrator = desktops.as_ref().map(|d| d.orchestrator.clone());
    let metrics = super::metrics::Metrics::open(settings.metrics.clone(), &settings.state_dir).context("key `metrics.file`")?;
    let sampled = desktops.as_ref().map(|d| (d.orchestrator.clone(), d.hosts.clone()));
    if let Some((orch, hosts)) = sampled.clone() {
        orch.set_metrics(metrics.clone());
        let m = metrics.clone();
        sup.add("metrics sampler", move || m.clone().run(hosts.clone(), orch.clone()));
    }
    if let Some(d) = desktops {
        recovered = d.recovered;
        broker.desktops = Some(d.orchestrator.clone());
        extra = extra.map(|a| a.merge(super::admin_routes::router(d.orchestrator, d.hosts, d.proxy)));
        notices = Some(d.notices);
    }
    let broker = Arc::new(broker);
    let ctx = super::metrics::routes::Ctx {
        metrics,
        broker: broker.clone(),
        desktops: sampled,
        pool_configured: settings.desktops.pool,
    };
    extra = extra.map(|a| a.merge(super::metrics::routes::router(ctx)));
    if let Some(orch) = orchestrator {
        let b = broker.clone();
        let tick = Duration::from_secs(settings.desktops.disconnect_grace_secs.clamp(1, 10)) / 4;
        sup.add("login grace", move || super::login::expire(b.clone(), orch.clone(), tick));
    }
    if let Some(rx) = notices {
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let b = broker.clone();
        sup.add("notices", move || {
            let (rx, b) = (rx.clone(), b.clone());
            async move { forward_notices(&mut *rx.lock().await, b).await }
        });
    }
    // A desktop that came back from the session store is kept only if its PC reconnects.
    for user in recovered {
        if !super::login::recovered(&broker, &user) {
            let wait = broker.leave_after;
            leave_unless_back(&broker, user, wait);
        }
    }
    let addr = settings.broker;
    let mut agents = Rebind::new(move || async move {
        TcpListener::bind(addr).await.with_context(|| format!("listening for agents on {addr} (key `broker`)"))
    })
    .await?;
    let limiter = ConnLimiter::new("broker", "limits.broker", limits.broker.clone(), 1, budget.clone());
    let b = broker.clone();
    sup.add("broker", move || {
        let (l, b, limiter) = (agents.bound(), b.clone(), limiter.clone());
        async move { run(l.await?, b, limiter).await }
    });
    let admin_addr = crate::admin::admin_addr()?;
    let mut admin = Rebind::new(move || async move {
        TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("listening for the admin API on {admin_addr} ({})", crate::admin::ADMIN_ENV))
    })
    .await?;
    let limiter = ConnLimiter::new("admin", "limits.admin", limits.admin.clone(), 1, budget.clone());
    let token = crate::admin::ensure_token(&settings.state_dir)?;
    let own: Vec<String> = names.ips.iter().map(|i| i.to_string()).chain(names.dns.iter().cloned()).collect();
    // The web console shares the admin address; its logins are taken by the API's guard too.
    let sessions = Arc::new(crate::web::Sessions::new(crate::web::SESSION_TTL));
    let gate = Arc::new(crate::admin::Guard::new(token, admin_addr, &own).with_console(sessions.clone()));
    let auth = broker.auth.clone().context("the accounts' backends are set above")?;
    let console = crate::web::router(Arc::new(crate::web::Console::new(sessions, auth, gate.clone(), has_desktops)));
    let b = broker.clone();
    sup.add("admin", move || {
        let (l, b, limiter, extra, gate) = (admin.bound(), b.clone(), limiter.clone(), extra.clone(), gate.clone());
        let console = Some(console.clone());
        async move { crate::admin::run(l.await?, b, extra, limiter, gate, console).await }
    });
    Ok(broker)
}

/// Shows the orchestrator's messages (a host failure, a move) on the PCs' screens, and sends
/// them the assignments it makes outside an announce (a token rotated at a handoff).
async fn forward_notices(rx: &mut mpsc::UnboundedReceiver<Notice>, broker: Arc<Broker>) -> anyhow::Result<()> {
    while let Some(notice) = rx.recv().await {
        let (user, msg) = match notice {
            Notice::Message { user, text } => (user, BrokerMessage::Command(Command::ShowMessage { text })),
            Notice::Assignment { user, assignment } => (user, BrokerMessage::Assignment(assignment)),
        };
        // A person's notices go to the PC where they sit, a PC's to the PC.
        let Some(pc) = broker.logins.route(&user) else {
            log::info!("notice for {} not delivered: they sit at no PC", Esc(&user));
            continue;
        };
        if let Err(e) = broker.deliver(&pc, msg) {
            log::info!("notice for {} not delivered: {e}", Esc(&user));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::registry::sample_hello as hello;
    use proto::agent::{HEADER, MAX_FRAME};
    use tokio::net::TcpStream;

    async fn start_broker(dir: &std::path::Path) -> (SocketAddr, Arc<Broker>) {
        let mut b = Broker::new(Registry::open(&dir.join("r.sqlite")).unwrap(), Duration::from_millis(50)).unwrap();
        b.ping_interval = Duration::from_millis(200);
        b.hello_timeout = Duration::from_millis(500);
        let broker = Arc::new(b);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = crate::net::limits::Limits::default().broker;
        tokio::spawn(run(l, broker.clone(), ConnLimiter::unbounded("broker", limits)));
        (addr, broker)
    }

    /// A well-behaved agent after its hello and the broker's welcome.
    async fn good_agent(addr: SocketAddr, last: u8) -> (TcpStream, Decoder<BrokerMessage>) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&encode(&AgentMessage::Hello(hello(last))).unwrap()).await.unwrap();
        let mut d = Decoder::new();
        assert!(matches!(next(&mut s, &mut d).await, Some(BrokerMessage::Welcome(_))));
        (s, d)
    }

    async fn next(s: &mut TcpStream, d: &mut Decoder<BrokerMessage>) -> Option<BrokerMessage> {
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(r) = d.feed(&buf[..n]).into_iter().next() {
                return r.ok();
            }
        }
    }

    async fn closed_by_broker(mut s: TcpStream) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn bad_connections_are_dropped_and_good_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, broker) = start_broker(dir.path()).await;
        let (mut good, mut dec) = good_agent(addr, 1).await;

        // Garbage (not JSON), an oversized length, a frame cut short, a frame before the hello,
        // and a second hello on a live connection.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"\x00\x00\x00\x05hello").await.unwrap();
        let mut oversized = TcpStream::connect(addr).await.unwrap();
        oversized.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes()).await.unwrap();
        let mut truncated = TcpStream::connect(addr).await.unwrap();
        let frame = encode(&AgentMessage::Hello(hello(3))).unwrap();
        truncated.write_all(&frame[..HEADER + 10]).await.unwrap();
        truncated.shutdown().await.unwrap();
        let mut early = TcpStream::connect(addr).await.unwrap();
        early.write_all(&encode(&AgentMessage::Pong { seq: 1 }).unwrap()).await.unwrap();
        let (mut twice, _) = good_agent(addr, 2).await;
        twice.write_all(&encode(&AgentMessage::Hello(hello(2))).unwrap()).await.unwrap();
        let silent = TcpStream::connect(addr).await.unwrap();

        for (name, s) in [("garbage", garbage), ("oversized", oversized), ("truncated", truncated), ("early", early), ("second hello", twice), ("silent", silent)] {
            assert!(closed_by_broker(s).await, "{name} connection was not dropped");
        }

        // The good agent is still served: pings keep coming, answered, and a command arrives.
        for _ in 0..3 {
            match next(&mut good, &mut dec).await {
                Some(BrokerMessage::Ping { seq }) => {
                    good.write_all(&encode(&AgentMessage::Pong { seq }).unwrap()).await.unwrap()
                }
                other => panic!("expected a ping, got {other:?}"),
            }
        }
        assert!(broker.is_connected("52:54:00:00:00:01"));
        broker.command("52:54:00:00:00:01", Command::Reboot).unwrap();
        loop {
            match next(&mut good, &mut dec).await {
                Some(BrokerMessage::Ping { seq }) => {
                    good.write_all(&encode(&AgentMessage::Pong { seq }).unwrap()).await.unwrap()
                }
                Some(BrokerMessage::Command(Command::Reboot)) => break,
                other => panic!("expected the reboot command, got {other:?}"),
            }
        }
        let rec = broker.registry.get("52:54:00:00:00:01").await.unwrap().unwrap();
        assert_eq!(rec.state, ClientState::Rebooting);
        assert_eq!(broker.command("52:54:00:00:00:09", Command::Reboot), Err(SendError::NotConnected("52:54:00:00:00:09".into())));
    }

    #[tokio::test]
    async fn an_agent_that_stops_answering_pings_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, broker) = start_broker(dir.path()).await;
        let (mute, _) = good_agent(addr, 7).await;
        assert!(closed_by_broker(mute).await);
        let rec = broker.registry.get("52:54:00:00:00:07").await.unwrap().unwrap();
        assert_eq!(rec.state, ClientState::Offline);
        assert!(!broker.is_connected("52:54:00:00:00:07"));
    }

    #[tokio::test]
    async fn a_hello_from_an_address_leased_to_another_mac_is_refused_and_the_pc_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Broker::new(Registry::open(&dir.path().join("r.sqlite")).unwrap(), Duration::from_millis(50)).unwrap();
        b.ping_interval = Duration::from_millis(200);
        let pc: proto::agent::MacAddr = "52:54:00:00:00:01".parse().unwrap();
        b.binding = HelloBinding::Leases(crate::dhcp::LeaseView::of(&[("127.0.0.1".parse().unwrap(), pc, u64::MAX)]));
        let broker = Arc::new(b);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = crate::net::limits::Limits::default().broker;
        tokio::spawn(run(l, broker.clone(), ConnLimiter::unbounded("broker", limits)));

        let (mut good, mut dec) = good_agent(addr, 1).await;
        let before = broker.registry.get("52:54:00:00:00:01").await.unwrap().unwrap();
        let mut spoof = TcpStream::connect(addr).await.unwrap();
        spoof.write_all(&encode(&AgentMessage::Hello(hello(2))).unwrap()).await.unwrap();
        match next(&mut spoof, &mut Decoder::new()).await {
            Some(BrokerMessage::Refused { reason }) => assert!(reason.contains("127.0.0.1"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(closed_by_broker(spoof).await);
        assert!(broker.registry.get("52:54:00:00:00:02").await.unwrap().is_none(), "the spoofed MAC was recorded");
        // The real PC keeps its connection and its row.
        assert!(broker.is_connected("52:54:00:00:00:01"));
        assert!(matches!(next(&mut good, &mut dec).await, Some(BrokerMessage::Ping { .. })));
        assert_eq!(broker.registry.get("52:54:00:00:00:01").await.unwrap().unwrap().boots, before.boots);
    }

    #[tokio::test]
    async fn a_disabled_pc_is_refused_and_others_welcomed() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Broker::new(Registry::open(&dir.path().join("r.sqlite")).unwrap(), Duration::from_millis(50)).unwrap();
        b.pcs = toml::from_str("[[rule]]\nmatch = \"52:54:00:00:00:0?\"\npolicy = \"disabled\"").unwrap();
        let broker = Arc::new(b);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(run(l, broker.clone(), ConnLimiter::unbounded("broker", crate::net::limits::Limits::default().broker)));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&encode(&AgentMessage::Hello(hello(3))).unwrap()).await.unwrap();
        match next(&mut s, &mut Decoder::new()).await {
            Some(BrokerMessage::Refused { reason }) => assert!(reason.contains("disabled by the administrator"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(closed_by_broker(s).await);
        assert!(!broker.is_connected("52:54:00:00:00:03"));
        let (_ok, _) = good_agent(addr, 0x10).await;
        assert!(broker.is_connected("52:54:00:00:00:10"));
    }

    #[tokio::test]
    async fn a_newer_major_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _broker) = start_broker(dir.path()).await;
        let mut h = hello(8);
        h.version.major += 1;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&encode(&AgentMessage::Hello(h)).unwrap()).await.unwrap();
        let mut dec = Decoder::new();
        assert!(matches!(next(&mut s, &mut dec).await, Some(BrokerMessage::Refused { .. })));
    }
}
