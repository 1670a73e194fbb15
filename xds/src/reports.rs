//! Gateway reports: the unary `tappass.v1.GatewayReports/Report` call a
//! gateway makes to its control plane (audit chain head, audit public keys),
//! served on the same gRPC server as ADS.
//!
//! This module is plumbing only: the signing input of a report
//! ([`report_signing_input`]), a server adapter over a [`ReportHandler`],
//! and a client call over an existing channel. Whether a report is accepted
//! is the handler's decision.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::XdsError;
use crate::pb::tappass::v1::gateway_reports_client::GatewayReportsClient;
use crate::pb::tappass::v1::gateway_reports_server::{GatewayReports, GatewayReportsServer};
use crate::pb::tappass::v1::{GatewayReport, ReportReply};

/// Largest report accepted by the server (bytes).
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len().min(u32::MAX as usize) as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes a report's signature covers (see `tappass/v1/reports.proto`).
pub fn report_signing_input(r: &GatewayReport) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + r.audit_jwks_json.len());
    out.extend_from_slice(b"tappass.v1.GatewayReport\n");
    put_str(&mut out, &r.gateway_id);
    let head = r.audit_head.clone().unwrap_or_default();
    out.extend_from_slice(&head.seq.to_be_bytes());
    put_str(&mut out, &head.hash);
    out.extend_from_slice(&head.signed_seq.to_be_bytes());
    out.extend_from_slice(&head.time_ms.to_be_bytes());
    put_str(&mut out, &r.audit_jwks_json);
    out.extend_from_slice(&r.audit_key_generation.to_be_bytes());
    put_str(&mut out, &r.key_id);
    out.extend_from_slice(&r.sent_at_ms.to_be_bytes());
    out
}

/// Decides on reports. Return a `Status` to refuse one (e.g.
/// `permission_denied` for a report the gateway may not make).
#[tonic::async_trait]
pub trait ReportHandler: Send + Sync + 'static {
    async fn report(
        &self,
        report: GatewayReport,
        peer: Option<SocketAddr>,
    ) -> Result<ReportReply, Status>;
}

/// The tonic service over a [`ReportHandler`].
#[derive(Clone)]
pub struct ReportsServer {
    handler: Arc<dyn ReportHandler>,
}

impl ReportsServer {
    pub fn new(handler: Arc<dyn ReportHandler>) -> Self {
        ReportsServer { handler }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn service(&self) -> GatewayReportsServer<ReportsServer> {
        GatewayReportsServer::new(self.clone()).max_decoding_message_size(MAX_REPORT_BYTES)
    }
}

#[tonic::async_trait]
impl GatewayReports for ReportsServer {
    async fn report(
        &self,
        request: Request<GatewayReport>,
    ) -> Result<Response<ReportReply>, Status> {
        let peer = request.remote_addr();
        let reply = self.handler.report(request.into_inner(), peer).await?;
        Ok(Response::new(reply))
    }
}

/// Sends one report over `channel` (e.g. the ADS client's channel,
/// [`crate::ClientHandle::channel`]), waiting at most `timeout`.
pub async fn send_report(
    channel: Channel,
    report: GatewayReport,
    timeout: Duration,
) -> Result<ReportReply, XdsError> {
    let mut client = GatewayReportsClient::new(channel);
    let mut req = Request::new(report);
    req.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.report(req)).await {
        Ok(r) => Ok(r?.into_inner()),
        Err(_) => Err(XdsError::Status(Box::new(Status::deadline_exceeded(
            format!("no reply within {timeout:?}"),
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::tappass::v1::AuditHead;

    #[test]
    fn signing_input_covers_every_field() {
        let base = GatewayReport {
            gateway_id: "gw-1".into(),
            audit_head: Some(AuditHead {
                seq: 7,
                hash: "ab".repeat(32),
                signed_seq: 5,
                time_ms: 1_700_000_000_000,
            }),
            audit_jwks_json: r#"{"keys":[]}"#.into(),
            audit_key_generation: 2,
            key_id: "tp-0123456789abcdef".into(),
            signature: "sig".into(),
            sent_at_ms: 1_700_000_000_001,
        };
        let input = report_signing_input(&base);
        let mut changes: Vec<GatewayReport> = Vec::new();
        let mut r = base.clone();
        r.gateway_id = "gw-2".into();
        changes.push(r);
        for f in 0..4 {
            let mut r = base.clone();
            let h = r.audit_head.as_mut().unwrap();
            match f {
                0 => h.seq += 1,
                1 => h.hash = "cd".repeat(32),
                2 => h.signed_seq += 1,
                _ => h.time_ms += 1,
            }
            changes.push(r);
        }
        let mut r = base.clone();
        r.audit_jwks_json.push(' ');
        changes.push(r);
        let mut r = base.clone();
        r.audit_key_generation += 1;
        changes.push(r);
        let mut r = base.clone();
        r.key_id = "tp-fedcba9876543210".into();
        changes.push(r);
        let mut r = base.clone();
        r.sent_at_ms += 1;
        changes.push(r);
        for c in &changes {
            assert_ne!(report_signing_input(c), input, "{c:?}");
        }
        // The signature itself is not part of what it signs.
        let mut r = base.clone();
        r.signature = "other".into();
        assert_eq!(report_signing_input(&r), input);
        // Moving bytes between adjacent strings changes the input.
        let mut a = base.clone();
        a.gateway_id = "gw".into();
        let mut b = base;
        b.gateway_id = "gw-".into();
        assert_ne!(report_signing_input(&a), report_signing_input(&b));
    }
}
