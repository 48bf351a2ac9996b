//! What changed in the broker, for the console's live pages: `GET /api/events` (server-sent
//! events, behind the admin API's guard) sends one small JSON object per change, for example
//! `{"kind":"clients"}`, and the page fetches the JSON it shows again.
//!
//! One process-wide channel: the places that change state (registry, boot stages, enrolment,
//! desktops, viewer sessions) only call [`emit`], and nothing has to be threaded through them.
//! Nobody listening costs a failed send; a slow page misses events and is told to reload all.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast;

/// What changed; the page maps each kind to the JSON it fetches again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client registry: a PC announced itself, changed state or left.
    Clients,
    /// A PC's boot stages.
    Stages,
    /// Enrolment: a PC waits for approval, or was approved or denied.
    Enrolment,
    /// Desktops, hosts' memory and the memory level: a decision ran.
    Vms,
    /// Viewer sessions through the proxy.
    Sessions,
    /// Accounts.
    Users,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Clients => "clients",
            Kind::Stages => "stages",
            Kind::Enrolment => "enrolment",
            Kind::Vms => "vms",
            Kind::Sessions => "sessions",
            Kind::Users => "users",
        }
    }
}

/// Events a page may fall behind by before it is told to fetch everything again.
const BACKLOG: usize = 256;

fn channel() -> &'static broadcast::Sender<Kind> {
    static TX: OnceLock<broadcast::Sender<Kind>> = OnceLock::new();
    TX.get_or_init(|| broadcast::channel(BACKLOG).0)
}

/// Tells the open pages that `kind` changed.
pub fn emit(kind: Kind) {
    // An error only means that no page is open.
    let _ = channel().send(kind);
}

/// The event stream of one page.
pub fn subscribe() -> broadcast::Receiver<Kind> {
    channel().subscribe()
}

/// `GET /api/events`.
pub async fn stream() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = subscribe();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let kind = match rx.recv().await {
            Ok(k) => k.as_str(),
            // Fell behind: everything may have changed.
            Err(broadcast::error::RecvError::Lagged(_)) => "all",
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        let data = serde_json::json!({ "kind": kind }).to_string();
        Some((Ok(Event::default().event("change").data(data)), rx))
    });
    // A comment now and then keeps proxies and the connection limiter from closing an idle
    // stream, and lets the server notice a page that went away.
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_gets_what_is_emitted_after_it_subscribed() {
        emit(Kind::Users);
        let mut rx = subscribe();
        emit(Kind::Clients);
        emit(Kind::Stages);
        assert_eq!(rx.recv().await.unwrap(), Kind::Clients);
        assert_eq!(rx.recv().await.unwrap(), Kind::Stages);
    }
}
