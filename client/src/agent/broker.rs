//! The connection to the broker: a thin blocking loop around `proto::agent::Session`, which
//! decides everything (hello, welcome, pings, backoff); this file only moves bytes and time.
//!
//! The link is TLS, and the broker must show a certificate that the CA in the boot image signed
//! for the address the agent dials: otherwise the handshake fails before the hello, so a rogue
//! broker (named by a rogue DHCP server, say) learns nothing and can order nothing.
//!
//! Logins: a login prompt stops the viewer and puts up the form (its keyboard grabbed); the
//! form's submission comes back through `requests` as [`Input::Login`], the viewer's logout
//! keys as [`Input::Logout`]. The keyboard is let go before any viewer shows anything; the
//! viewer waiting on standby at the proxy meanwhile holds no keyboard.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::tls::rustls::{ClientConfig, ClientConnection, StreamOwned};

use proto::agent::{
    encode, Assignment, BrokerMessage, Command, Decoder, Hello, Input, Output, PasswordSource, Session,
    SessionConfig, SessionState,
};

use super::console::{Console, Screen};
use super::login::Keys;
use crate::viewer::input::Chord;
use super::supervise::{Order, Target};
use super::Event;

/// Longest the loop sleeps, so status changes from the supervisor go out promptly.
const POLL: Duration = Duration::from_millis(200);
/// Longest a read from the broker blocks the loop. The form's login and the viewer's logout
/// wait for it to end before they are sent: at 200 ms a login lost 100 ms on average, a
/// fifth of the time a login to a running desktop may take (scripts/bench/login).
const READ_POLL: Duration = Duration::from_millis(20);
/// From the TCP connection to the end of the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A broker that takes no data for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The logout keys when the broker names none this agent can read.
const DEFAULT_LOGOUT_KEYS: &str = "Ctrl+Alt+End";

type Link = StreamOwned<ClientConnection, TcpStream>;

pub(crate) fn target_of(a: &Assignment, logout_keys: Option<String>) -> Target {
    let password = match &a.password {
        Some(PasswordSource::Inline { password }) => Some(password.clone()),
        Some(PasswordSource::SessionToken) | None => Some(a.session_token.clone()),
    };
    Target { vnc: a.vnc, token: a.session_token.clone(), password, logout_keys }
}

/// The logout keys the broker named, in the viewer's spelling; a default for ones it cannot
/// read (a newer broker's), so that a logged-in person can always log out.
fn logout_keys(named: &str) -> String {
    match named.parse::<Chord>() {
        Ok(c) => c.to_string(),
        Err(e) => {
            log::warn!("logout keys from the broker: {e}; using {DEFAULT_LOGOUT_KEYS}");
            DEFAULT_LOGOUT_KEYS.to_string()
        }
    }
}

