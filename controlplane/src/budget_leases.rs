//! Budget leases for the fleet: the control plane's side of
//! `tappass.v1.BudgetLeases`. One [`LeaseBook`] holds every shared
//! counter; gateways ask it for leases over the gRPC connection they
//! subscribe on, and `GET /v1/budgets` shows it.

use std::net::SocketAddr;
use std::sync::Mutex;

use serde_json::{json, Value};
use tappass_budget::fleet::{Ask, LeaseBook};
use tappass_xds::pb::tappass::v1::{LeaseGrant, LeaseReply, LeaseRequest};
use tonic::Status;

use crate::ControlPlane;

/// Most asks in one request.
pub const MAX_ASKS: usize = 10_000;
/// Counters nobody asked about for this long are forgotten (their day or
/// month window is over).
const FORGET_AFTER_MS: i64 = 35 * 86_400_000;
/// A fresh book grants nothing new for this long, so that every gateway
/// can re-report the leases it holds first.
pub const WARMUP_MS: i64 = 5_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The lease book of one control plane process.
#[derive(Debug)]
pub struct Leases {
    book: Mutex<LeaseBook>,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            book: Mutex::new(LeaseBook::new(now_ms(), WARMUP_MS)),
        }
    }
}

impl Leases {
    /// Answer one gateway's request.
    pub fn answer(&self, req: &LeaseRequest) -> Result<LeaseReply, Status> {
        if req.gateway_id.trim().is_empty() {
            return Err(Status::invalid_argument("gateway_id is empty"));
        }
        if req.asks.len() > MAX_ASKS {
            return Err(Status::invalid_argument(format!(
                "{} asks in one request; at most {MAX_ASKS}",
                req.asks.len()
            )));
        }
        for a in &req.asks {
            if tappass_budget::ledger::parse_key(&a.counter).is_none() {
                return Err(Status::invalid_argument(format!(
                    "`{}` is not a budget counter key",
                    a.counter
                )));
            }
        }
        let now = now_ms();
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.prune(now - FORGET_AFTER_MS);
        let grants = req
            .asks
            .iter()
            .map(|a| {
                let g = book.ask(
                    &req.gateway_id,
                    &Ask {
                        counter: a.counter.clone(),
                        limit: a.limit,
                        committed: a.committed,
                        holding: a.holding,
                        want: a.want,
                    },
                    now,
                );
                LeaseGrant {
                    counter: g.counter,
                    lease: g.lease,
                    limit: g.limit,
                    fleet_committed: g.fleet_committed,
                    fleet_leased: g.fleet_leased,
                }
            })
            .collect();
        Ok(LeaseReply { grants })
    }

    /// Every shared counter: limit, and each gateway's commitment and lease.
    pub fn report(&self) -> Value {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let counters: Vec<Value> = book
            .counters()
            .iter()
            .map(|(key, c)| {
                json!({
                    "counter": key,
                    "limit": c.limit,
                    "committed": c.committed(),
                    "leased": c.leased(),
                    "gateways": c.gateways,
                })
            })
            .collect();
        json!({ "shared": counters })
    }
}

/// The gRPC handler.
pub struct LeaseService(pub ControlPlane);

#[tonic::async_trait]
impl tappass_xds::budgets::LeaseHandler for LeaseService {
    async fn lease(
        &self,
        request: LeaseRequest,
        _peer: Option<SocketAddr>,
    ) -> Result<LeaseReply, Status> {
        self.0.inner.leases.answer(&request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tappass_xds::pb::tappass::v1::LeaseAsk;

    fn req(gw: &str, counter: &str, want: u64) -> LeaseRequest {
        LeaseRequest {
            gateway_id: gw.into(),
            asks: vec![LeaseAsk {
                counter: counter.into(),
                limit: 100,
                committed: 0,
                holding: 0,
                want,
            }],
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let l = Leases {
            book: Mutex::new(LeaseBook::default()),
        };
        assert!(l.answer(&req("", "org:a|tokens|day||20261122", 1)).is_err());
        let e = l.answer(&req("gw", "not a key", 1)).unwrap_err();
        assert!(e.message().contains("not a budget counter key"));
        let g = l
            .answer(&req("gw", "org:a|tokens|day||20261122", 30))
            .unwrap();
        assert_eq!(g.grants[0].lease, 30);
        assert_eq!(l.report()["shared"][0]["leased"], 30);
    }
}
