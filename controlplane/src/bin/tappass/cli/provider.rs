//! `tappass provider list|render`: render a Compiled Policy for a target.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use tappass_policies::providers::providers;
use tappass_policies::{render, TargetCapabilities};

#[derive(Debug, Args)]
pub struct ProviderArgs {
    #[command(subcommand)]
    pub command: ProviderCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// List the policy providers (render targets).
    List,
    /// Render a Compiled Policy (bare or signed) for a target: the config to
    /// stdout, what the target cannot enforce to stderr.
    Render(RenderArgs),
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Target id (see `tappass provider list`).
    #[arg(long)]
    pub target: String,
    /// Compiled Policy JSON (bare or a signed envelope).
    pub compiled: PathBuf,
    /// Gateway base URL the target should use.
    #[arg(long)]
    pub gateway_url: Option<String>,
    /// MCP broker URL.
    #[arg(long)]
    pub mcp_broker_url: Option<String>,
    /// Command printing the gateway key (Claude Code apiKeyHelper).
    #[arg(long)]
    pub api_key_helper: Option<String>,
    /// Command a pre-tool-use hook runs.
    #[arg(long)]
    pub hook_command: Option<String>,
}

pub fn run(args: &ProviderArgs) -> Result<u8> {
    match &args.command {
        ProviderCommand::List => {
            for p in providers() {
                println!("{:<12} {}", p.id, p.description);
            }
            Ok(0)
        }
        ProviderCommand::Render(a) => {
            let policy = super::policy::read_policy_file(&a.compiled)?;
            let mut caps = TargetCapabilities::default();
            if let Some(u) = &a.gateway_url {
                caps.gateway_url = u.clone();
            }
            if let Some(u) = &a.mcp_broker_url {
                caps.mcp_broker_url = u.clone();
            }
            caps.api_key_helper = a.api_key_helper.clone();
            caps.hook_command = a.hook_command.clone();
            let (cfg, unenforceable) = match render(&a.target, &policy, &caps) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("tappass: {e}");
                    return Ok(1);
                }
            };
            let mut out = std::io::stdout().lock();
            let many = cfg.files.len() > 1;
            for f in &cfg.files {
                if many {
                    writeln!(out, "# ---- {} ----", f.path)?;
                }
                out.write_all(f.content.as_bytes())?;
            }
            let mut err = std::io::stderr().lock();
            for u in &unenforceable {
                writeln!(err, "unenforceable: {u}")?;
            }
            Ok(0)
        }
    }
}
