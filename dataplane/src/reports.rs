//! The gateway's reports to its control plane: its audit chain head and the
//! public keys it signs audit rows with, sent over the ADS channel
//! (`tappass.v1.GatewayReports/Report`) when they change (at most once a
//! second) and at least every [`HEARTBEAT`]. Each report is signed with the
//! gateway's current audit key, so only this gateway can report for its id.
//!
//! The reply says which audit key generation the control plane wants. When
//! it is ahead, the gateway prepares a new key, announces it in a report
//! signed with the current key, and once that report is accepted seals its
//! chain with the current key and switches to the new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tappass_xds::pb::tappass::v1::{AuditHead, GatewayReport};
use tappass_xds::{report_signing_input, send_report, Channel};
use tokio::sync::watch;

use crate::audit_sink::AuditSink;

/// Longest time between two reports.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Shortest time between two reports of a changed head.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Wait after a failed report; doubled after each further failure, up to
/// [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(10);

fn wall_ms() -> i64 {
    crate::call_record::wall_ms() as i64
}

/// Builds and signs a report of the sink's current state.
pub fn build_report(sink: &AuditSink) -> Result<GatewayReport, String> {
    let head = sink.wal.head();
    let key = sink.wal.signing_key();
    let jwks = sink.jwks_json().map_err(|e| e.to_string())?;
    let mut r = GatewayReport {
        gateway_id: sink.gateway_id.clone(),
        audit_head: Some(AuditHead {
            seq: head.seq,
            hash: head.hash,
            signed_seq: head.signed_seq,
            time_ms: wall_ms(),
        }),
        audit_jwks_json: jwks,
        audit_key_generation: sink.key_generation(),
        key_id: key.kid().to_string(),
        signature: String::new(),
        sent_at_ms: wall_ms(),
    };
    r.signature = key.sign(&report_signing_input(&r));
    Ok(r)
}

/// What the last report carried.
#[derive(PartialEq, Eq, Clone, Default)]
struct Sent {
    seq: u64,
    signed_seq: u64,
    key_id: String,
    generation: u64,
}

/// Runs the report loop until the task is dropped or `channel`'s sender
/// goes away.
pub async fn run(mut channel: watch::Receiver<Option<Channel>>, sink: Arc<AuditSink>) {
    let mut last: Option<(Sent, Instant)> = None;
    let mut failed_at: Option<Instant> = None;
    let mut retry = RETRY;
    let mut urgent = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            changed = channel.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new session: report at once.
                urgent = true;
            }
        }
        let Some(ch) = channel.borrow().clone() else {
            continue;
        };
        if failed_at.is_some_and(|t| t.elapsed() < retry) {
            continue;
        }
        let head = sink.wal.head();
        let now = Sent {
            seq: head.seq,
            signed_seq: head.signed_seq,
            key_id: sink.wal.key_id(),
            generation: sink.key_generation(),
        };
        let due = match &last {
            None => true,
            Some((sent, at)) => {
                urgent
                    || at.elapsed() >= HEARTBEAT
                    || (*sent != now && at.elapsed() >= MIN_INTERVAL)
            }
        };
        if !due {
            continue;
        }
        // Whether this report announces a prepared next key (published in
        // the key set again, in case a previous run stopped before that).
        let announcing = sink.rotation_prepared();
        if announcing {
            if let Err(e) = sink.prepare_rotation() {
                tracing::error!(error = %e, "cannot publish the next audit key");
                failed_at = Some(Instant::now());
                continue;
            }
        }
        let report = match build_report(&sink) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the audit report");
                failed_at = Some(Instant::now());
                continue;
            }
        };
        match send_report(ch, report, TIMEOUT).await {
            Ok(reply) => {
                failed_at = None;
                retry = RETRY;
                urgent = false;
                last = Some((now, Instant::now()));
                let have = sink.key_generation();
                if announcing {
                    // The control plane knows the next key: switch to it.
                    let s = sink.clone();
                    let target = reply.audit_key_generation.max(have + 1);
                    match tokio::task::spawn_blocking(move || s.finish_rotation(target)).await {
                        Ok(Ok(())) => {
                            tracing::info!(key_id = %sink.wal.key_id(), generation = sink.key_generation(), "rotated the audit signing key");
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "audit key rotation failed"),
                        Err(e) => tracing::error!(error = %e, "audit key rotation task failed"),
                    }
                    urgent = true;
                } else if reply.audit_key_generation > have {
                    let s = sink.clone();
                    match tokio::task::spawn_blocking(move || s.prepare_rotation()).await {
                        Ok(Ok(next)) => {
                            tracing::info!(next_key_id = %next.kid(), "the control plane asked for a new audit key; announcing it");
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "cannot create the next audit key")
                        }
                        Err(e) => tracing::error!(error = %e, "audit key task failed"),
                    }
                    urgent = true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "the control plane refused or missed the audit report");
                if failed_at.is_some() {
                    retry = (retry * 2).min(RETRY_MAX);
                }
                failed_at = Some(Instant::now());
            }
        }
    }
}
