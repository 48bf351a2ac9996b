//! The agent's side of the broker connection as a pure state machine.
//!
//! The agent's loop feeds it [`Input`]s with the current time in milliseconds (any monotonic
//! clock) and carries out the [`Output`]s; it calls again with [`Input::Tick`] at
//! [`Session::deadline`]. Nothing here sleeps, reads a clock or touches a socket.
//!
//! ```text
//! Idle --start--> Connecting --connected--> HelloSent --welcome--> Welcomed --assignment--> Assigned
//!                     ^                         |                     |                        |
//!                     +--- Backoff <------------+---------------------+------------------------+
//!                          (failure, close, refusal, timeout, missed pings, fatal decode error)
//! ```

use super::{
    AgentMessage, Assignment, BrokerMessage, Command, DecodeError, Hello, LoggedIn, LoginPrompt,
    Password, ProtocolVersion, Status,
};

/// Timing knobs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// First retry delay; doubles with every failed attempt.
    pub backoff_initial_ms: u64,
    /// Retry delays never exceed this.
    pub backoff_max_ms: u64,
    /// A TCP connect that takes longer has failed.
    pub connect_timeout_ms: u64,
    /// The welcome must come this soon after the hello.
    pub hello_timeout_ms: u64,
    /// Missed ping intervals after which the broker is taken for gone.
    pub missed_pings: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            connect_timeout_ms: 5_000,
            hello_timeout_ms: 10_000,
            missed_pings: 3,
        }
    }
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Idle,
    Connecting,
    HelloSent,
    Welcomed,
    Assigned,
    /// Waiting to connect again at `until`.
    Backoff {
        until: u64,
    },
}

/// What happened, told to the session by the agent's loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Begin: connect now.
    Start,
    /// The TCP connection asked for by [`Output::Connect`] is up.
    Connected,
    /// It could not be made.
    ConnectFailed { reason: String },
    /// A message arrived.
    Received(BrokerMessage),
    /// The decoder reported an error; fatal ones end the connection.
    DecodeError(DecodeError),
    /// The connection closed or failed.
    Closed { reason: String },
    /// The viewer changed state; sent now if welcomed, else right after the next welcome.
    Status(Status),
    /// Time passed (call at [`Session::deadline`]).
    Tick,
    /// The person at the login screen submitted it. Sent only while connected and welcomed;
    /// otherwise dropped (the broker prompts again after the reconnection).
    Login { user: String, password: Password },
    /// The person pressed the logout keys.
    Logout,
}

/// What the agent's loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a TCP connection to the broker.
    Connect,
    /// Encode and send this on the current connection.
    Send(AgentMessage),
    /// Close the current connection (if any is open); the session already planned what next.
    Close { reason: String },
    /// Show this desktop (start or retarget the viewer). Repeated only when it changes.
    Assigned(Assignment),
    /// Carry out an admin command (never [`Command::Reconnect`], which the session handles).
    Run(Command),
    /// The broker refused this PC; show the reason on screen.
    Refused { reason: String },
    /// Not connected; the next attempt is in `retry_in_ms` (for the status screen and logs).
    Waiting { reason: String, retry_in_ms: u64 },
    /// Stop the viewer, if one runs, and show the login screen.
    Prompt(LoginPrompt),
    /// Stop the viewer, if one runs, and show that the PC waits for approval with this code.
    Approval { pc: String, code: String },
    /// The login was accepted; the desktop's assignment follows.
    LoggedIn(LoggedIn),
}

/// The agent's connection to the broker.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    hello: Hello,
    state: SessionState,
    deadline: Option<u64>,
    /// Failed attempts since the last welcome, for the backoff.
    attempt: u32,
    rng: u64,
    ping_interval_ms: u64,
    version: Option<ProtocolVersion>,
    assignment: Option<Assignment>,
    pending_status: Option<Status>,
}

