//! The agent protocol: one TCP connection from the thin-client agent to the broker.
//!
//! * Messages: [`AgentMessage`] (agent to broker) and [`BrokerMessage`] (broker to agent),
//!   JSON objects whose `type` field names the message.
//! * Framing: each message is one frame, a `u32` big-endian payload length followed by that
//!   many bytes of UTF-8 JSON, at most [`MAX_FRAME`] bytes. [`encode`] writes one,
//!   [`Decoder`] reads them from byte chunks as they arrive.
//! * Versions: see [`negotiate`]; unknown fields are ignored, unknown message types are
//!   reported (and may be skipped) without losing the connection.
//! * [`Session`]: the agent's side of a connection as a pure state machine (connect, hello,
//!   welcome, assignment, pings, reconnect with backoff), fed events and the time.
//!
//! JSON rather than a compact binary encoding: messages are few and small (a hello is a few
//! hundred bytes, then a ping every few seconds), and a text protocol can be read in a packet
//! capture and extended with optional fields that older peers skip.

use std::fmt;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod session;
pub use session::{Input, Output, Session, SessionConfig, SessionState};

/// The protocol version this build speaks.
pub const PROTOCOL: ProtocolVersion = ProtocolVersion { major: 1, minor: 1 };

/// The first minor version with logins (`login`, `logout`, `login_prompt`, `approval`,
/// `logged_in`): a broker sends these only once a welcome has negotiated it.
pub const LOGIN_MINOR: u16 = 1;

/// Largest frame payload either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// `major.minor`: peers of different majors cannot talk; minors only add optional fields and
/// message types that a peer uses once the negotiated minor allows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The broker's rule: same major, and the lower of the two minors is spoken.
pub fn negotiate(
    ours: ProtocolVersion,
    theirs: ProtocolVersion,
) -> Result<ProtocolVersion, String> {
    if ours.major != theirs.major {
        return Err(format!(
            "agent protocol {theirs} is not supported: this broker speaks {}.x; update the \
             boot image or the broker",
            ours.major
        ));
    }
    Ok(ProtocolVersion { major: ours.major, minor: ours.minor.min(theirs.minor) })
}

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not a MAC address like aa:bb:cc:dd:ee:ff");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(err)?;
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A display mode the PC's screen offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayMode {
    pub width: u32,
    pub height: u32,
    /// Refresh rate in millihertz, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_mhz: Option<u32>,
}

/// Time spent in one boot phase (`firmware`, `kernel`, `modules`, `dhcp`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPhase {
    pub name: String,
    pub ms: u64,
}

/// The agent's first message on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: ProtocolVersion,
    pub mac: MacAddr,
    pub ipv4: Ipv4Addr,
    pub cpu_model: String,
    pub cpu_count: u32,
    pub ram_bytes: u64,
    #[serde(default)]
    pub display_modes: Vec<DisplayMode>,
    pub agent_version: String,
    /// Milliseconds from power-on (or kernel start, where firmware time is unknown) to this
    /// hello.
    pub boot_ms: u64,
    /// The parts of `boot_ms` that are known, in order.
    #[serde(default)]
    pub boot_phases: Vec<BootPhase>,
    /// The token of the last welcome, so the broker knows this is the same boot reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
}

/// What the viewer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewerState {
    /// No assignment yet.
    Idle,
    Starting,
    /// Showing the desktop.
    Connected,
    /// Lost its connection and is retrying.
    Reconnecting,
    /// Exited or crashed; the agent restarts it.
    Exited,
    /// A state from a newer agent.
    #[serde(other)]
    Unknown,
}

/// A change worth telling the broker (and its admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub viewer: ViewerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A password on its way from the login screen to the broker. It is never printed (`Debug`
/// shows `"***"`) and its bytes are overwritten when it is dropped, so that it lives in the
/// agent's memory only until it is sent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Self {
        Password(s)
    }
    /// The password itself, for the one place that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Nothing can promise that no copy was made before (serde's buffers, a TLS record); this
        // one at least is not left behind in freed memory.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Longest user name and password a login may carry, in bytes; longer ones are refused
/// before anything else is done with them.
pub const MAX_LOGIN_NAME: usize = 256;
pub const MAX_PASSWORD: usize = 1024;

/// Agent to broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Hello(Hello),
    Status(Status),
    /// Answers [`BrokerMessage::Ping`] with its `seq`.
    Pong {
        seq: u64,
    },
    /// The person at the login screen submitted this (1.1; only inside TLS).
    Login {
        user: String,
        password: Password,
    },
    /// The person asked to log out (the viewer's logout keys) (1.1).
    Logout,
}

