//! Fair scheduling when the server is saturated: at most `capacity` requests are served at
//! once; beyond that, requests wait in per-tenant queues served round-robin (deficit round
//! robin with a quantum of one request), so a tenant sending a modest rate waits behind at
//! most one request of each busy tenant, not behind a flooder's whole backlog.
//!
//! Queues are bounded: a tenant whose queue is full is shed (503) at once, and when the total
//! backlog is over its bound the tenant with the longest queue loses its oldest waiter — the
//! tenant over its fair share is shed first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bulkhead_core::TenantId;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Why a request was not given a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed;

/// Sizes of the fair queue.
#[derive(Debug, Clone, Copy)]
pub struct FairConfig {
    /// Requests served at once, over all tenants.
    pub capacity: usize,
    /// Requests of one tenant that may wait.
    pub per_tenant: usize,
    /// Requests that may wait, over all tenants.
    pub total: usize,
}

struct State {
    active: usize,
    waiting: usize,
    /// Each tenant's waiters, oldest first.
    queues: HashMap<TenantId, VecDeque<oneshot::Sender<()>>>,
    /// Tenants with waiters, in the order they are served.
    ring: VecDeque<TenantId>,
}

struct Inner {
    cfg: FairConfig,
    state: Mutex<State>,
}

/// The fair queue. Cheap to clone.
#[derive(Clone)]
pub struct FairQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FairQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairQueue")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// A serving slot; the next waiter gets it when this is dropped.
pub struct Turn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Turn")
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.inner.hand_over();
    }
}

impl Inner {
    /// Gives the slot being freed to the next waiter in round-robin order, or frees it.
    fn hand_over(&self) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        while let Some(tenant) = st.ring.pop_front() {
            let Some(q) = st.queues.get_mut(&tenant) else {
                continue;
            };
            let next = q.pop_front();
            let more = !q.is_empty();
            if more {
                st.ring.push_back(tenant);
            } else {
                st.queues.remove(&tenant);
            }
            if let Some(tx) = next {
                st.waiting = st.waiting.saturating_sub(1);
                // A waiter that gave up (its request was cancelled) cannot take the slot.
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        st.active = st.active.saturating_sub(1);
    }
}

impl FairQueue {
    pub fn new(cfg: FairConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg: FairConfig {
                    capacity: cfg.capacity.max(1),
                    ..cfg
                },
                state: Mutex::new(State {
                    active: 0,
                    waiting: 0,
                    queues: HashMap::new(),
                    ring: VecDeque::new(),
                }),
            }),
        }
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.inner.state.lock().waiting
    }

    /// Requests being served now.
    pub fn active(&self) -> usize {
        self.inner.state.lock().active
    }

    /// Waits for a serving slot for a request of `tenant`, or sheds it.
    pub async fn enter(&self, tenant: TenantId) -> Result<Turn, Shed> {
        let rx = {
            let mut guard = self.inner.state.lock();
            // One reborrow, so that its fields can be borrowed apart.
            let st = &mut *guard;
            if st.active < self.inner.cfg.capacity && st.waiting == 0 {
                st.active += 1;
                return Ok(self.turn());
            }
            let per_tenant = self.inner.cfg.per_tenant;
            let queued = st.queues.get(&tenant).map_or(0, VecDeque::len);
            if queued >= per_tenant {
                return Err(Shed);
            }
            let (tx, rx) = oneshot::channel();
            if queued == 0 {
                st.ring.push_back(tenant);
            }
            st.queues.entry(tenant).or_default().push_back(tx);
            st.waiting += 1;
            if st.waiting > self.inner.cfg.total {
                // Over the total backlog: the longest queue loses its oldest waiter (dropping
                // its sender sheds it).
                if let Some(longest) = st
                    .queues
                    .iter()
                    .max_by_key(|(_, q)| q.len())
                    .map(|(t, _)| *t)
                    && let Some(q) = st.queues.get_mut(&longest)
                    && q.pop_front().is_some()
                {
                    st.waiting -= 1;
                    if q.is_empty() {
                        st.queues.remove(&longest);
                        st.ring.retain(|t| *t != longest);
                    }
                }
            }
            rx
        };
        match rx.await {
            Ok(()) => Ok(self.turn()),
            Err(_) => Err(Shed),
        }
    }

    fn turn(&self) -> Turn {
        Turn {
            inner: self.inner.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn q(capacity: usize, per_tenant: usize, total: usize) -> FairQueue {
        FairQueue::new(FairConfig {
            capacity,
            per_tenant,
            total,
        })
    }

    #[tokio::test]
    async fn a_quiet_tenant_is_served_before_a_flooders_backlog() {
        let fq = q(1, 100, 1000);
        let (flood, quiet) = (TenantId::generate(), TenantId::generate());
        let first = fq.enter(flood).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (fq, order) = (fq.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let t = fq.enter(flood).await.unwrap();
                order.lock().push(format!("flood{i}"));
                drop(t);
            }));
            tokio::task::yield_now().await;
        }
        let (fq2, order2) = (fq.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let t = fq2.enter(quiet).await.unwrap();
            order2.lock().push("quiet".to_owned());
            drop(t);
        }));
        tokio::task::yield_now().await;
        assert_eq!(fq.depth(), 11);
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().clone();
        let pos = order.iter().position(|s| s == "quiet").unwrap();
        assert!(
            pos <= 1,
            "served after at most one flood request: {order:?}"
        );
        assert_eq!(fq.active(), 0);
        assert_eq!(fq.depth(), 0);
    }

    #[tokio::test]
    async fn the_tenant_over_its_share_is_shed_first() {
        let fq = q(1, 3, 4);
        let (flood, quiet) = (TenantId::generate(), TenantId::generate());
        let held = fq.enter(flood).await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let fq = fq.clone();
            waiting.push(tokio::spawn(async move { fq.enter(flood).await.map(drop) }));
            tokio::task::yield_now().await;
        }
        // Its own queue is full: shed at once.
        assert_eq!(fq.enter(flood).await.unwrap_err(), Shed);
        // Over the total: the flooder's oldest waiter goes, not the quiet tenant.
        let fq2 = fq.clone();
        let quiet_task = tokio::spawn(async move { fq2.enter(quiet).await.map(drop) });
        tokio::task::yield_now().await;
        let fq3 = fq.clone();
        let quiet_task2 = tokio::spawn(async move { fq3.enter(quiet).await.map(drop) });
        tokio::task::yield_now().await;
        drop(held);
        let results: Vec<Result<(), Shed>> = {
            let mut r = Vec::new();
            for t in waiting {
                r.push(t.await.unwrap());
            }
            r
        };
        assert!(
            results.iter().filter(|r| r.is_err()).count() >= 1,
            "{results:?}"
        );
        assert_eq!(quiet_task.await.unwrap(), Ok(()));
        assert_eq!(quiet_task2.await.unwrap(), Ok(()));
        assert_eq!(fq.active(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_keep_the_slot() {
        let fq = q(1, 10, 10);
        let a = TenantId::generate();
        let held = fq.enter(a).await.unwrap();
        let fq2 = fq.clone();
        let w = tokio::spawn(async move { fq2.enter(a).await.map(drop) });
        tokio::task::yield_now().await;
        w.abort();
        let _ = w.await;
        drop(held);
        assert_eq!(fq.active(), 0);
        assert!(fq.enter(a).await.is_ok());
    }
}
