//! The connection to the broker: a thin blocking loop around `proto::agent::Session`, which
//! decides everything (hello, welcome, pings, backoff); this file only moves bytes and time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::agent::{
    encode, Assignment, BrokerMessage, Command, Decoder, Hello, Input, Output, PasswordSource, Session,
    SessionConfig, SessionState, Status,
};

use super::console::{Console, Screen};
use super::supervise::{Order, Target};
use super::Event;

/// Longest the loop sleeps, so status changes from the supervisor go out promptly.
const POLL: Duration = Duration::from_millis(200);

pub(crate) fn target_of(a: &Assignment) -> Target {
    let password = match &a.password {
        Some(PasswordSource::Inline { password }) => Some(password.clone()),
        Some(PasswordSource::SessionToken) | None => Some(a.session_token.clone()),
    };
    Target { vnc: a.vnc, token: a.session_token.clone(), password }
}

/// Runs the session with the broker at `addr` for as long as the agent lives.
pub(crate) fn run(
    addr: SocketAddr,
    hello: Hello,
    statuses: Receiver<Status>,
    viewer: Sender<Order>,
    events: Sender<Event>,
    console: Arc<Mutex<Console>>,
) {
    let seed = u64::from_le_bytes({
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&hello.mac.0);
        b
    }) ^ std::process::id() as u64;
    let mut session = Session::new(SessionConfig::default(), hello, seed);
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_millis() as u64;
    let mut conn: Option<(TcpStream, Decoder<BrokerMessage>)> = None;
    let mut inputs = vec![Input::Start];
    let mut was_welcomed = false;
    let show = |s: Screen| console.lock().unwrap_or_else(|e| e.into_inner()).show(s);
    loop {
        // Feed everything pending, carrying out outputs, which may produce further inputs.
        while let Some(input) = (!inputs.is_empty()).then(|| inputs.remove(0)) {
            for out in session.handle(now(), input) {
                match out {
                    Output::Connect => {
                        conn = None;
                        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let _ = s.set_read_timeout(Some(POLL));
                                conn = Some((s, Decoder::new()));
                                inputs.push(Input::Connected);
                            }
                            Err(e) => inputs.push(Input::ConnectFailed { reason: format!("{addr}: {e}") }),
                        }
                    }
                    Output::Send(msg) => {
                        let sent = match (&mut conn, encode(&msg)) {
                            (Some((s, _)), Ok(bytes)) => s.write_all(&bytes).map_err(|e| e.to_string()),
                            (None, _) => Err("not connected".into()),
                            (_, Err(e)) => Err(e.to_string()),
                        };
                        if let Err(reason) = sent {
                            log::warn!("sending {} to the broker {addr}: {reason}", proto::agent::Message::type_name(&msg));
                            inputs.push(Input::Closed { reason });
                        }
                    }
                    Output::Close { reason } => {
                        log::info!("broker connection {addr} closed: {reason}");
                        conn = None;
                    }
                    Output::Assigned(a) => {
                        log::info!("assigned a desktop at {}", a.vnc);
                        show(Screen::Desktop);
                        let _ = viewer.send(Order::Show(target_of(&a)));
                    }
                    Output::Run(cmd) => {
                        let _ = events.send(Event::Command(cmd));
                    }
                    Output::Refused { reason } => {
                        show(Screen::Error { reason: format!("The broker refused this PC: {reason}"), reboot_in: None })
                    }
                    Output::Waiting { reason, retry_in_ms } => {
                        log::warn!("{reason}; retrying in {retry_in_ms} ms");
                        if session.assignment().is_none() {
                            show(Screen::Waiting {
                                detail: format!("{reason}\nTrying again in {} s.", retry_in_ms.div_ceil(1000)),
                            });
                        }
                    }
                }
            }
            let welcomed = matches!(session.state(), SessionState::Welcomed | SessionState::Assigned);
            if welcomed && !was_welcomed {
                log::info!("announced to the broker at {addr}");
                if session.assignment().is_none() {
                    show(Screen::Waiting { detail: format!("Announced to the broker at {addr}.") });
                }
            }
            was_welcomed = welcomed;
        }

        while let Ok(st) = statuses.try_recv() {
            inputs.push(Input::Status(st));
        }
        if let Some((stream, decoder)) = &mut conn {
            let mut buf = [0u8; 16 * 1024];
            match stream.read(&mut buf) {
                Ok(0) => {
                    let reason = match decoder.finish() {
                        Ok(()) => "closed by the broker".to_string(),
                        Err(e) => format!("closed by the broker: {e}"),
                    };
                    inputs.push(Input::Closed { reason });
                }
                Ok(n) => {
                    for r in decoder.feed(&buf[..n]) {
                        match r {
                            Ok(m) => inputs.push(Input::Received(m)),
                            Err(e) => {
                                log::warn!("from the broker {addr}: {e}");
                                inputs.push(Input::DecodeError(e));
                            }
                        }
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => inputs.push(Input::Closed { reason: e.to_string() }),
            }
        } else {
            let wait = session.deadline().map(|d| d.saturating_sub(now())).unwrap_or(u64::MAX);
            std::thread::sleep(POLL.min(Duration::from_millis(wait)));
        }
        if session.deadline().is_some_and(|d| now() >= d) {
            inputs.push(Input::Tick);
        }
    }
}

/// Commands the broker may send, as the main loop sees them.
pub(crate) fn describe(cmd: &Command) -> String {
    match cmd {
        Command::Reconnect => "reconnect".into(),
        Command::ShowMessage { text } => format!("message {text:?}"),
        Command::Reboot => "reboot".into(),
        Command::PowerOff => "power off".into(),
    }
}