/// The broker accepted the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The negotiated version both sides now speak.
    pub version: ProtocolVersion,
    /// To put in the hello of the next connection of this boot.
    pub resume_token: String,
    /// The broker pings this often; three missed intervals mean the connection is dead.
    pub ping_interval_ms: u64,
}

/// Where the VNC password comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum PasswordSource {
    /// The session token is the VNC password.
    SessionToken,
    /// This password, for setups that need a fixed one.
    Inline { password: String },
}

/// The desktop to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The broker's VNC proxy on the boot server; never a host directly.
    pub vnc: SocketAddr,
    /// Opens this client's own VM at the proxy and nothing else.
    pub session_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordSource>,
}

/// What the admin (or the broker) tells the PC to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Drop this connection and connect again now.
    Reconnect,
    /// Show this text on the console.
    ShowMessage {
        text: String,
    },
    Reboot,
    PowerOff,
}

/// Whether the broker knows this PC (`enrolment = approve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enrolment {
    /// Approved, or the broker takes any PC (`enrolment = open`).
    Enrolled,
    /// Waiting for an admin.
    Pending,
    #[serde(other)]
    Unknown,
}

/// Show the login screen (1.1). Sent after the welcome to a PC whose policy is `login`, after
/// a failed login (with `message`), after a logout, and when the person's desktop moved to
/// another PC (roaming, with `message` saying where).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginPrompt {
    /// The PC's name, shown on the screen.
    pub pc: String,
    pub enrolment: Enrolment,
    /// Why the screen is shown again: wrong password, account disabled, no capacity, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The user name to put back in the field (after a failed login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The VNC proxy a login's desktop will be shown through: the agent may connect its viewer
    /// there while the form is up, so that only the credentials are left to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<SocketAddr>,
}

/// The login was accepted (1.1); the desktop follows as an [`Assignment`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn {
    pub user: String,
    /// The key combination that logs out, in words (`"Ctrl+Alt+End"`), for the status line.
    pub logout_keys: String,
}

/// Broker to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BrokerMessage {
    Welcome(Welcome),
    /// The hello was not accepted (version, or the PC is not allowed); shown on screen.
    Refused {
        reason: String,
    },
    Assignment(Assignment),
    Command(Command),
    Ping {
        seq: u64,
    },
    /// Show the login screen (1.1).
    LoginPrompt(LoginPrompt),
    /// This PC waits for an admin's approval; show the code the admin sees (1.1).
    Approval {
        pc: String,
        code: String,
    },
    /// The login was accepted (1.1).
    LoggedIn(LoggedIn),
}

/// A message of one direction of the protocol.
pub trait Message: Serialize + DeserializeOwned {
    /// Every `type` this side of this build understands.
    const TYPES: &'static [&'static str];
    /// Who sends it, for error messages.
    const SENDER: &'static str;
    fn type_name(&self) -> &'static str;
}

impl Message for AgentMessage {
    const TYPES: &'static [&'static str] = &["hello", "status", "pong", "login", "logout"];
    const SENDER: &'static str = "agent";
    fn type_name(&self) -> &'static str {
        match self {
            AgentMessage::Hello(_) => "hello",
            AgentMessage::Status(_) => "status",
            AgentMessage::Pong { .. } => "pong",
            AgentMessage::Login { .. } => "login",
            AgentMessage::Logout => "logout",
        }
    }
}

