//! Download slots shared by every job of this process: at most `MAX_TOTAL_DOWNLOADS` files at
//! once, and at most `MAX_DOWNLOADS_PER_PROVIDER` of them from one provider, handed out by fair
//! queuing across providers. A freed slot goes to the waiting provider holding the fewest (the
//! one waiting longest among equals), so one provider's slow files (a body trickled at 1 B/s
//! holds its slot until `MIN_TRANSFER_RATE` ends it) never starve another provider's job.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::oneshot;

/// The slots, cheap to share.
#[derive(Clone)]
pub struct DownloadSlots {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    per_provider: usize,
    /// Never held across an await: a drop can take it.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: usize,
    /// Slots held per provider (providers holding none are removed).
    by_provider: HashMap<String, usize>,
    /// Waiters per provider, in arrival order, each with its arrival number.
    waiting: HashMap<String, VecDeque<(u64, oneshot::Sender<()>)>>,
    arrivals: u64,
}

/// A slot held; given back (and handed on) when dropped.
pub struct DownloadSlot {
    inner: Arc<Inner>,
    provider: String,
}

impl DownloadSlots {
    /// `per_provider` is capped at `total`; both are at least 1.
    pub fn new(total: usize, per_provider: usize) -> Self {
        let total = total.max(1);
        let per_provider = per_provider.clamp(1, total);
        Self { inner: Arc::new(Inner { total, per_provider, state: Mutex::default() }) }
    }

    /// A slot for a download from `provider`, once its turn comes. Dropping the future gives up
    /// its place (and a slot handed to it meanwhile goes to the next).
    pub async fn acquire(&self, provider: &str) -> DownloadSlot {
        let mut rx = {
            let mut s = self.inner.lock();
            // Every change hands free slots on at once, so whoever still waits is at its cap or
            // finds none free: a provider with room takes one without jumping anyone.
            if self.inner.has_room(&s, provider) {
                return self.inner.grant(&mut s, provider);
            }
            let (tx, rx) = oneshot::channel();
            s.arrivals += 1;
            let n = s.arrivals;
            s.waiting.entry(provider.to_string()).or_default().push_back((n, tx));
            Pending { rx: Some(rx), inner: self.inner.clone(), provider: provider.to_string() }
        };
        // Granted by `hand_on`, which counted the slot as this provider's before sending.
        let _ = rx.rx.as_mut().expect("not yet taken").await;
        rx.rx = None;
        DownloadSlot { inner: self.inner.clone(), provider: provider.to_string() }
    }

    /// A slot now, if one is free for `provider` (for work claimed only once it can start).
    pub fn try_acquire(&self, provider: &str) -> Option<DownloadSlot> {
        let mut s = self.inner.lock();
        self.inner.has_room(&s, provider).then(|| self.inner.grant(&mut s, provider))
    }

    /// Whether any slot is free now (for some provider).
    pub fn any_free(&self) -> bool {
        self.inner.lock().held < self.inner.total
    }

    /// Slots held now, and by `provider`.
    pub fn held(&self, provider: &str) -> (usize, usize) {
        let s = self.inner.lock();
        (s.held, s.by_provider.get(provider).copied().unwrap_or(0))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn has_room(&self, s: &State, provider: &str) -> bool {
        s.held < self.total && s.by_provider.get(provider).copied().unwrap_or(0) < self.per_provider
    }

    fn grant(self: &Arc<Self>, s: &mut State, provider: &str) -> DownloadSlot {
        Self::count(s, provider);
        DownloadSlot { inner: self.clone(), provider: provider.to_string() }
    }

    fn count(s: &mut State, provider: &str) {
        s.held += 1;
        *s.by_provider.entry(provider.to_string()).or_default() += 1;
    }

    fn release(&self, s: &mut State, provider: &str) {
        s.held = s.held.saturating_sub(1);
        if let Some(n) = s.by_provider.get_mut(provider) {
            *n -= 1;
            if *n == 0 {
                s.by_provider.remove(provider);
            }
        }
        self.hand_on(s);
    }

    /// Give free slots to waiters: each to the provider under its cap holding the fewest, the
    /// longest waiting first among equals. Bounded: each pass grants a slot or removes a waiter.
    fn hand_on(&self, s: &mut State) {
        while s.held < self.total {
            let next = s
                .waiting
                .iter()
                .filter(|(p, _)| s.by_provider.get(*p).copied().unwrap_or(0) < self.per_provider)
                .filter_map(|(p, q)| {
                    q.front().map(|(n, _)| (s.by_provider.get(p).copied().unwrap_or(0), *n, p))
                })
                .min()
                .map(|(_, _, p)| p.clone());
            let Some(provider) = next else { return };
            let queue = s.waiting.get_mut(&provider).expect("chosen from the map");
            let (_, tx) = queue.pop_front().expect("chosen for its front");
            if queue.is_empty() {
                s.waiting.remove(&provider);
            }
            // A waiter that gave up is skipped; the slot stays free for the next.
            if tx.send(()).is_ok() {
                Self::count(s, &provider);
            }
        }
    }
}

/// A place in the queue; if it is dropped after a slot was handed to it, the slot goes on.
struct Pending {
    rx: Option<oneshot::Receiver<()>>,
    inner: Arc<Inner>,
    provider: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        rx.close();
        if rx.try_recv().is_ok() {
            let mut s = self.inner.lock();
            self.inner.release(&mut s, &self.provider);
        }
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        self.inner.release(&mut s, &self.provider);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn soon<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(50), f).await.ok()
    }

    #[tokio::test]
    async fn one_provider_never_holds_more_than_its_share() {
        let slots = DownloadSlots::new(4, 3);
        let mut a = Vec::new();
        for _ in 0..3 {
            a.push(slots.acquire("a").await);
        }
        assert!(soon(slots.acquire("a")).await.is_none(), "a fourth for a waits past its share");
        let b = soon(slots.acquire("b")).await.expect("b gets the slot a may not take");
        assert_eq!(slots.held("a"), (4, 3));
        drop(b);
        assert_eq!(slots.held("b"), (3, 0));
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_provider_holding_fewest() {
        let slots = DownloadSlots::new(2, 2);
        let a1 = slots.acquire("a").await;
        let _a2 = slots.acquire("a").await;
        // a asks first, then b: b holds none, so b is served first.
        let a3 = tokio::spawn({
            let s = slots.clone();
            async move { s.acquire("a").await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let b1 = tokio::spawn({
            let s = slots.clone();
            async move { s.acquire("b").await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a1);
        let b1 = soon(b1).await.expect("b served").unwrap();
        assert!(!a3.is_finished(), "a still waits");
        drop(b1);
        let _a3 = soon(a3).await.expect("then a").unwrap();
        assert_eq!(slots.held("a"), (2, 2));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_nothing() {
        let slots = DownloadSlots::new(1, 1);
        let held = slots.acquire("a").await;
        assert!(soon(slots.acquire("b")).await.is_none(), "gave up");
        drop(held);
        assert_eq!(slots.held("b"), (0, 0), "no slot leaked to the waiter that left");
        assert!(slots.try_acquire("c").is_some());
    }
}