impl Session {
    /// `hello` is sent on every connection (with the latest resume token); `seed` drives the
    /// backoff jitter, so that PCs powered on together do not retry together.
    pub fn new(config: SessionConfig, hello: Hello, seed: u64) -> Self {
        Session {
            config,
            hello,
            state: SessionState::Idle,
            deadline: None,
            attempt: 0,
            rng: seed,
            ping_interval_ms: 0,
            version: None,
            assignment: None,
            pending_status: None,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    /// When to call with [`Input::Tick`], if anything is timed.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// The version negotiated by the last welcome.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    pub fn resume_token(&self) -> Option<&str> {
        self.hello.resume_token.as_deref()
    }

    /// Advances the session by one input at time `now` (milliseconds).
    pub fn handle(&mut self, now: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        use SessionState as S;
        match (self.state, input) {
            (S::Idle, Input::Start) => self.connect(now, &mut out),
            (_, Input::Start) => {}
            (S::Connecting, Input::Connected) => {
                self.state = S::HelloSent;
                self.deadline = Some(now + self.config.hello_timeout_ms);
                out.push(Output::Send(AgentMessage::Hello(self.hello.clone())));
            }
            (S::Connecting, Input::ConnectFailed { reason }) => {
                self.backoff(now, format!("cannot connect to the broker: {reason}"), &mut out)
            }
            (S::Connecting, Input::Closed { reason }) => {
                self.backoff(now, format!("cannot connect to the broker: {reason}"), &mut out)
            }
            (S::HelloSent | S::Welcomed | S::Assigned, Input::Closed { reason }) => {
                self.backoff(now, format!("connection to the broker lost: {reason}"), &mut out)
            }
            (S::HelloSent | S::Welcomed | S::Assigned, Input::DecodeError(e)) if e.is_fatal() => {
                self.fail(now, format!("unreadable data from the broker: {e}"), &mut out)
            }
            (S::HelloSent | S::Welcomed | S::Assigned, Input::Received(msg)) => {
                self.received(now, msg, &mut out)
            }
            (S::Welcomed | S::Assigned, Input::Status(status)) => {
                out.push(Output::Send(AgentMessage::Status(status)))
            }
            (_, Input::Status(status)) => self.pending_status = Some(status),
            (_, Input::Tick) => self.tick(now, &mut out),
            (S::Welcomed | S::Assigned, Input::Login { user, password }) => {
                out.push(Output::Send(AgentMessage::Login { user, password }))
            }
            (S::Welcomed | S::Assigned, Input::Logout) => out.push(Output::Send(AgentMessage::Logout)),
            // Late reports of a connection already given up, and skippable decode errors
            // (an unknown message type from a newer broker), change nothing.
            (_, _) => {}
        }
        out
    }

    fn received(&mut self, now: u64, msg: BrokerMessage, out: &mut Vec<Output>) {
        use SessionState as S;
        let welcomed = matches!(self.state, S::Welcomed | S::Assigned);
        match msg {
            BrokerMessage::Welcome(w) if self.state == S::HelloSent => {
                self.state = S::Welcomed;
                self.attempt = 0;
                self.version = Some(w.version);
                self.ping_interval_ms = w.ping_interval_ms;
                self.hello.resume_token = Some(w.resume_token);
                self.alive(now);
                if let Some(status) = self.pending_status.take() {
                    out.push(Output::Send(AgentMessage::Status(status)));
                }
            }
            BrokerMessage::Refused { reason } if self.state == S::HelloSent => {
                out.push(Output::Refused { reason: reason.clone() });
                self.fail(now, format!("refused by the broker: {reason}"), out);
            }
            BrokerMessage::Ping { seq } if welcomed => {
                self.alive(now);
                out.push(Output::Send(AgentMessage::Pong { seq }));
            }
            BrokerMessage::Assignment(a) if welcomed => {
                self.alive(now);
                self.state = S::Assigned;
                if self.assignment.as_ref() != Some(&a) {
                    self.assignment = Some(a.clone());
                    out.push(Output::Assigned(a));
                }
            }
            BrokerMessage::Command(Command::Reconnect) if welcomed => {
                // Asked for, not a failure: connect again at once.
                out.push(Output::Close { reason: "the broker asked to reconnect".into() });
                self.attempt = 0;
                self.connect(now, out);
            }
            BrokerMessage::Command(c) if welcomed => {
                self.alive(now);
                out.push(Output::Run(c));
            }
            BrokerMessage::LoginPrompt(p) if welcomed => {
                self.alive(now);
                self.unassign();
                out.push(Output::Prompt(p));
            }
            BrokerMessage::Approval { pc, code } if welcomed => {
                self.alive(now);
                self.unassign();
                out.push(Output::Approval { pc, code });
            }
            BrokerMessage::LoggedIn(l) if welcomed => {
                self.alive(now);
                out.push(Output::LoggedIn(l));
            }
            other => {
                let reason = format!("the broker sent {:?} out of turn", type_of(&other));
                self.fail(now, reason, out);
            }
        }
    }

    /// The desktop is no longer shown: the next assignment starts a viewer even if it is the
    /// same as the last one.
    fn unassign(&mut self) {
        self.state = SessionState::Welcomed;
        self.assignment = None;
    }

    fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.state {
            SessionState::Backoff { .. } => self.connect(now, out),
            SessionState::Connecting => {
                let reason = format!(
                    "cannot connect to the broker: no answer in {} ms",
                    self.config.connect_timeout_ms
                );
                self.fail(now, reason, out)
            }
            SessionState::HelloSent => {
                let reason =
                    format!("no welcome from the broker in {} ms", self.config.hello_timeout_ms);
                self.fail(now, reason, out)
            }
            SessionState::Welcomed | SessionState::Assigned => {
                let reason = format!("no ping from the broker in {} ms", self.ping_timeout());
                self.fail(now, reason, out)
            }
            SessionState::Idle => self.deadline = None,
        }
    }

