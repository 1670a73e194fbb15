//! The `BudgetLeases` service: gateways ask their control plane for leases
//! of shared budget limits (see `proto/tappass/v1/budgets.proto`). This
//! module has the tonic service over a [`LeaseHandler`] and the client
//! call; the lease arithmetic is the control plane's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::pb::tappass::v1::budget_leases_client::BudgetLeasesClient;
use crate::pb::tappass::v1::budget_leases_server::{BudgetLeases, BudgetLeasesServer};
use crate::pb::tappass::v1::{LeaseReply, LeaseRequest};
use crate::XdsError;

/// Largest lease request accepted (bytes).
pub const MAX_LEASE_REQUEST_BYTES: usize = 1 << 20;

/// Decides on lease requests.
#[tonic::async_trait]
pub trait LeaseHandler: Send + Sync + 'static {
    async fn lease(
        &self,
        request: LeaseRequest,
        peer: Option<SocketAddr>,
    ) -> Result<LeaseReply, Status>;
}

/// The tonic service over a [`LeaseHandler`].
#[derive(Clone)]
pub struct LeasesServer {
    handler: Arc<dyn LeaseHandler>,
}

impl LeasesServer {
    pub fn new(handler: Arc<dyn LeaseHandler>) -> Self {
        LeasesServer { handler }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn service(&self) -> BudgetLeasesServer<LeasesServer> {
        BudgetLeasesServer::new(self.clone()).max_decoding_message_size(MAX_LEASE_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl BudgetLeases for LeasesServer {
    async fn lease(&self, request: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        let peer = request.remote_addr();
        let reply = self.handler.lease(request.into_inner(), peer).await?;
        Ok(Response::new(reply))
    }
}

/// Sends one lease request over `channel` (the ADS client's channel),
/// waiting at most `timeout`.
pub async fn request_leases(
    channel: Channel,
    request: LeaseRequest,
    timeout: Duration,
) -> Result<LeaseReply, XdsError> {
    let mut client = BudgetLeasesClient::new(channel);
    let mut req = Request::new(request);
    req.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.lease(req)).await {
        Ok(r) => Ok(r?.into_inner()),
        Err(_) => Err(XdsError::Status(Box::new(Status::deadline_exceeded(
            format!("no lease reply within {timeout:?}"),
        )))),
    }
}
