//! `tappass agent create|list`.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use super::control::ControlArgs;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent (its project is created with it).
    Create {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
        /// L0 function of the agent (pre-ticks categories and concerns).
        #[arg(long)]
        function: Option<String>,
        /// observer, worker, standard or full.
        #[arg(long)]
        tier: Option<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List agents.
    List {
        #[command(flatten)]
        control: ControlArgs,
    },
}

pub fn run(args: &AgentArgs) -> Result<u8> {
    match &args.command {
        AgentCommand::Create {
            name,
            project,
            function,
            tier,
            control,
        } => {
            let v = control.client()?.post(
                "/v1/agents",
                json!({"name": name, "project": project, "function": function, "tier": tier}),
            )?;
            println!(
                "agent {} created in project {}",
                v["name"].as_str().unwrap_or(name),
                v["project"].as_str().unwrap_or(project)
            );
            Ok(0)
        }
        AgentCommand::List { control } => {
            let v = control.client()?.get("/v1/agents")?;
            for a in v.as_array().into_iter().flatten() {
                println!(
                    "{}\tproject={}",
                    a["name"].as_str().unwrap_or(""),
                    a["project"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
    }
}
