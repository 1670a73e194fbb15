//! `human_approval`: tool calls an agent's Rego marks `require_approval`
//! wait for a person.
//!
//! A tool call cannot be held open while someone decides (the model's turn
//! is over when it emits the call), so the gateway refuses it with 403
//! `approval_required` and an approval id, and keeps the request here. An
//! operator approves or denies it on the admin listener
//! (`GET /approvals`, `POST /approvals/ID/approve`, `POST /approvals/ID/deny`).
//! The id is derived from the agent, the tool and its exact arguments, so
//! when the agent retries the same call it finds the decision: an approval
//! lets that one call through (it is used up), a denial refuses it with
//! `approval_denied`. Requests and decisions expire after a TTL.
//!
//! The store is per gateway process and is touched only by calls whose
//! policy asked for an approval, never on the path of other calls.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long a request or a decision waits to be used.
pub const APPROVAL_TTL: Duration = Duration::from_secs(3600);

/// At most this many requests are kept (the oldest go first).
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
}

impl ApprovalState {
    fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
        }
    }
}

#[derive(Debug)]
struct Entry {
    agent: String,
    tool: String,
    reasons: Vec<String>,
    state: ApprovalState,
    created: Instant,
    created_ms: u64,
}

/// Why an operator's decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval request {0} (it expired, was used, or never existed)")]
    NotFound(String),
    #[error("approval request {0} was already decided")]
    AlreadyDecided(String),
}

#[derive(Debug, Default)]
pub struct Approvals {
    entries: Mutex<HashMap<String, Entry>>,
}

/// The gateway's approval requests.
pub fn approvals() -> &'static Approvals {
    static APPROVALS: OnceLock<Approvals> = OnceLock::new();
    APPROVALS.get_or_init(Approvals::default)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Approvals {
    /// The id of a tool call: the agent, the tool and its arguments.
    pub fn id_of(agent: &str, tool: &str, args: &Value) -> String {
        let mut h = Sha256::new();
        h.update(agent.as_bytes());
        h.update([0x1f]);
        h.update(tool.as_bytes());
        h.update([0x1f]);
        // `serde_json` objects keep their keys sorted: the text is canonical.
        h.update(args.to_string().as_bytes());
        format!("apr-{}", &hex::encode(h.finalize())[..24])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Use the decision on call `id`: `Approved` lets it through once (the
    /// approval is used up); otherwise the call is (still) refused, and a
    /// new request is opened when there was none.
    pub fn consult(&self, id: &str, agent: &str, tool: &str, reasons: &[String]) -> ApprovalState {
        let mut m = self.lock();
        m.retain(|_, e| e.created.elapsed() < APPROVAL_TTL);
        match m.get(id).map(|e| e.state) {
            Some(ApprovalState::Approved) => {
                m.remove(id);
                ApprovalState::Approved
            }
            Some(s) => s,
            None => {
                if m.len() >= MAX_PENDING {
                    let oldest = m
                        .iter()
                        .min_by_key(|(_, e)| e.created)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        m.remove(&k);
                    }
                }
                m.insert(
                    id.to_string(),
                    Entry {
                        agent: agent.to_string(),
                        tool: tool.to_string(),
                        reasons: reasons.to_vec(),
                        state: ApprovalState::Pending,
                        created: Instant::now(),
                        created_ms: wall_ms(),
                    },
                );
                ApprovalState::Pending
            }
        }
    }

    /// An operator's decision on a pending request.
    pub fn decide(&self, id: &str, approve: bool) -> Result<(), ApprovalError> {
        let mut m = self.lock();
        let e = m
            .get_mut(id)
            .filter(|e| e.created.elapsed() < APPROVAL_TTL)
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if e.state != ApprovalState::Pending {
            return Err(ApprovalError::AlreadyDecided(id.to_string()));
        }
        e.state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        Ok(())
    }

    /// The requests, newest first (never the arguments themselves).
    pub fn list(&self) -> Value {
        let m = self.lock();
        let mut v: Vec<(&String, &Entry)> = m
            .iter()
            .filter(|(_, e)| e.created.elapsed() < APPROVAL_TTL)
            .collect();
        v.sort_by_key(|(_, e)| std::cmp::Reverse(e.created));
        json!({"approvals": v.iter().map(|(id, e)| json!({
            "id": id, "agent": e.agent, "tool": e.tool, "reasons": e.reasons,
            "state": e.state.as_str(), "requested_at_ms": e.created_ms,
        })).collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_lets_exactly_one_identical_call_through() {
        let a = Approvals::default();
        let args = json!({"amount": 450, "charge": "ch_1"});
        let id = Approvals::id_of("refund-bot", "stripe.create_refund", &args);
        assert_eq!(
            id,
            Approvals::id_of(
                "refund-bot",
                "stripe.create_refund",
                &json!({"charge": "ch_1", "amount": 450})
            ),
            "key order does not change the id"
        );
        assert_ne!(
            id,
            Approvals::id_of(
                "refund-bot",
                "stripe.create_refund",
                &json!({"amount": 451, "charge": "ch_1"})
            )
        );
        let reasons = vec!["over 200".to_string()];
        let consult = || a.consult(&id, "refund-bot", "stripe.create_refund", &reasons);
        assert_eq!(consult(), ApprovalState::Pending);
        assert_eq!(consult(), ApprovalState::Pending);
        assert_eq!(a.list()["approvals"].as_array().unwrap().len(), 1);
        a.decide(&id, true).unwrap();
        assert_eq!(
            a.decide(&id, false),
            Err(ApprovalError::AlreadyDecided(id.clone()))
        );
        assert_eq!(consult(), ApprovalState::Approved);
        // Used up: the next identical call asks again.
        assert_eq!(consult(), ApprovalState::Pending);
        a.decide(&id, false).unwrap();
        assert_eq!(consult(), ApprovalState::Denied);
        assert_eq!(
            a.decide("apr-unknown", true),
            Err(ApprovalError::NotFound("apr-unknown".into()))
        );
    }
}