    fn connect(&mut self, now: u64, out: &mut Vec<Output>) {
        self.state = SessionState::Connecting;
        self.deadline = Some(now + self.config.connect_timeout_ms);
        out.push(Output::Connect);
    }

    /// Something went wrong on an open connection: close it, then back off.
    fn fail(&mut self, now: u64, reason: String, out: &mut Vec<Output>) {
        out.push(Output::Close { reason: reason.clone() });
        self.backoff(now, reason, out);
    }

    fn backoff(&mut self, now: u64, reason: String, out: &mut Vec<Output>) {
        let delay = self.next_delay();
        self.attempt = self.attempt.saturating_add(1);
        self.state = SessionState::Backoff { until: now + delay };
        self.deadline = Some(now + delay);
        out.push(Output::Waiting { reason, retry_in_ms: delay });
    }

    /// Exponential backoff with "equal jitter": half the capped delay is fixed, the other half
    /// random, so retries spread out but never come sooner than half the delay.
    fn next_delay(&mut self) -> u64 {
        let exp = 1u64.checked_shl(self.attempt.min(63)).unwrap_or(u64::MAX);
        let base =
            self.config.backoff_initial_ms.saturating_mul(exp).min(self.config.backoff_max_ms);
        let half = base / 2;
        half + self.random() % (base - half + 1)
    }

    /// splitmix64: `proto` keeps to serde and thiserror, and jitter needs no more than this.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn ping_timeout(&self) -> u64 {
        self.ping_interval_ms.saturating_mul(self.config.missed_pings).max(1)
    }

    /// Heard from the broker: the ping clock restarts (a broker that announced no pings is
    /// trusted until the connection closes).
    fn alive(&mut self, now: u64) {
        self.deadline = (self.ping_interval_ms > 0).then(|| now + self.ping_timeout());
    }
}

fn type_of(msg: &BrokerMessage) -> &'static str {
    use super::Message;
    msg.type_name()
}