/// Runs the session with the broker at `addr` for as long as the agent lives; `tls` trusts
/// only the boot server's CA. `requests` carries the viewer's statuses, the login form's
/// logins and logouts; `requests_tx` is its sending side, for the form.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    hello: Hello,
    requests: Receiver<Input>,
    requests_tx: Sender<Input>,
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
    let mut conn: Option<(Link, Decoder<BrokerMessage>)> = None;
    let mut inputs = vec![Input::Start];
    let mut was_welcomed = false;
    let lock = || console.lock().unwrap_or_else(|e| e.into_inner());
    let show = |s: Screen| lock().show(s);
    let mut keys = Keys::new(console.clone(), requests_tx);
    // Set by a login, for the viewer's status line; a PC without logins has none.
    let mut logout: Option<String> = None;
    loop {
        // Feed everything pending, carrying out outputs, which may produce further inputs.
        while let Some(input) = (!inputs.is_empty()).then(|| inputs.remove(0)) {
            for out in session.handle(now(), input) {
                match out {
                    Output::Connect => {
                        conn = None;
                        match connect(addr, &tls) {
                            Ok(s) => {
                                conn = Some((s, Decoder::new()));
                                inputs.push(Input::Connected);
                            }
                            Err(reason) => inputs.push(Input::ConnectFailed { reason }),
                        }
                    }
                    Output::Send(msg) => {
                        let sent = match (&mut conn, encode(&msg)) {
                            (Some((s, _)), Ok(bytes)) => s.write_all(&bytes).and_then(|_| s.flush()).map_err(|e| e.to_string()),
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
                        // Released before the viewer starts: it grabs the same keyboards.
                        keys.release();
                        show(Screen::Desktop);
                        let _ = viewer.send(Order::Show(target_of(&a, logout.clone())));
                    }
                    Output::Run(cmd) => {
                        let _ = events.send(Event::Command(cmd));
                    }
                    Output::Refused { reason } => {
                        show(Screen::Error { reason: format!("The broker refused this PC: {reason}"), reboot_in: None })
                    }
                    Output::Prompt(p) => {
                        logout = None;
                        stop_viewer(&viewer);
                        lock().login(&p);
                        keys.grab();
                        if let Some(proxy) = p.proxy {
                            let _ = viewer.send(Order::Standby(proxy));
                        }
                    }
                    Output::Approval { pc, code } => {
                        logout = None;
                        stop_viewer(&viewer);
                        keys.release();
                        show(Screen::Approval { pc, code });
                    }
                    Output::LoggedIn(l) => {
                        log::info!("logged in as {}", l.user);
                        logout = Some(logout_keys(&l.logout_keys));
                        keys.release();
                        // A desktop that already runs comes with the same read: drawing a
                        // screen for the moment until it shows would only delay it.
                        let assigned = inputs.iter().any(|i| matches!(i, Input::Received(BrokerMessage::Assignment(_))));
                        if !assigned {
                            show(Screen::Starting { user: l.user });
                        }
                    }
                    Output::Waiting { reason, retry_in_ms } => {
                        log::warn!("{reason}; retrying in {retry_in_ms} ms");
                        let mut console = lock();
                        if console.form_up() {
                            // The form stays, with what was typed: the broker prompts again
                            // once it is back.
                            console.login_message(Some(format!(
                                "The broker cannot be reached ({reason}). Trying again in {} s.",
                                retry_in_ms.div_ceil(1000)
                            )));
                        } else if session.assignment().is_none() {
                            drop(console);
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
                if lock().form_up() {
                    lock().login_message(None);
                } else if session.assignment().is_none() {
                    show(Screen::Waiting { detail: format!("Announced to the broker at {addr}.") });
                }
            }
            was_welcomed = welcomed;
        }

        while let Ok(req) = requests.try_recv() {
            inputs.push(req);
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

/// Stops the viewer and waits until it is gone (a viewer holds the keyboards grabbed, and
/// the form can only grab them after it), at most as long as the supervisor waits for it.
fn stop_viewer(viewer: &Sender<Order>) {
    let (done, gone) = std::sync::mpsc::channel();
    if viewer.send(Order::Stop(done)).is_ok() && gone.recv_timeout(Duration::from_secs(6)).is_err() {
        log::warn!("the viewer did not stop within 6 s");
    }
}

/// A TLS link to the broker at `addr` whose certificate `tls` accepts for that address, or why
/// there is none (for the status screen).
fn connect(addr: SocketAddr, tls: &Arc<ClientConfig>) -> Result<Link, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(WRITE_TIMEOUT));
    let conn = ClientConnection::new(tls.clone(), proto::tls::server_name(addr.ip()))
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut link = StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while link.conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{addr}: no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()));
        }
        let _ = link.sock.set_read_timeout(Some(left));
        if let Err(e) = link.conn.complete_io(&mut link.sock) {
            // complete_io has already sent the alert that tells the peer why, if any.
            return Err(match e.get_ref().and_then(|i| i.downcast_ref::<proto::tls::rustls::Error>()) {
                Some(err @ proto::tls::rustls::Error::InvalidCertificate(_))
                | Some(err @ proto::tls::rustls::Error::NoCertificatesPresented) => {
                    format!("broker {addr} is not trusted: {}", proto::tls::explain(err))
                }
                Some(err) => format!("broker {addr}: TLS handshake failed: {}", proto::tls::explain(err)),
                None if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    format!("{addr}: no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())
                }
                None => format!("{addr}: TLS handshake: {e}"),
            });
        }
    }
    let _ = link.sock.set_read_timeout(Some(READ_POLL));
    Ok(link)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_keys_are_respelled_and_unreadable_ones_replaced() {
        assert_eq!(logout_keys("ctrl+alt+end"), "Ctrl+Alt+End");
        assert_eq!(logout_keys("Ctrl+Shift+F12"), "Ctrl+Shift+F12");
        assert_eq!(logout_keys("Super+L"), DEFAULT_LOGOUT_KEYS);
        assert_eq!(logout_keys(""), DEFAULT_LOGOUT_KEYS);
    }
}
