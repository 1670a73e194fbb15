//! TapPass data plane: the governed LLM gateway, built on Pingora.
//!
//! Module map:
//! - [`config`]: YAML configuration, validation, the embedded default.
//! - [`wire`]: endpoints, the normalized request view, upstream body rewrite.
//! - [`sse`]: incremental Server-Sent Events decoder.
//! - [`events`]: typed LLM stream events and usage extraction.
//! - [`relay`]: the stream relay with per-event hooks and bounded hold-back.
//! - [`error`]: gateway errors and their one mapping to statuses and wire formats.
//! - [`auth`]: gateway API keys.
//! - [`call_record`]: what the gateway knows about one call.
//! - [`audit_sink`]: writing each call's audit row to the audit WAL.
//! - [`budget`]: budget rules per state, reservations before the upstream call, the stream meter, settlement.
//! - [`budget_fleet`]: leases of limits shared with the fleet, renewed from the control plane.
//! - [`providers`]: providers, credentials, circuit breakers, model routing.
//! - [`control`]: the control-plane link: verified xDS updates, hot swap, persistence, staleness.
//! - [`local_policy`]: standalone mode: signed policies from a watched directory.
//! - [`upstream`]: upstream attempts, fallback, timeouts.
//! - [`gateway`]: the client-facing Pingora application.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`mock`]: the deterministic mock LLM provider.
//! - [`server`]: assembling and running the Pingora server.

pub mod admin;
pub mod approvals;
pub mod audit_sink;
pub mod auth;
pub mod budget;
pub mod budget_fleet;
pub mod call_record;
pub mod config;
pub mod control;
pub mod error;
pub mod events;
pub mod gateway;
pub mod local_policy;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod providers;
pub mod relay;
pub mod reports;
pub mod server;
pub mod sse;
pub mod steps;
pub mod tool_governance;
pub mod upstream;
pub mod wire;
