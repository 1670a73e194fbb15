//! `tappass-bench-audit`: what the audit trail costs.
//!
//! Measures, side by side in one run on the real RocksDB WAL with synced
//! writes: rows per second the writer sustains with checkpoint signing and
//! with per-row signing, CPU seconds per row across the process, and the
//! request-path cost of one call (building its record and queueing it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tappass_audit::{
    AuditKey, AuditRecord, AuditWal, Decision, Latency, SigningMode, StepDecision, UsageRecord,
    WalConfig,
};

#[derive(Parser, Debug)]
#[command(name = "tappass-bench-audit")]
struct Args {
    /// Rows per configuration.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Threads producing rows.
    #[arg(long, default_value_t = 2)]
    producers: u64,
    /// Rounds per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the WALs are written (a real disk, not tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A row like the gateway writes for a chat call.
fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::new("gw-bench", &format!("tp-6b02-{i:x}"));
    r.agent_id = Some("team-a".into());
    r.started_at_ms = 1_763_700_000_000 + i;
    r.ended_at_ms = r.started_at_ms + 420;
    r.endpoint = "chat_completions".into();
    r.wire_format = "openai".into();
    r.stream = i.is_multiple_of(2);
    r.model = Some("gpt-4o".into());
    r.provider = Some("openai".into());
    r.status = 200;
    r.decision = Decision::Allow;
    for (step, aspect) in [
        ("verify_identity", "identity"),
        ("validate_request", "request"),
        ("route_model", "network"),
        ("call_upstream", "network"),
    ] {
        r.step_decisions.push(StepDecision {
            step: step.into(),
            decision: "allow".into(),
            evidence: json!({"provider": "openai", "status": 200}),
            aspect: aspect.into(),
            provenance: "config".into(),
        });
    }
    r.usage = Some(UsageRecord {
        input_tokens: 512,
        output_tokens: 256,
        cached_input_tokens: 0,
    });
    r.latency = Latency {
        total_ms: 420,
        upstream_ms: Some(415),
        ttft_ms: Some(120),
    };
    r.compliance_tags = vec!["OWASP-LLM:LLM01".into(), "EU-AI-ACT:Art12".into()];
    r
}

/// CPU seconds used by this process so far (all threads).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, s)| s);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// CPU seconds of the audit writer thread (found by its name).
fn writer_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == "tappass-audit-w" {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, s)| s);
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks: f64 = [11, 12]
                .iter()
                .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
                .sum();
            return ticks / 100.0;
        }
    }
    0.0
}

struct Run {
    rows_per_sec: f64,
    cpu_us_per_row: f64,
    writer_us_per_row: f64,
}

fn run(dir: &std::path::Path, signing: SigningMode, rows: u64, producers: u64) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = WalConfig::new(dir, "gw-bench");
    cfg.signing = signing;
    let wal = std::sync::Arc::new(AuditWal::open(cfg, AuditKey::generate()).expect("open WAL"));
    let cpu0 = process_cpu_seconds();
    let t0 = Instant::now();
    let per = rows / producers;
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::with_capacity(per as usize);
                for i in 0..per {
                    acks.push(wal.append_blocking(record(p * per + i)).expect("append"));
                }
                for a in acks {
                    a.blocking_recv().expect("ack").expect("written");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("producer");
    }
    let elapsed = t0.elapsed();
    let cpu = process_cpu_seconds() - cpu0;
    let writer_cpu = writer_cpu_seconds();
    let total = per * producers;
    std::sync::Arc::try_unwrap(wal)
        .ok()
        .expect("sole owner")
        .close();
    Run {
        rows_per_sec: total as f64 / elapsed.as_secs_f64(),
        cpu_us_per_row: cpu * 1e6 / total as f64,
        writer_us_per_row: writer_cpu * 1e6 / total as f64,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let args = Args::parse();
    let base = args.dir.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".cache/tappass/bench-audit")
    });
    let modes = [
        (
            "checkpoint (every 1000 rows / 1 s)",
            SigningMode::Checkpoint {
                every_rows: 1000,
                every: Duration::from_secs(1),
            },
        ),
        ("per-row Ed25519", SigningMode::PerRow),
    ];
    let mut results: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    // Alternate the configurations round by round so that noise hits both.
    for _ in 0..args.rounds {
        for (i, (_, mode)) in modes.iter().enumerate() {
            results[i].push(run(
                &base.join(format!("m{i}")),
                *mode,
                args.rows,
                args.producers,
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    let key = AuditKey::generate();
    let t = Instant::now();
    let n = 20_000u32;
    for i in 0..n {
        std::hint::black_box(key.sign(&i.to_be_bytes()));
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;

    println!(
        "Audit WAL, synced writes, {} rows x {} rounds, {} producers",
        args.rows, args.rounds, args.producers
    );
    println!();
    println!("| signing | rows/s (median, min–max) | writer CPU µs per row | rows/s one writer core sustains | CPU µs per row, all threads | request path CPU µs per call | rows/s ratio to checkpoint |");
    println!("|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    let base_rate = median(results[0].iter().map(|r| r.rows_per_sec).collect()).0;
    for (i, (name, _)) in modes.iter().enumerate() {
        let rate = median(results[i].iter().map(|r| r.rows_per_sec).collect());
        let cpu = median(results[i].iter().map(|r| r.cpu_us_per_row).collect());
        // The callers' side: building the record and queueing it (all CPU
        // that is not the writer's).
        let enq = median(
            results[i]
                .iter()
                .map(|r| r.cpu_us_per_row - r.writer_us_per_row)
                .collect(),
        );
        let writer = median(results[i].iter().map(|r| r.writer_us_per_row).collect());
        let per_core = if writer.0 > 0.0 {
            1e6 / writer.0
        } else {
            f64::NAN
        };
        println!(
            "| {name} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
            rate.0,
            rate.1,
            rate.2,
            writer.0,
            per_core,
            cpu.0,
            enq.0,
            rate.0 / base_rate
        );
        json_rows.push(
            json!({"signing": name, "rows_per_sec": rate.0, "rows_per_sec_min": rate.1,
            "rows_per_sec_max": rate.2, "writer_cpu_us_per_row": writer.0,
            "rows_per_writer_core_sec": per_core, "cpu_us_per_row": cpu.0, "request_path_us": enq.0,
            "ratio_to_checkpoint": rate.0 / base_rate}),
        );
    }
    println!();
    println!("Ed25519 signature alone: {sign_us:.1} µs");
    if let Some(path) = args.json {
        let doc = json!({"rows": args.rows, "rounds": args.rounds, "producers": args.producers,
            "results": json_rows, "ed25519_sign_us": sign_us});
        if let Err(e) = std::fs::write(
            &path,
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        ) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
