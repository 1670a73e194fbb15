//! TapPass policy engine: the authoring model (functions, categories,
//! concerns, capabilities, tool catalog, compliance packs), the
//! org → project → agent cascade with strictest-wins merge and
//! because-trails, Rego evaluation, the signed [`CompiledPolicy`], and the
//! policy providers that render it to each target's native configuration.
//!
//! The crate is pure: no file or network I/O, no async runtime. Built-in
//! content is embedded; callers pass already-read sources ([`PolicySource`]).
//! See `policies/README.md`.

pub mod builtin;
pub mod canonical;
pub mod catalog;
pub mod compiled;
pub mod compiler;
pub mod error;
pub mod model;
pub mod parse;
pub mod pricing;
pub mod providers;
pub mod rego;
pub mod rules;
pub mod schema;
pub mod sign;

pub use compiled::CompiledPolicy;
pub use compiler::{compile, preview, CompileOptions, Compiled, PolicySource, SourceFile};
pub use error::{PolicyError, Result};
pub use parse::MAX_SOURCE_BYTES;
pub use providers::{render, TargetCapabilities, TargetConfig, Unenforceable};
pub use rego::{evaluate_entrypoint, evaluate_policy, PreparedRego, RegoAction, RegoDecision};
pub use sign::{keypair_from_seed, sign, verify, PublicKeyFile, SecretKeyFile, SignedPolicy};
