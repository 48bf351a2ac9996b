//! The login screen's keyboard: while the form is up, every keyboard is read with evdev and
//! grabbed (so typing reaches neither the console underneath nor anything else), and its keys
//! go to the form in [`Console`]; a submitted login goes to the broker loop. The grab is
//! released before the viewer starts, since the viewer grabs the same devices.

pub(crate) mod form;

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use proto::agent::Input;

use super::console::Console;

const EV_KEY: u16 = 1;
/// How long a reader waits for a key before it looks whether it must let go of its device.
const POLL_MS: i32 = 100;
/// How often /dev/input is scanned again for keyboards plugged in while the form is up.
const RESCAN: Duration = Duration::from_secs(2);

/// Starts and stops reading the keyboards for the login form.
pub(crate) struct Keys {
    keys: Sender<(u16, bool)>,
    grab: Option<Grab>,
}

struct Grab {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    scanner: JoinHandle<()>,
}

impl Keys {
    /// Keys go to the form in `console`; a login it submits goes to `broker`.
    pub(crate) fn new(console: Arc<Mutex<Console>>, broker: Sender<Input>) -> Keys {
        let (keys, rx) = channel::<(u16, bool)>();
        let spawned = std::thread::Builder::new().name("login-keys".into()).spawn(move || {
            for (code, down) in rx {
                let submit = console.lock().unwrap_or_else(PoisonError::into_inner).login_key(code, down);
                if let Some(s) = submit {
                    // The name is logged; the password never is (its Debug is "***" anyway).
                    log::info!("login submitted for {:?}", s.user);
                    if broker.send(Input::Login { user: s.user, password: s.password }).is_err() {
                        return;
                    }
                }
            }
        });
        if let Err(e) = spawned {
            log::error!("starting the login keyboard thread: {e}");
        }
        Keys { keys, grab: None }
    }

    /// Reads and grabs every keyboard (now and as they appear) until [`Keys::release`].
    pub(crate) fn grab(&mut self) {
        if self.grab.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (s, t, keys) = (Arc::clone(&stop), Arc::clone(&threads), self.keys.clone());
        let scanner = std::thread::spawn(move || {
            let known = Arc::new(Mutex::new(HashSet::new()));
            while !s.load(Ordering::Acquire) {
                for handle in open_keyboards(&known, &keys, &s) {
                    t.lock().unwrap_or_else(PoisonError::into_inner).push(handle);
                }
                let mut waited = Duration::ZERO;
                while waited < RESCAN && !s.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                    waited += Duration::from_millis(POLL_MS as u64);
                }
            }
        });
        self.grab = Some(Grab { stop, threads, scanner });
    }

    /// Lets go of every keyboard; returns once all are released.
    pub(crate) fn release(&mut self) {
        let Some(g) = self.grab.take() else { return };
        g.stop.store(true, Ordering::Release);
        let _ = g.scanner.join();
        let readers = std::mem::take(&mut *g.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for r in readers {
            let _ = r.join();
        }
        log::debug!("login keyboards released");
    }
}

/// Opens and grabs the keyboards not in `known`, each read by a thread of its own.
fn open_keyboards(
    known: &Arc<Mutex<HashSet<PathBuf>>>,
    keys: &Sender<(u16, bool)>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    let mut out = Vec::new();
    for (path, mut dev) in evdev::enumerate() {
        if known.lock().unwrap_or_else(PoisonError::into_inner).contains(&path) || !dev.supported_keys().is_some_and(|k| k.contains(evdev::KeyCode::KEY_A)) {
            continue;
        }
        if let Err(e) = dev.set_nonblocking(true) {
            log::warn!("login screen: {}: {e}", path.display());
            continue;
        }
        // Not read ungrabbed: whoever holds the grab gets the keys. Tried again at the next scan.
        if let Err(e) = dev.grab() {
            log::warn!("login screen: cannot grab {}: {e}", path.display());
            continue;
        }
        known.lock().unwrap_or_else(PoisonError::into_inner).insert(path.clone());
        log::info!("login screen reads {} ({})", path.display(), dev.name().unwrap_or("?"));
        let (keys, stop, known) = (keys.clone(), Arc::clone(stop), Arc::clone(known));
        out.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let mut pfd = libc::pollfd { fd: dev.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd, for as long as the call lasts.
                if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } <= 0 {
                    continue;
                }
                let events = match dev.fetch_events() {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        // Unplugged: the next scan may find it (or another) at this path again.
                        log::info!("login screen: {} gone: {e}", path.display());
                        known.lock().unwrap_or_else(PoisonError::into_inner).remove(&path);
                        return;
                    }
                };
                for ev in events {
                    // Key codes below 0x100 are keys; above are buttons. Value 2 is the
                    // kernel's auto-repeat, typed like a new press.
                    if ev.event_type().0 == EV_KEY && ev.code() < 0x100 && keys.send((ev.code(), ev.value() != 0)).is_err() {
                        return;
                    }
                }
            }
            let _ = dev.ungrab();
        }));
    }
    out
}
