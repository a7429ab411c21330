//! Fair scheduling when the server is saturated: at most `capacity` requests are served at
//! once; beyond that, requests wait in per-tenant queues served by deficit round robin weighted
//! by the tenant's tier. Every request costs one unit, so a waiting tenant of weight `w` is
//! given up to `w` slots in a row when its turn comes, then the next waiting tenant has its
//! turn: under saturation, tenants with waiters are served in proportion to their weights, and
//! a tenant sending a modest rate waits behind at most the weights of the other busy tenants,
//! not behind a flooder's whole backlog.
//!
//! Queues are bounded: a tenant whose queue is full is shed (503) at once, and when the total
//! backlog is over its bound the tenant furthest over its share (the longest queue for its
//! weight) loses its oldest waiter — the tenant over its fair share is shed first.

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

/// One tenant's waiters and its place in the round.
struct TenantQueue {
    /// Oldest first.
    waiters: VecDeque<oneshot::Sender<()>>,
    /// Slots given per turn (the tier's weight, at least 1). The latest request's weight
    /// counts, so a changed tier applies from the next request on.
    weight: u32,
    /// Slots left in the current turn; 0 when the tenant's turn has not begun.
    deficit: u32,
}

struct State {
    active: usize,
    waiting: usize,
    queues: HashMap<TenantId, TenantQueue>,
    /// Tenants with waiters, in the order they are served; the front one has the turn.
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
    /// Gives the slot being freed to the next waiter in deficit-round-robin order, or frees it.
    fn hand_over(&self) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        // Fast path: nobody waits.
        if st.waiting == 0 {
            st.active = st.active.saturating_sub(1);
            return;
        }
        while let Some(&tenant) = st.ring.front() {
            let Some(q) = st.queues.get_mut(&tenant) else {
                st.ring.pop_front();
                continue;
            };
            if q.deficit == 0 {
                // The tenant's turn begins.
                q.deficit = q.weight.max(1);
            }
            let next = q.waiters.pop_front();
            if next.is_some() {
                st.waiting = st.waiting.saturating_sub(1);
            }
            // A waiter that gave up (its request was cancelled) cannot take the slot, and does
            // not use up its tenant's turn.
            let served = next.is_some_and(|tx| tx.send(()).is_ok());
            if served {
                q.deficit -= 1;
            }
            if q.waiters.is_empty() {
                st.queues.remove(&tenant);
                st.ring.pop_front();
            } else if q.deficit == 0 {
                // Turn used up: to the back of the round.
                st.ring.rotate_left(1);
            }
            if served {
                return;
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

    /// Waits for a serving slot for a request of `tenant`, whose tier has `weight` (0 counts
    /// as 1), or sheds it.
    pub async fn enter(&self, tenant: TenantId, weight: u32) -> Result<Turn, Shed> {
        let rx = {
            let mut guard = self.inner.state.lock();
            // One reborrow, so that its fields can be borrowed apart.
            let st = &mut *guard;
            if st.active < self.inner.cfg.capacity && st.waiting == 0 {
                st.active += 1;
                return Ok(self.turn());
            }
            let per_tenant = self.inner.cfg.per_tenant;
            let weight = weight.max(1);
            let q = st.queues.entry(tenant).or_insert_with(|| TenantQueue {
                waiters: VecDeque::new(),
                weight,
                deficit: 0,
            });
            if q.waiters.len() >= per_tenant {
                if q.waiters.is_empty() {
                    st.queues.remove(&tenant);
                }
                return Err(Shed);
            }
            let (tx, rx) = oneshot::channel();
            if q.waiters.is_empty() {
                st.ring.push_back(tenant);
            }
            q.weight = weight;
            q.waiters.push_back(tx);
            st.waiting += 1;
            if st.waiting > self.inner.cfg.total {
                shed_over_share(st);
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

/// Over the total backlog: the tenant with the longest queue for its weight loses its oldest
/// waiter (dropping its sender sheds it).
fn shed_over_share(st: &mut State) {
    // len_a / w_a > len_b / w_b, without division.
    let over = |q: &TenantQueue| (q.waiters.len() as u64, u64::from(q.weight.max(1)));
    let Some(worst) = st
        .queues
        .iter()
        .max_by(|(_, a), (_, b)| {
            let ((la, wa), (lb, wb)) = (over(a), over(b));
            (la * wb).cmp(&(lb * wa))
        })
        .map(|(t, _)| *t)
    else {
        return;
    };
    if let Some(q) = st.queues.get_mut(&worst)
        && q.waiters.pop_front().is_some()
    {
        st.waiting -= 1;
        if q.waiters.is_empty() {
            st.queues.remove(&worst);
            st.ring.retain(|t| *t != worst);
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
        let first = fq.enter(flood, 1).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (fq, order) = (fq.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let t = fq.enter(flood, 1).await.unwrap();
                order.lock().push(format!("flood{i}"));
                drop(t);
            }));
            tokio::task::yield_now().await;
        }
        let (fq2, order2) = (fq.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let t = fq2.enter(quiet, 1).await.unwrap();
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
        let held = fq.enter(flood, 1).await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let fq = fq.clone();
            waiting.push(tokio::spawn(
                async move { fq.enter(flood, 1).await.map(drop) },
            ));
            tokio::task::yield_now().await;
        }
        // Its own queue is full: shed at once.
        assert_eq!(fq.enter(flood, 1).await.unwrap_err(), Shed);
        // Over the total: the flooder's oldest waiter goes, not the quiet tenant.
        let fq2 = fq.clone();
        let quiet_task = tokio::spawn(async move { fq2.enter(quiet, 1).await.map(drop) });
        tokio::task::yield_now().await;
        let fq3 = fq.clone();
        let quiet_task2 = tokio::spawn(async move { fq3.enter(quiet, 1).await.map(drop) });
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
        let held = fq.enter(a, 1).await.unwrap();
        let fq2 = fq.clone();
        let w = tokio::spawn(async move { fq2.enter(a, 1).await.map(drop) });
        tokio::task::yield_now().await;
        w.abort();
        let _ = w.await;
        drop(held);
        assert_eq!(fq.active(), 0);
        assert!(fq.enter(a, 1).await.is_ok());
    }

    /// Fills the queue (capacity 1, held) with `backlog[i]` waiters of tenant `i` of weight
    /// `weights[i]`, enqueued in a shuffled order, then releases the slot and returns the
    /// tenants in the order they were served.
    async fn serve_order(weights: &[u32], backlog: &[usize], seed: u64) -> Vec<usize> {
        let total: usize = backlog.iter().sum();
        let fq = q(1, 10_000, total + 1);
        let tenants: Vec<TenantId> = weights.iter().map(|_| TenantId::generate()).collect();
        let held = fq.enter(TenantId::generate(), 1).await.unwrap();
        let mut arrivals: Vec<usize> = backlog
            .iter()
            .enumerate()
            .flat_map(|(i, n)| std::iter::repeat_n(i, *n))
            .collect();
        // A small deterministic shuffle (xorshift), so arrival order varies between cases.
        let mut x = seed | 1;
        for i in (1..arrivals.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let j = usize::try_from(x % (i as u64 + 1)).unwrap();
            arrivals.swap(i, j);
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in arrivals {
            let (fq, order, t, w) = (fq.clone(), order.clone(), tenants[i], weights[i]);
            tasks.push(tokio::spawn(async move {
                let turn = fq.enter(t, w).await.unwrap();
                order.lock().push(i);
                drop(turn);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(fq.depth(), total);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(fq.active(), 0);
        assert_eq!(fq.depth(), 0);
        order.lock().clone()
    }

    #[tokio::test]
    async fn under_saturation_service_follows_the_weights() {
        // Property over many cases: while every tenant has waiters, in any window of one full
        // round (the sum of the weights) each tenant is served exactly its weight.
        for case in 0..40u64 {
            let mut x = case.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m
            };
            let n = 2 + usize::try_from(next(4)).unwrap();
            let weights: Vec<u32> = (0..n)
                .map(|_| 1 + u32::try_from(next(6)).unwrap())
                .collect();
            let round: usize = weights.iter().map(|w| *w as usize).sum();
            let rounds = 5;
            let backlog: Vec<usize> = weights.iter().map(|w| *w as usize * rounds).collect();
            let order = serve_order(&weights, &backlog, case + 7).await;
            // Every tenant has waiters until the end, so the whole run is `rounds` full
            // rounds; each window of `round` consecutive grants holds exactly each weight.
            for window in order.windows(round) {
                for (i, w) in weights.iter().enumerate() {
                    let got = window.iter().filter(|t| **t == i).count();
                    assert_eq!(got, *w as usize, "case {case}: {weights:?} {order:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn shares_are_proportional_while_backlogged() {
        // free 1, standard 2, enterprise 4, each with a deep backlog: over the first 70
        // grants (10 rounds) the shares are 10, 20 and 40.
        let order = serve_order(&[1, 2, 4], &[100, 100, 100], 3).await;
        let share = |i| order.iter().take(70).filter(|t| **t == i).count();
        assert_eq!((share(0), share(1), share(2)), (10, 20, 40), "{order:?}");
    }

    #[tokio::test]
    async fn a_light_tenant_is_not_starved_by_heavy_ones() {
        // A weight-1 tenant with one waiter, behind two weight-8 tenants with deep backlogs
        // that arrived first: it is served within one round of the others' weights.
        for seed in 1..20 {
            let order = serve_order(&[8, 8, 1], &[200, 200, 1], seed).await;
            let pos = order.iter().position(|t| *t == 2).unwrap();
            assert!(pos <= 16, "seed {seed}: served at {pos}");
        }
    }

    #[tokio::test]
    async fn over_the_total_the_tenant_furthest_over_its_weighted_share_is_shed() {
        // total 12: a weight-4 tenant with 8 waiters (2 per unit of weight) and a weight-1
        // tenant with 3 (3 per unit): the weight-1 tenant is further over its share, though
        // its queue is shorter.
        let fq = q(1, 100, 12);
        let (heavy, light, quiet) = (
            TenantId::generate(),
            TenantId::generate(),
            TenantId::generate(),
        );
        let held = fq.enter(TenantId::generate(), 1).await.unwrap();
        let mut tasks = Vec::new();
        for (t, w, n) in [(heavy, 4, 8), (light, 1, 3)] {
            for _ in 0..n {
                let fq = fq.clone();
                tasks.push((
                    t,
                    tokio::spawn(async move { fq.enter(t, w).await.map(drop) }),
                ));
                tokio::task::yield_now().await;
            }
        }
        // One waiter of a within-limits tenant, then one more: the 12th and 13th.
        for _ in 0..2 {
            let fq = fq.clone();
            tasks.push((
                quiet,
                tokio::spawn(async move { fq.enter(quiet, 2).await.map(drop) }),
            ));
            tokio::task::yield_now().await;
        }
        assert_eq!(fq.depth(), 12);
        drop(held);
        let mut shed = HashMap::new();
        for (t, task) in tasks {
            if task.await.unwrap().is_err() {
                *shed.entry(t).or_insert(0) += 1;
            }
        }
        assert_eq!(shed.get(&light), Some(&1), "{shed:?}");
        assert_eq!(shed.get(&heavy), None);
        assert_eq!(shed.get(&quiet), None, "the within-limits tenant is served");
        assert_eq!(fq.active(), 0);
    }
}
