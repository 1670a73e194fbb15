//! `tappass sandbox revoke S`.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use super::control::ControlArgs;

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Revoke a sandbox: every token bound to it is refused
    /// (`sandbox_revoked`) and no new token is minted for it.
    Revoke {
        sandbox: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

pub fn run(args: &SandboxArgs) -> Result<u8> {
    match &args.command {
        SandboxCommand::Revoke { sandbox, control } => {
            let v = control
                .client()?
                .post("/v1/revocations/sandboxes", json!({ "sandbox": sandbox }))?;
            println!(
                "sandbox {sandbox} revoked (pushed until {})",
                v["expires_at"].as_i64().unwrap_or(0)
            );
            Ok(0)
        }
    }
}
