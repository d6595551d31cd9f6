//! Per-host health for failover between a registry's mirrors and its server.
//!
//! A host that cannot be connected to, times out or answers 5xx/429 is marked down: requests skip
//! it (they go to the next host at once, without waiting) while a background task re-probes its
//! API root with growing intervals; the first answer below 500 marks it up and requests return to
//! it. So a dead mirror costs one failed attempt (at most one connect timeout) per client, not one
//! per chunk, and a mirror that comes back is used again without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// First re-probe delay after a host goes down; doubles up to [`PROBE_MAX`].
pub const PROBE_MIN: Duration = Duration::from_millis(500);
pub const PROBE_MAX: Duration = Duration::from_secs(8);

#[derive(Debug, Default)]
pub struct Health {
    hosts: Mutex<HashMap<String, HostState>>,
}

#[derive(Debug)]
struct HostState {
    since: Instant,
    reason: String,
    probing: bool,
}

impl Health {
    pub fn is_down(&self, origin: &str) -> bool {
        self.hosts.lock().contains_key(origin)
    }

    /// Marks `origin` down. Returns true when it was up before (the caller logs it and starts the
    /// prober).
    pub fn mark_down(&self, origin: &str, reason: &str) -> bool {
        let mut hosts = self.hosts.lock();
        if hosts.contains_key(origin) {
            return false;
        }
        hosts.insert(
            origin.to_string(),
            HostState { since: Instant::now(), reason: reason.to_string(), probing: false },
        );
        true
    }

    /// Marks `origin` up; returns for how long it was down, if it was.
    pub fn mark_up(&self, origin: &str) -> Option<Duration> {
        self.hosts.lock().remove(origin).map(|s| s.since.elapsed())
    }

    /// Claims the prober of `origin`: true for exactly one caller while it is down.
    fn claim_probe(&self, origin: &str) -> bool {
        match self.hosts.lock().get_mut(origin) {
            Some(s) if !s.probing => {
                s.probing = true;
                true
            }
            _ => false,
        }
    }

    fn reason(&self, origin: &str) -> Option<String> {
        self.hosts.lock().get(origin).map(|s| s.reason.clone())
    }

    /// Re-probes `origin` in the background with `probe` (true: it answered) until it answers,
    /// the host is marked up by a request, or the health table is dropped (the client is gone).
    pub fn spawn_prober<F, Fut>(self: &Arc<Self>, origin: String, probe: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        if !self.claim_probe(&origin) {
            return;
        }
        let weak: Weak<Health> = Arc::downgrade(self);
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            let mut delay = PROBE_MIN;
            loop {
                tokio::time::sleep(delay).await;
                let Some(health) = weak.upgrade() else { return };
                if !health.is_down(&origin) {
                    return;
                }
                drop(health);
                let ok = probe().await;
                let Some(health) = weak.upgrade() else { return };
                if ok {
                    if let Some(down) = health.mark_up(&origin) {
                        log::info!("registry host {origin} answers again after {down:.1?} down; using it again");
                    }
                    return;
                }
                log::debug!("registry host {origin} still down: {}", health.reason(&origin).unwrap_or_default());
                delay = (delay * 2).min(PROBE_MAX);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn down_hosts_are_probed_until_they_answer() {
        let h = Arc::new(Health::default());
        assert!(h.mark_down("http://m", "refused"));
        assert!(!h.mark_down("http://m", "refused"), "already down");
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        h.spawn_prober("http://m".into(), move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move { n >= 1 }
        });
        h.spawn_prober("http://m".into(), || async { panic!("a second prober must not start") });
        let t = Instant::now();
        while h.is_down("http://m") {
            assert!(t.elapsed() < Duration::from_secs(5), "never marked up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
