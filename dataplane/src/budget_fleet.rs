//! Leases of shared limits from the control plane.
//!
//! A limit shared by the fleet (`budgets.fleet.scopes`) is spent only
//! within the lease this gateway holds for it. A task on the control-link
//! runtime renews leases every `renew_every_ms`, and at once when a call
//! finds its lease short; the call waits at most `wait_for_lease_ms` for
//! that renewal, so the request path makes no network call of its own.
//! Leases idle for `release_idle_ms` are lowered to what was committed,
//! giving the rest back to the fleet. While the control plane is out of
//! reach the gateway keeps spending the leases it holds, then refuses
//! (`on_unreachable: within_lease`), or refuses at once (`refuse`).

use std::sync::Arc;
use std::time::Duration;

use tappass_budget::ledger::Counter;
use tappass_budget::Ledger;
use tappass_xds::pb::tappass::v1::{LeaseAsk, LeaseRequest};
use tokio::sync::{watch, Notify};

use crate::call_record::wall_ms;
use crate::config::{FleetBudgetsConfig, OnLeaseUnreachable};

/// The gateway's side of the lease protocol.
pub struct FleetLeases {
    ledger: Arc<Ledger>,
    cfg: FleetBudgetsConfig,
    gateway_id: String,
    wake: Notify,
    /// Bumped after every renewal round (applied or failed).
    rounds: watch::Sender<u64>,
}

impl FleetLeases {
    pub fn new(
        ledger: Arc<Ledger>,
        cfg: FleetBudgetsConfig,
        gateway_id: String,
    ) -> Arc<FleetLeases> {
        Arc::new(FleetLeases {
            ledger,
            cfg,
            gateway_id,
            wake: Notify::new(),
            rounds: watch::channel(0).0,
        })
    }

    /// Ask for a renewal now and wait for the round to finish (at most
    /// `wait_for_lease_ms`). Returns whether a round finished.
    pub async fn renew_now(&self) -> bool {
        let mut rounds = self.rounds.subscribe();
        rounds.borrow_and_update();
        self.wake.notify_one();
        let wait = Duration::from_millis(self.cfg.wait_for_lease_ms);
        matches!(
            tokio::time::timeout(wait, rounds.changed()).await,
            Ok(Ok(()))
        )
    }

    /// One ask per shared counter of the current windows.
    fn asks(&self, counters: &[Arc<Counter>]) -> Vec<LeaseAsk> {
        let now = wall_ms() as i64;
        counters
            .iter()
            .map(|c| {
                let limit = c.limit();
                let chunk = ((limit as f64 * self.cfg.lease_fraction).ceil() as u64).max(1);
                let idle = now - c.touched_ms() > self.cfg.release_idle_ms as i64;
                let wanted = c.take_wanted();
                let (holding, want) = if idle && wanted == 0 {
                    (c.shrink_lease(), 0)
                } else {
                    let lease = c.lease();
                    let headroom = lease.saturating_sub(c.committed());
                    let want = if headroom < chunk / 2 + 1 || wanted > 0 {
                        chunk.max(wanted)
                    } else {
                        0
                    };
                    (lease, want)
                };
                LeaseAsk {
                    counter: c.key.to_string(),
                    limit,
                    committed: c.committed(),
                    holding,
                    want,
                }
            })
            .collect()
    }

    fn unreachable(&self, why: &str) {
        if self.cfg.on_unreachable == OnLeaseUnreachable::Refuse {
            for c in self.ledger.shared_counters() {
                c.shrink_lease();
            }
        }
        tracing::warn!(reason = why, "budget leases could not be renewed");
    }

    /// One renewal round over `channel`.
    async fn round(&self, channel: Option<tappass_xds::Channel>) {
        let counters = self.ledger.shared_counters();
        if counters.is_empty() {
            return;
        }
        let Some(channel) = channel else {
            self.unreachable("no session with the control plane");
            return;
        };
        let request = LeaseRequest {
            gateway_id: self.gateway_id.clone(),
            asks: self.asks(&counters),
        };
        let timeout = Duration::from_millis(self.cfg.renew_every_ms.clamp(200, 5000));
        match tappass_xds::budgets::request_leases(channel, request, timeout).await {
            Ok(reply) => {
                for g in reply.grants {
                    if let Some(c) = counters.iter().find(|c| *c.key == *g.counter) {
                        c.set_lease(g.lease);
                        c.set_fleet_committed(g.fleet_committed);
                    }
                }
            }
            Err(e) => self.unreachable(&e.to_string()),
        }
    }

    /// Renew leases until the process ends.
    pub async fn run(self: Arc<Self>, channel: watch::Receiver<Option<tappass_xds::Channel>>) {
        let every = Duration::from_millis(self.cfg.renew_every_ms);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            let ch = channel.borrow().clone();
            self.round(ch).await;
            self.rounds.send_modify(|n| *n += 1);
        }
    }
}
