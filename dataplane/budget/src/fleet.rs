//! Leases of shared limits, kept by the control plane.
//!
//! Gateways that share a limit (say an org's tokens per day) may each spend
//! of it only what the control plane leased to them. A gateway reports per
//! counter what it has committed (spent plus reserved) and the lease it
//! enforces, and asks for more; the book grants from what no gateway
//! holds. Leases only grow unless their gateway lowers them itself (never
//! below what it committed), so the leases of all gateways never add up to
//! more than the limit, and neither does their spend: the fleet can pass a
//! limit only by what calls spend beyond their own reservation, as a single
//! gateway can. A gateway that goes away keeps its unspent lease until the
//! window ends (it may still spend it while cut off), so up to one lease per
//! gateway can go unused, never overspent.
//!
//! The book keeps no state of its own that matters after a restart: each
//! request carries the gateway's lease and commitment, so the book learns
//! them again from the next round of requests. Until every gateway has had
//! time to ask again (the warm-up, a few renewal intervals), a fresh book
//! grants nothing new, so it cannot hand out a lease some gateway still
//! holds.

use std::collections::BTreeMap;

use serde::Serialize;

/// One gateway's request for one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub counter: String,
    pub limit: u64,
    pub committed: u64,
    pub holding: u64,
    pub want: u64,
}

/// The answer for one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub counter: String,
    pub lease: u64,
    pub limit: u64,
    pub fleet_committed: u64,
    pub fleet_leased: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Holding {
    pub committed: u64,
    pub lease: u64,
    /// Unix ms of the gateway's last request for this counter.
    pub seen_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedCounter {
    /// The lowest limit any gateway reported.
    pub limit: u64,
    pub gateways: BTreeMap<String, Holding>,
    #[serde(skip)]
    last_ms: i64,
}

impl SharedCounter {
    pub fn committed(&self) -> u64 {
        self.gateways.values().map(|h| h.committed).sum()
    }
    pub fn leased(&self) -> u64 {
        self.gateways.values().map(|h| h.lease).sum()
    }
}

/// Every shared counter the control plane has heard of.
#[derive(Debug, Default)]
pub struct LeaseBook {
    counters: BTreeMap<String, SharedCounter>,
    /// No new grants before this (Unix ms).
    grants_from_ms: i64,
}

impl LeaseBook {
    /// A book that starts granting `warmup_ms` after `now_ms`.
    pub fn new(now_ms: i64, warmup_ms: i64) -> LeaseBook {
        LeaseBook {
            counters: BTreeMap::new(),
            grants_from_ms: now_ms.saturating_add(warmup_ms),
        }
    }

    /// Answer `gateway`'s ask.
    pub fn ask(&mut self, gateway: &str, ask: &Ask, now_ms: i64) -> Grant {
        let c = self
            .counters
            .entry(ask.counter.clone())
            .or_insert_with(|| SharedCounter {
                limit: ask.limit,
                gateways: BTreeMap::new(),
                last_ms: now_ms,
            });
        c.limit = c.limit.min(ask.limit);
        c.last_ms = now_ms;
        let others: u64 = c
            .gateways
            .iter()
            .filter(|(g, _)| g.as_str() != gateway)
            .map(|(_, h)| h.lease)
            .sum();
        let h = c.gateways.entry(gateway.to_string()).or_default();
        h.committed = ask.committed;
        h.lease = ask.holding.max(ask.committed);
        h.seen_ms = now_ms;
        let room = c.limit.saturating_sub(others).saturating_sub(h.lease);
        if now_ms >= self.grants_from_ms {
            h.lease += ask.want.min(room);
        }
        let lease = h.lease;
        Grant {
            counter: ask.counter.clone(),
            lease,
            limit: c.limit,
            fleet_committed: c.committed(),
            fleet_leased: c.leased(),
        }
    }

    /// Forget counters nobody asked about since `before_ms` (their windows
    /// are over).
    pub fn prune(&mut self, before_ms: i64) {
        self.counters.retain(|_, c| c.last_ms >= before_ms);
    }

    pub fn counters(&self) -> &BTreeMap<String, SharedCounter> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ask(limit: u64, committed: u64, holding: u64, want: u64) -> Ask {
        Ask {
            counter: "org:acme|tokens|day||20261122".into(),
            limit,
            committed,
            holding,
            want,
        }
    }

    #[test]
    fn grants_come_from_what_no_gateway_holds() {
        let mut b = LeaseBook::default();
        assert_eq!(b.ask("a", &ask(100, 0, 0, 60), 1).lease, 60);
        assert_eq!(b.ask("b", &ask(100, 0, 0, 60), 1).lease, 40);
        // `a` spent 50 and gives the rest back.
        let g = b.ask("a", &ask(100, 50, 50, 0), 2);
        assert_eq!((g.lease, g.fleet_leased, g.fleet_committed), (50, 90, 50));
        assert_eq!(b.ask("b", &ask(100, 40, 40, 60), 3).lease, 50);
        // A lower limit from any gateway wins.
        let g = b.ask("c", &ask(80, 0, 0, 10), 4);
        assert_eq!((g.lease, g.limit), (0, 80));
    }

    #[test]
    fn a_restarted_book_learns_the_leases_again() {
        let mut b = LeaseBook::default();
        assert_eq!(b.ask("a", &ask(100, 0, 0, 70), 1).lease, 70);
        // The control plane restarts at t=1000 with a warm-up of 500 ms.
        let mut fresh = LeaseBook::new(1000, 500);
        // `b` asks before `a` has re-reported: nothing is granted yet.
        assert_eq!(fresh.ask("b", &ask(100, 0, 0, 50), 1100).lease, 0);
        assert_eq!(fresh.ask("a", &ask(100, 10, 70, 0), 1200).lease, 70);
        assert_eq!(fresh.ask("b", &ask(100, 0, 0, 50), 1600).lease, 30);
    }

    proptest! {
        // Whatever the gateways report and ask, in any order, the leases
        // never add up to more than the limit, and a gateway is never
        // granted less than it committed.
        #[test]
        fn leases_never_exceed_the_limit(
            steps in proptest::collection::vec((0usize..4, 0u64..50, 0u64..80), 1..200)
        ) {
            let limit = 500;
            let mut b = LeaseBook::default();
            let mut state = [(0u64, 0u64); 4]; // (committed, lease) per gateway
            for (i, (g, spend, want)) in steps.into_iter().enumerate() {
                let (committed, lease) = state[g];
                // A gateway commits only within its lease.
                let committed = (committed + spend).min(lease);
                let grant = b.ask(&format!("gw{g}"), &ask(limit, committed, lease, want), i as i64);
                prop_assert!(grant.lease >= committed);
                state[g] = (committed, grant.lease);
                let total: u64 = state.iter().map(|s| s.1).sum();
                prop_assert!(total <= limit, "leases {total} > {limit}");
                prop_assert_eq!(grant.fleet_leased, total);
            }
        }
    }
}
