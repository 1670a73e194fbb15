//! Operator CLI (`tappass`). Each subcommand is a module with an `Args`
//! struct and a `run` returning the process exit code; add new subcommands
//! (policy, token, audit, …) as further variants of [`Command`].

use clap::{Parser, Subcommand};

pub mod agent;
pub mod apikey;
pub mod audit;
pub mod budget;
pub mod control;
pub mod sandbox;
pub mod scan;
pub mod status;
pub mod token;
pub mod up;

// Policy engine subcommands.
pub mod keys;
pub mod packs;
pub mod policy;
pub mod provider;

#[derive(Debug, Parser)]
#[command(name = "tappass", version, about = "TapPass operator CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scan files or stdin for secrets, PII, prompt injection and
    /// exfiltration (exit 1 when anything is found).
    Scan(scan::ScanArgs),

    // ---- policy engine ----
    /// Compile, preview and verify policies.
    Policy(policy::PolicyArgs),
    /// List policy providers and render a Compiled Policy for a target.
    Provider(provider::ProviderArgs),
    /// List and show the built-in compliance packs.
    Packs(packs::PacksArgs),
    /// Policy signing keys (offline) and token-key rotation.
    Keys(keys::KeysArgs),
    /// Verify, read and export a gateway's audit trail.
    Audit(audit::AuditArgs),
    /// Budgets and rate limits: spent, reserved, remaining per scope.
    Budget(budget::BudgetArgs),
    /// Capability tokens: mint (offline or from a control plane), revoke.
    Token(token::TokenArgs),

    // ---- control plane ----
    /// Register and list agents.
    Agent(agent::AgentArgs),
    /// Gateway API keys.
    Key(apikey::KeyArgs),
    /// Revoke sandboxes.
    Sandbox(sandbox::SandboxArgs),
    /// Published versions and connected gateways.
    Status(status::StatusArgs),
    /// Run the control plane and a gateway in one process (single machine).
    Up(up::UpArgs),
}
