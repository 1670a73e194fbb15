//! `tappass status`: published versions and the gateways subscribed to the
//! control plane, with the versions they ACKed.

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::control::ControlArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

pub fn run(args: &StatusArgs) -> Result<u8> {
    let client = args.control.client()?;
    let v = client.get("/v1/status")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("control plane {}", client.url);
    println!(
        "  snapshot key {}, token key {}, {} agents",
        v["snapshot_key_id"].as_str().unwrap_or(""),
        v["token_key_id"].as_str().unwrap_or(""),
        v["agents"]
    );
    let versions = v["versions"].as_object().cloned().unwrap_or_default();
    let line: Vec<String> = versions
        .iter()
        .map(|(t, ver)| format!("{}={}", short(t), ver.as_str().unwrap_or("")))
        .collect();
    println!("  published: {}", line.join(" "));
    let gws = v["gateways"].as_array().cloned().unwrap_or_default();
    if gws.is_empty() {
        println!("no gateway has connected");
    }
    for g in &gws {
        let state = if g["connected"].as_bool() == Some(true) {
            format!("connected since {}", g["connected_since"])
        } else {
            "disconnected".to_string()
        };
        println!("gateway {} ({state})", g["node_id"].as_str().unwrap_or(""));
        for (t, s) in g["types"].as_object().into_iter().flatten() {
            let current = versions.get(t).and_then(Value::as_str).unwrap_or("");
            let acked = s["acked_version"].as_str().unwrap_or("-");
            let mark = if acked == current { "" } else { " (behind)" };
            println!("  {:<16} acked {acked}{mark}", short(t));
            if let Some(n) = s["last_nack"].as_object() {
                println!(
                    "  {:<16} last NACK of version {}: {}",
                    "",
                    n["rejected_version"].as_str().unwrap_or(""),
                    n["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(0)
}
