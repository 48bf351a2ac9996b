//! Keeps the services running: a service task that fails, panics or ends is logged with why and
//! started again after a back-off, and the others carry on. One process serves every PC on the
//! LAN, so one broken service must not take the rest down with it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::task::{Id, JoinSet};

use crate::logsafe::Esc;
use crate::net::limits::Backoff;

type ServiceFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Start = Box<dyn FnMut() -> ServiceFuture + Send>;

/// A service that ran this long before it ended starts again at the shortest back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

struct Service {
    name: String,
    start: Start,
    backoff: Backoff,
    started: Instant,
    restarts: u64,
}

/// The running services, each with the means to start it again.
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    services: HashMap<Id, Service>,
    first: Duration,
    max: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl Supervisor {
    /// Back-off from `first`, doubled at each failure in a row, up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Supervisor { tasks: JoinSet::new(), services: HashMap::new(), first, max }
    }

    /// Starts `name`; `start` makes its future, now and at every restart (so it must bind its
    /// sockets inside the future, not before).
    pub fn add<F, Fut>(&mut self, name: impl Into<String>, mut start: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut service = Service {
            name: name.into(),
            start: Box::new(move || -> ServiceFuture { Box::pin(start()) }),
            backoff: Backoff::new(self.first, self.max),
            started: Instant::now(),
            restarts: 0,
        };
        let id = self.tasks.spawn((service.start)()).id();
        service.started = Instant::now();
        self.services.insert(id, service);
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Restarts services as they end; returns only when there is none.
    pub async fn run(&mut self) {
        while let Some(res) = self.tasks.join_next_with_id().await {
            let (id, why) = match res {
                Ok((id, Ok(()))) => (id, "ended".to_string()),
                Ok((id, Err(e))) => (id, format!("failed: {e:#}")),
                Err(e) => {
                    let id = e.id();
                    let why = if e.is_panic() {
                        let p = e.into_panic();
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "no message".into());
                        format!("panicked: {}", Esc(&msg))
                    } else {
                        "was cancelled".to_string()
                    };
                    (id, why)
                }
            };
            let Some(mut s) = self.services.remove(&id) else { continue };
            if s.started.elapsed() >= HEALTHY_AFTER {
                s.backoff.reset();
            }
            let wait = s.backoff.next_delay();
            s.restarts += 1;
            log::error!("service {} {why}; restarting in {wait:?} (restart #{})", s.name, s.restarts);
            let fut = (s.start)();
            let new_id = self
                .tasks
                .spawn(async move {
                    tokio::time::sleep(wait).await;
                    fut.await
                })
                .id();
            s.started = Instant::now() + wait;
            self.services.insert(new_id, s);
        }
    }
}

/// The socket of a supervised service: bound at start, so that a taken port stops the start,
/// and bound again by `bind` for each restart (the failed task took the old one with it).
pub struct Rebind<T, B> {
    first: Option<T>,
    bind: B,
}

impl<T, B, Fut> Rebind<T, B>
where
    B: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    pub async fn new(bind: B) -> anyhow::Result<Self> {
        Ok(Rebind { first: Some(bind().await?), bind })
    }

    /// The socket bound at start the first time, a new one after.
    pub fn bound(&mut self) -> impl Future<Output = anyhow::Result<T>> {
        let first = self.first.take();
        let again = first.is_none().then(|| (self.bind)());
        async move {
            match (first, again) {
                (Some(t), _) => Ok(t),
                (None, Some(fut)) => fut.await,
                (None, None) => unreachable!("bound again when not bound at start"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_failing_service_is_restarted_and_the_others_keep_running() {
        let mut sup = Supervisor::new(Duration::from_millis(10), Duration::from_millis(40));
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        sup.add("flaky", move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => anyhow::bail!("bind failed"),
                    1 => panic!("bug"),
                    _ => std::future::pending().await,
                }
            }
        });
        let ticks = Arc::new(AtomicU32::new(0));
        let t = ticks.clone();
        sup.add("steady", move || {
            let t = t.clone();
            async move {
                loop {
                    t.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_millis(500), sup.run()).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert!(ticks.load(Ordering::SeqCst) > 20);
        assert_eq!(sup.services.len(), 2);
    }
}
