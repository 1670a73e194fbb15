//! `tappass-bench-micro-report`: writes `benches/results/micro.md` from the
//! estimates criterion left under `$CARGO_TARGET_DIR/criterion` after
//! `make bench-micro` (`cargo bench -p tappass-benches --bench NAME`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(name = "tappass-bench-micro-report")]
struct Args {
    /// Criterion's output directory (default: `$CARGO_TARGET_DIR/criterion`).
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// The Markdown file to write.
    #[arg(long, default_value = "benches/results/micro.md")]
    out: PathBuf,
}

/// One benchmark: its bench target, criterion id and what it measures.
struct Item {
    bench: &'static str,
    id: &'static str,
    what: &'static str,
}

const ITEMS: &[Item] = &[
    Item { bench: "detectors", id: "detectors/scan_block_64KiB_mixed_full_rules", what: "block scan of 64 KiB mixed text, full rule set (PII, secrets, injection, exfiltration)" },
    Item { bench: "detectors", id: "detectors/stream_64B_chunks_64KiB_mixed_full_rules", what: "streaming scanner: 64 KiB mixed text fed in 64-byte chunks (≈1,024 `feed` calls + `finish` on a fresh scanner; creating it is not timed)" },
    Item { bench: "detectors", id: "detectors_build/rule_set_compile_full", what: "compile the full rule set (once per process)" },
    Item { bench: "tokens", id: "tokens/verify_ed25519_token", what: "verify a capability token (EdDSA JWT, two keys trusted, no revocations)" },
    Item { bench: "tokens", id: "tokens/verify_ed25519_token_11k_revocations", what: "the same with 10,000 revoked token ids and 1,000 revoked sandboxes" },
    Item { bench: "tokens", id: "tokens/reject_bad_signature", what: "reject a token whose signature was altered" },
    Item { bench: "rego", id: "rego/tool_constraints_entrypoint_allow", what: "one entry point (`tool_constraints.decision`), allowed refund" },
    Item { bench: "rego", id: "rego/tool_constraints_entrypoint_deny", what: "one entry point, refund above the ceiling (deny)" },
    Item { bench: "rego", id: "rego/decide_all_entrypoints_allow", what: "`decide`: both entry points of `refund-bot`, allow" },
    Item { bench: "rego", id: "rego/decide_all_entrypoints_require_approval", what: "`decide`, refund above the approval threshold" },
    Item { bench: "rego", id: "rego/decide_all_entrypoints_unconstrained_tool", what: "`decide`, a tool without constraints" },
    Item { bench: "rego", id: "rego/prepare_per_snapshot", what: "`PreparedRego::new` (parse the modules, load `data.policy`; once per snapshot)" },
    Item { bench: "snapshot", id: "snapshot/compose_state_1_agent", what: "`GatewayState::compose` with one pushed policy" },
    Item { bench: "snapshot", id: "snapshot/verify_build_swap_1_agent", what: "verify the signed policy + compose + `ArcSwap::store`, one agent" },
    Item { bench: "snapshot", id: "snapshot/verify_build_swap_4_agents", what: "the same for the four agents of the reference tree" },
    Item { bench: "snapshot", id: "snapshot/load_per_call", what: "the per-call `ArcSwap` load" },
    Item { bench: "audit", id: "audit/row_build", what: "`CallRecord::to_audit_record` (six step decisions)" },
    Item { bench: "audit", id: "audit/row_build_hash_checkpoint_mode", what: "row build + JSON + hash into the chain (`seal_encoded`, default checkpoint signing)" },
    Item { bench: "audit", id: "audit/row_build_hash_sign_per_row", what: "row build + JSON + hash + Ed25519 signature (`signing: per_row`)" },
    Item { bench: "audit_wal", id: "audit_wal/append_one_row_until_durable", what: "WAL append of one row until acknowledged (one synced RocksDB write)" },
    Item { bench: "audit_wal", id: "audit_wal/append_256_rows_until_durable", what: "WAL append of 256 rows until all are acknowledged (group commit)" },
    Item { bench: "budget", id: "budget/reserve_settle_in_memory", what: "reserve + settle over four counters (org tokens/day and dollars/month, agent requests/minute, API-key tokens/day), in-memory ledger" },
    Item { bench: "budget", id: "budget/reserve_settle_rocksdb", what: "the same with counters persisted by the RocksDB writer thread" },
    Item { bench: "budget", id: "budget/prompt_estimate_1KiB_bytes", what: "prompt estimate of a 1 KiB chat body: byte bound / 3-bytes-per-token estimate (what a call pays)" },
    Item { bench: "budget", id: "budget/prompt_estimate_1KiB_o200k", what: "the real `o200k_base` count (only when a limit is within reach of the byte bound)" },
];

fn human_time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

struct Estimate {
    median_ns: f64,
    lo_ns: f64,
    hi_ns: f64,
    throughput: Option<String>,
}

fn read(dir: &Path, id: &str) -> Option<Estimate> {
    let base = dir.join(id).join("new");
    let est: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("estimates.json")).ok()?).ok()?;
    let bench: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("benchmark.json")).ok()?).ok()?;
    let m = &est["median"];
    let median_ns = m["point_estimate"].as_f64()?;
    let throughput = if let Some(b) = bench["throughput"]["Bytes"].as_f64() {
        Some(format!("{:.1} MB/s", b / (median_ns / 1e9) / 1e6))
    } else {
        bench["throughput"]["Elements"]
            .as_f64()
            .map(|e| format!("{:.0} rows/s", e / (median_ns / 1e9)))
    };
    Some(Estimate {
        median_ns,
        lo_ns: m["confidence_interval"]["lower_bound"].as_f64()?,
        hi_ns: m["confidence_interval"]["upper_bound"].as_f64()?,
        throughput,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = args.criterion.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"))
            .join("criterion")
    });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mut md = String::new();
    md.push_str("# Micro-benchmarks\n\n");
    md.push_str(&format!(
        "Machine: {cpus} cores (`nproc`), {cpu}; shared with other work, so figures are noisy. \
         Criterion, release profile, 1 s warm-up, 3 s measurement, 20 samples (10 for the rule-set compile). \
         Median with its 95% confidence interval.\n\n\
         Reproduce: `make bench-micro` (all, then this file is rewritten by `tappass-bench-micro-report`), \
         or one at a time: `cargo bench -p tappass-benches --bench NAME` with NAME in detectors, tokens, rego, snapshot, audit, budget.\n\n"
    ));
    let mut missing = Vec::new();
    let mut current = "";
    for it in ITEMS {
        if it.bench != current {
            current = it.bench;
            let bench = if it.bench == "audit_wal" {
                "audit"
            } else {
                it.bench
            };
            md.push_str(&format!(
                "\n## `{}` (`cargo bench -p tappass-benches --bench {bench}`)\n\n| benchmark | what | median | 95% CI | throughput |\n|---|---|---:|---:|---:|\n",
                it.bench
            ));
        }
        match read(&dir, it.id) {
            Some(e) => md.push_str(&format!(
                "| `{}` | {} | {} | {} – {} | {} |\n",
                it.id,
                it.what,
                human_time(e.median_ns),
                human_time(e.lo_ns),
                human_time(e.hi_ns),
                e.throughput.unwrap_or_else(|| "–".into())
            )),
            None => {
                missing.push(it.id);
                md.push_str(&format!("| `{}` | {} | not run | | |\n", it.id, it.what));
            }
        }
    }
    md.push_str(&format!("\n{}\n", include_str!("../micro-notes.md")));
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{md}");
    if !missing.is_empty() {
        eprintln!(
            "not found under {}: {} (run their benches first)",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}
