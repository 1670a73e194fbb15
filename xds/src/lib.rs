//! Envoy Aggregated Discovery Service (ADS, "xDS") for TapPass.
//!
//! - [`pb`]: generated code for the vendored Envoy discovery protos
//!   (`envoy.service.discovery.v3`) and the TapPass resources (`tappass.v1`).
//! - [`types`]: type URLs of the TapPass resources, `Any` packing.
//! - [`envelope`]: the signed-snapshot envelope (Ed25519).
//! - [`server`]: an `AggregatedDiscoveryService` over a [`server::SnapshotSource`],
//!   state of the world and delta, with per-node status.
//! - [`client`]: a subscribing client with ACK/NACK and reconnect.
//! - [`budgets`]: the `BudgetLeases` service (leases of shared budget
//!   limits, on the ADS server's port) and its client call.
//! - [`reports`]: the `GatewayReports` service (gateway → control plane
//!   reports on the ADS server's port), its signing input and client call.
//!
//! The crate knows nothing of policy semantics: payloads are opaque bytes.

pub mod budgets;
pub mod client;
pub mod envelope;
pub mod error;
pub mod reports;
pub mod server;
pub mod types;

/// Generated protobuf and gRPC code.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
}

/// Encoded `FileDescriptorSet` of every compiled proto (imports included):
/// for gRPC reflection and for clients in other languages.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tappass_xds_descriptor.bin"));

pub use client::{
    AdsClient, Backoff, ClientConfig, ClientHandle, ClientStatus, HeldType, Protocol,
    ReceivedResource, Subscription, Update, UpdateHandler,
};
pub use envelope::{key_id, Expect, SnapshotMeta, SnapshotSigner, SnapshotVerifier, Verified};
pub use error::{EnvelopeError, XdsError};
pub use reports::{report_signing_input, send_report, ReportHandler, ReportsServer};
pub use server::{
    AdsServer, Nack, NodeStatus, Resource, ServerOptions, SnapshotCache, SnapshotSource,
    TypeSnapshot, TypeStatus,
};
/// The gRPC channel type of [`ClientHandle::channel`].
pub use tonic::transport::Channel;
pub use types::{pack, resource_name, unpack, SignedResource};
