//! `tappass budget show`: spent, reserved and remaining per scope and
//! limit, with the time each window resets, read from a gateway's admin
//! listener (`GET /budgets`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct BudgetArgs {
    #[command(subcommand)]
    pub command: BudgetCommand,
}

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Spent, reserved, remaining and reset time of every limit.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Admin URL of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub gateway: String,
    /// Only this scope (`org:acme`, `agent:support-bot`, …); a trailing
    /// `*` matches a prefix (`agent:*`).
    #[arg(long)]
    pub scope: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BudgetArgs) -> Result<u8> {
    match &args.command {
        BudgetCommand::Show(a) => show(a),
    }
}

fn scope_matches(filter: Option<&str>, scope: &str) -> bool {
    match filter {
        None => true,
        Some(f) => match f.strip_suffix('*') {
            Some(prefix) => scope.starts_with(prefix),
            None => scope == f,
        },
    }
}

/// A limit's amount as people read it: dollars for spend.
fn amount(unit: &str, v: u64) -> String {
    if unit == "micro_dollars" {
        format!("${:.6}", v as f64 / 1e6)
    } else {
        v.to_string()
    }
}

fn reset_time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

fn show(a: &ShowArgs) -> Result<u8> {
    let url = format!("{}/budgets", a.gateway.trim_end_matches('/'));
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(3))
        .build()?;
    let r = http
        .get(&url)
        .send()
        .with_context(|| format!("cannot reach the gateway admin listener at {url}"))?;
    if r.status() == 404 {
        bail!("budgets are off on the gateway at {}", a.gateway);
    }
    if !r.status().is_success() {
        bail!("{url}: HTTP {}", r.status());
    }
    let mut v: Value = r.json().with_context(|| format!("{url}: not JSON"))?;
    if let Some(lines) = v["limits"].as_array_mut() {
        lines.retain(|l| scope_matches(a.scope.as_deref(), l["scope"].as_str().unwrap_or("")));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let lines = v["limits"].as_array().cloned().unwrap_or_default();
    println!(
        "time zone {}, counters {}",
        v["time_zone"].as_str().unwrap_or("?"),
        if v["persistent"].as_bool() == Some(true) {
            "persisted"
        } else {
            "in memory"
        }
    );
    if lines.is_empty() {
        println!(
            "no limit applies{}",
            a.scope
                .as_ref()
                .map(|s| format!(" to {s}"))
                .unwrap_or_default()
        );
        return Ok(0);
    }
    println!(
        "{:<28} {:<28} {:>14} {:>14} {:>14} {:>14}  {:<20}  fleet (lease / fleet spent)",
        "scope", "limit", "max", "spent", "reserved", "remaining", "resets"
    );
    for l in lines {
        let unit = l["metric"].as_str().unwrap_or("");
        let n = |k: &str| amount(unit, l[k].as_u64().unwrap_or(0));
        let fleet = match (l["lease"].as_u64(), l["fleet_committed"].as_u64()) {
            (Some(lease), Some(fleet)) => {
                format!("{} / {}", amount(unit, lease), amount(unit, fleet))
            }
            _ => "-".to_string(),
        };
        println!(
            "{:<28} {:<28} {:>14} {:>14} {:>14} {:>14}  {:<20}  {fleet}",
            l["scope"].as_str().unwrap_or(""),
            l["limit"].as_str().unwrap_or(""),
            n("max"),
            n("used"),
            n("reserved"),
            n("remaining"),
            reset_time(l["resets_at"].as_i64().unwrap_or(0)),
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_filters() {
        assert!(scope_matches(None, "org:a"));
        assert!(scope_matches(Some("agent:*"), "agent:bot"));
        assert!(!scope_matches(Some("agent:*"), "org:bot"));
        assert!(scope_matches(Some("org:a"), "org:a"));
        assert!(!scope_matches(Some("org:a"), "org:ab"));
    }

    #[test]
    fn amounts_and_times() {
        assert_eq!(amount("micro_dollars", 1_500_000), "$1.500000");
        assert_eq!(amount("tokens", 42), "42");
        assert_eq!(reset_time(0), "1970-01-01T00:00:00Z");
    }
}