impl Message for BrokerMessage {
    const TYPES: &'static [&'static str] = &[
        "welcome",
        "refused",
        "assignment",
        "command",
        "ping",
        "login_prompt",
        "approval",
        "logged_in",
    ];
    const SENDER: &'static str = "broker";
    fn type_name(&self) -> &'static str {
        match self {
            BrokerMessage::Welcome(_) => "welcome",
            BrokerMessage::Refused { .. } => "refused",
            BrokerMessage::Assignment(_) => "assignment",
            BrokerMessage::Command(_) => "command",
            BrokerMessage::Ping { .. } => "ping",
            BrokerMessage::LoginPrompt(_) => "login_prompt",
            BrokerMessage::Approval { .. } => "approval",
            BrokerMessage::LoggedIn(_) => "logged_in",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("{ty} message is {len} bytes, more than the {max}-byte frame limit")]
    TooLarge { ty: &'static str, len: usize, max: usize },
    #[error("{ty} message cannot be written as JSON: {detail}")]
    Json { ty: &'static str, detail: String },
}

/// One frame: length prefix and JSON payload.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, EncodeError> {
    let ty = msg.type_name();
    let mut out = vec![0u8; HEADER];
    serde_json::to_writer(&mut out, msg)
        .map_err(|e| EncodeError::Json { ty, detail: e.to_string() })?;
    let len = out.len() - HEADER;
    if len > MAX_FRAME {
        return Err(EncodeError::TooLarge { ty, len, max: MAX_FRAME });
    }
    out[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Why bytes from the peer are not a message. Only [`DecodeError::is_fatal`] errors end the
/// stream; after the others the next frame is read as usual.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "frame length {len} exceeds the {max}-byte limit (not this protocol, or a broken peer)"
    )]
    Oversized { len: u64, max: usize },
    #[error("connection closed inside a frame: {have} of {need} bytes received")]
    Truncated { have: usize, need: usize },
    #[error("empty frame")]
    Empty,
    #[error("frame is not UTF-8 (byte {at})")]
    Utf8 { at: usize },
    #[error("frame is not JSON: {detail}")]
    Json { detail: String },
    #[error("frame is JSON but not an object with a string \"type\" field")]
    NoType,
    #[error("unknown {sender} message type {ty:?} (this build knows {known})")]
    UnknownType { sender: &'static str, ty: String, known: String },
    #[error("{sender} message {ty:?} is malformed: {detail}")]
    Malformed { sender: &'static str, ty: String, detail: String },
    #[error("stream abandoned after an earlier framing error")]
    Stopped,
}

impl DecodeError {
    /// Whether the stream can no longer be read (the frame boundaries are lost).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DecodeError::Oversized { .. } | DecodeError::Truncated { .. } | DecodeError::Stopped
        )
    }
}

/// Turns one frame's payload into a message.
pub fn decode_payload<M: Message>(payload: &[u8]) -> Result<M, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    let text =
        std::str::from_utf8(payload).map_err(|e| DecodeError::Utf8 { at: e.valid_up_to() })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Json { detail: e.to_string() })?;
    let ty = value.get("type").and_then(|t| t.as_str()).ok_or(DecodeError::NoType)?;
    if !M::TYPES.contains(&ty) {
        return Err(DecodeError::UnknownType {
            sender: M::SENDER,
            ty: ty.chars().take(64).collect(),
            known: M::TYPES.join(", "),
        });
    }
    let ty = ty.to_string();
    M::deserialize(value).map_err(|e| DecodeError::Malformed {
        sender: M::SENDER,
        ty,
        detail: e.to_string(),
    })
}

/// Reads frames from a byte stream fed in chunks of any size.
///
/// Holds at most one partial frame (`HEADER + MAX_FRAME` bytes): a length above the limit is
/// refused as soon as its four bytes are in, before any payload is buffered.
#[derive(Debug)]
pub struct Decoder<M> {
    buf: Vec<u8>,
    need: Option<usize>,
    stopped: bool,
    _msg: PhantomData<fn() -> M>,
}

impl<M: Message> Default for Decoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> Decoder<M> {
    pub fn new() -> Self {
        Decoder { buf: Vec::new(), need: None, stopped: false, _msg: PhantomData }
    }

    /// Consumes `chunk` whole and returns every frame it completes, in order. After a fatal
    /// error the rest is ignored and every later call returns [`DecodeError::Stopped`].
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<Result<M, DecodeError>> {
        let mut out = Vec::new();
        if self.stopped {
            out.push(Err(DecodeError::Stopped));
            return out;
        }
        while !chunk.is_empty() {
            let want = self.need.unwrap_or(HEADER);
            let take = (want - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() < want {
                break;
            }
            match self.need {
                None => {
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    self.buf.clear();
                    if len as usize > MAX_FRAME {
                        self.stopped = true;
                        out.push(Err(DecodeError::Oversized { len: len.into(), max: MAX_FRAME }));
                        return out;
                    }
                    if len == 0 {
                        out.push(Err(DecodeError::Empty));
                    } else {
                        self.need = Some(len as usize);
                    }
                }
                Some(_) => {
                    out.push(decode_payload(&self.buf));
                    self.buf.clear();
                    self.need = None;
                }
            }
        }
        out
    }

    /// Call at end of stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.need {
            _ if self.stopped => Err(DecodeError::Stopped),
            None if self.buf.is_empty() => Ok(()),
            None => Err(DecodeError::Truncated { have: self.buf.len(), need: HEADER }),
            Some(n) => {
                Err(DecodeError::Truncated { have: HEADER + self.buf.len(), need: HEADER + n })
            }
        }
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
