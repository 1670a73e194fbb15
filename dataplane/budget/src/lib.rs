//! TapPass budgets and rate limits.
//!
//! Scopes (org, project, agent, API key) carry limits on tokens per day,
//! dollars per month, requests per minute and tool calls per minute, each
//! optionally only for some models ([`rules`]). Before a call the gateway
//! reserves its estimated cost in every scope that applies ([`ledger`]),
//! priced from the price table (`tappass_policies::pricing`) with prompt
//! tokens from a real tokenizer where one is public ([`estimate`]); a call
//! no scope can cover is refused before anything is spent. The reservation
//! is settled with the provider's reported usage when the call ends.
//! Windows are calendar days and months in a configured time zone, or a
//! sliding minute ([`window`]). Counters are persisted by a writer thread
//! in RocksDB ([`store`]) so they survive restarts without counting a call
//! twice. Limits shared by a fleet of gateways are spent only within
//! leases the control plane grants from one book ([`fleet`]).

pub mod estimate;
pub mod fleet;
pub mod ledger;
pub mod rules;
pub mod store;
pub mod window;

pub use estimate::TokenCounter;
pub use ledger::{Exceeded, Ledger, ReportLine, Reservation, Spend};
pub use rules::{CallScopes, Limit, Metric, Rules, ScopeKind, ScopeRule, ScopeSelector};
pub use store::{Loaded, Store};
pub use window::{Clock, Now, WindowKind};

/// Errors building budgets (configuration, storage).
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budgets: {0}")]
    Config(String),
    #[error("budget state: {0}")]
    Store(String),
}
