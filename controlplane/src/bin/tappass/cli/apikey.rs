//! `tappass key create --agent A`: a gateway API key, printed once.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use super::control::ControlArgs;

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a gateway API key for an agent. The key is printed once; the
    /// control plane keeps only its SHA-256.
    Create {
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List API keys (ids and agents, never the keys).
    List {
        #[command(flatten)]
        control: ControlArgs,
    },
}

pub fn run(args: &KeyArgs) -> Result<u8> {
    match &args.command {
        KeyCommand::Create { agent, control } => {
            let path = format!("/v1/agents/{agent}/keys");
            let v = control.client()?.post(&path, json!({}))?;
            eprintln!(
                "API key {} for agent {} (shown once; store it now):",
                v["key_id"].as_str().unwrap_or(""),
                agent
            );
            println!("{}", v["key"].as_str().unwrap_or(""));
            Ok(0)
        }
        KeyCommand::List { control } => {
            let v = control.client()?.get("/v1/keys")?;
            for k in v.as_array().into_iter().flatten() {
                println!(
                    "{}\tagent={}",
                    k["key_id"].as_str().unwrap_or(""),
                    k["agent"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
    }
}
