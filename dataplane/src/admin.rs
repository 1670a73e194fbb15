//! The admin listener: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//! It is separate from the client listener so that it can be bound to a
//! private address; it serves nothing a caller could use against the gateway.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;

use crate::audit_sink::AuditSink;
use crate::metrics::Metrics;
use crate::server::Lifecycle;

pub struct Admin {
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    audit: Option<Arc<AuditSink>>,
    budgets: Option<Budgets>,
}

/// The ledger and the live state whose rules it is reported against.
struct Budgets {
    ledger: Arc<tappass_budget::Ledger>,
    state: Arc<arc_swap::ArcSwap<crate::gateway::GatewayState>>,
}

impl Budgets {
    /// Every limit's spent, reserved and remaining, after the counters
    /// reported are on disk.
    fn report(&self) -> Vec<tappass_budget::ReportLine> {
        let state = self.state.load();
        let Some(policy) = &state.budgets else {
            return Vec::new();
        };
        self.ledger.sync();
        self.ledger.report(&policy.rules)
    }

    fn json(&self) -> Bytes {
        let body = serde_json::json!({
            "time_zone": self.ledger.clock().time_zone(),
            "persistent": self.ledger.is_persistent(),
            "limits": self.report(),
        });
        Bytes::from(body.to_string())
    }

    /// Prometheus gauges per scope and limit.
    fn metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let lines = self.report();
        if lines.is_empty() {
            return;
        }
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        for (name, help) in [
            (
                "tappass_budget_limit",
                "Limit of a budget scope in its window.",
            ),
            ("tappass_budget_used", "Spent in the current window."),
            ("tappass_budget_reserved", "Reserved by calls in flight."),
            ("tappass_budget_remaining", "Left in the current window."),
            (
                "tappass_budget_resets_at_seconds",
                "Unix time the window resets.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for l in &lines {
                let v = match name {
                    "tappass_budget_limit" => l.max as i64,
                    "tappass_budget_used" => l.used as i64,
                    "tappass_budget_reserved" => l.reserved as i64,
                    "tappass_budget_remaining" => l.remaining as i64,
                    _ => l.resets_at,
                };
                let _ = writeln!(
                    out,
                    "{name}{{scope=\"{}\",limit=\"{}\",unit=\"{}\"}} {v}",
                    esc(&l.scope),
                    esc(&l.limit),
                    l.metric.as_str()
                );
            }
        }
    }
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        audit: Option<Arc<AuditSink>>,
    ) -> Admin {
        Admin {
            metrics,
            lifecycle,
            audit,
            budgets: None,
        }
    }

    /// Serve `/budgets` and budget gauges from this ledger.
    pub fn with_budgets(
        mut self,
        ledger: Arc<tappass_budget::Ledger>,
        state: Arc<arc_swap::ArcSwap<crate::gateway::GatewayState>>,
    ) -> Admin {
        self.budgets = Some(Budgets { ledger, state });
        self
    }

    fn answer(&self, method: &str, path: &str, shutting_down: bool) -> (u16, &'static str, Bytes) {
        // Human approvals of tool calls: `POST /approvals/ID/approve|deny`.
        if let Some(rest) = path.strip_prefix("/approvals/") {
            let decision = match rest.rsplit_once('/') {
                Some((id, "approve")) => Some((id, true)),
                Some((id, "deny")) => Some((id, false)),
                _ => None,
            };
            return match (method, decision) {
                ("POST", Some((id, approve))) => {
                    match crate::approvals::approvals().decide(id, approve) {
                        Ok(()) => (
                            200,
                            "application/json",
                            Bytes::from(
                                serde_json::json!({"id": id, "state": if approve { "approved" } else { "denied" }})
                                    .to_string(),
                            ),
                        ),
                        Err(e @ crate::approvals::ApprovalError::NotFound(_)) => {
                            (404, "text/plain", Bytes::from(format!("{e}\n")))
                        }
                        Err(e) => (409, "text/plain", Bytes::from(format!("{e}\n"))),
                    }
                }
                (_, Some(_)) => (
                    405,
                    "text/plain",
                    Bytes::from_static(b"method not allowed\n"),
                ),
                (_, None) => (404, "text/plain", Bytes::from_static(b"not found\n")),
            };
        }
        if method != "GET" && method != "HEAD" {
            return (
                405,
                "text/plain",
                Bytes::from_static(b"method not allowed\n"),
            );
        }
        match path {
            "/healthz" => (200, "text/plain", Bytes::from_static(b"ok\n")),
            "/readyz" if shutting_down || self.lifecycle.is_draining() => {
                (503, "text/plain", Bytes::from_static(b"draining\n"))
            }
            "/readyz" => (200, "text/plain", Bytes::from_static(b"ready\n")),
            "/metrics" => {
                let mut text = self.metrics.render();
                if let Some(b) = &self.budgets {
                    let mut gauges = String::new();
                    b.metrics(&mut gauges);
                    text.extend_from_slice(gauges.as_bytes());
                }
                (200, "text/plain; version=0.0.4", Bytes::from(text))
            }
            // Spent, reserved and remaining per scope and limit.
            // Tool calls waiting for (or decided by) a person.
            "/approvals" => (
                200,
                "application/json",
                Bytes::from(crate::approvals::approvals().list().to_string()),
            ),
            "/budgets" => match &self.budgets {
                Some(b) => (200, "application/json", b.json()),
                None => (404, "text/plain", Bytes::from_static(b"budgets are off\n")),
            },
            // The audit chain head, so that an auditor can see nothing was
            // cut off the end of this gateway's log.
            "/audit/head" => match &self.audit {
                Some(a) => {
                    let head = a.wal.head();
                    let body = serde_json::json!({
                        "gateway_id": a.gateway_id,
                        "seq": head.seq,
                        "hash": head.hash,
                        "signed_seq": head.signed_seq,
                        "key_id": a.wal.key_id(),
                    });
                    (200, "application/json", Bytes::from(body.to_string()))
                }
                None => (404, "text/plain", Bytes::from_static(b"audit is off\n")),
            },
            _ => (404, "text/plain", Bytes::from_static(b"not found\n")),
        }
    }
}

#[async_trait]
impl HttpServerApp for Admin {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !matches!(session.read_request().await, Ok(true)) {
            return None;
        }
        let method = session.req_header().method.to_string();
        let path = session.req_header().uri.path().to_string();
        let (status, ctype, body) = self.answer(&method, &path, *shutdown.borrow());
        let mut h = ResponseHeader::build(status, Some(2)).ok()?;
        h.insert_header("content-type", ctype).ok()?;
        h.insert_header("content-length", body.len().to_string())
            .ok()?;
        session.write_response_header(Box::new(h)).await.ok()?;
        if method != "HEAD" {
            session.write_response_body(body, true).await.ok()?;
        }
        session.finish_body().await.ok()?;
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(s)) => Some(ReusedHttpStream::from_reusable_stream(s, persistent)),
            _ => None,
        }
    }
}
