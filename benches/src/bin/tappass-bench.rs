//! `tappass-bench`: the load harness. Starts the mock provider, the
//! configurations under test and a real load generator (`oha`), all on
//! 127.0.0.1, and measures them side by side in alternating rounds:
//! saturation throughput, latency at fixed rates, streaming time to first
//! and last byte, the mixed workload (`mixed` module), peak RSS and CPU per
//! 1,000 requests. Every figure is also reported as a ratio to the direct
//! and the Pingora pass-through configurations of the same round.
//!
//! `--memory` runs only the memory measurement (`memory` module): resident
//! memory of TapPass and of the Pingora pass-through each holding many
//! concurrent slow streams, written to `memory.{md,json}`.

#[path = "tappass-bench/memory.rs"]
mod memory;
#[path = "tappass-bench/mixed.rs"]
mod mixed;
#[path = "tappass-bench/setups.rs"]
mod setups;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use setups::Setup;

const KEY: &str = "tp-bench-key";

#[derive(Parser, Debug, Clone)]
#[command(name = "tappass-bench")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Alternating rounds (medians are reported with their spread).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Fixed request rates to measure latency at.
    #[arg(long, value_delimiter = ',', default_values_t = [500u32, 2000])]
    rates: Vec<u32>,
    /// Also measure LiteLLM and Portkey, installing them if needed.
    #[arg(long)]
    peers: bool,
    /// Where results go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// A short run (2 s, 1 round, one rate) to check the harness works.
    #[arg(long)]
    quick: bool,
    /// Seed of the mixed workload's request bodies.
    #[arg(long, default_value_t = 9)]
    seed: u64,
    /// Only measure memory under concurrent slow streams (`memory.md`).
    #[arg(long)]
    memory: bool,
    /// Concurrent slow streams per proxy in the memory measurement.
    #[arg(long, default_value_t = 1000)]
    memory_streams: usize,
    /// Length of each slow stream (one event per second), in seconds.
    #[arg(long, default_value_t = 30)]
    memory_seconds: u64,
}

/// A process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use tappass_testkit::free_port;

fn wait_port(port: u16, what: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not listen on {port}"))
}

fn bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn spawn(cmd: &mut Command, port: u16, what: &str) -> Result<Proc, String> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let p = Proc(child);
    wait_port(port, what, Duration::from_secs(60))?;
    Ok(p)
}

/// A configuration under test.
struct Target {
    name: String,
    /// Base URL of the OpenAI-compatible API (ends in `/v1`).
    base: String,
    /// The proxy process to measure (none for the direct configuration).
    pid: Option<u32>,
    /// Extra request headers this configuration needs.
    headers: Vec<String>,
    _procs: Vec<Proc>,
}

/// `pid` and all its descendants (a peer started through `npx` or a Python
/// launcher runs in child processes).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, s)| s);
            if let Some(ppid) = after
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u32>().ok())
            {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    process_tree(pid)
        .into_iter()
        .map(one_proc_cpu_seconds)
        .sum()
}

fn one_proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, s)| s);
    let f: Vec<&str> = after.split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 100.0
}

/// Current and peak resident memory in MiB of a process and its descendants.
fn proc_rss_mib(pid: u32) -> (f64, f64) {
    process_tree(pid)
        .into_iter()
        .map(one_proc_rss_mib)
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn one_proc_rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn oha_path() -> Result<PathBuf, String> {
    if let Ok(p) = which("oha") {
        return Ok(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    let root = PathBuf::from(home).join(".cache/tappass/tools");
    let local = root.join("bin/oha");
    if local.exists() {
        return Ok(local);
    }
    eprintln!(
        "installing oha 1.16.0 from crates.io into {} (once)…",
        root.display()
    );
    let ok = Command::new("cargo")
        .args([
            "install",
            "oha",
            "--version",
            "1.16.0",
            "--locked",
            "--root",
        ])
        .arg(&root)
        .status()
        .map_err(|e| format!("cargo install oha: {e}"))?
        .success();
    if ok && local.exists() {
        Ok(local)
    } else {
        Err("could not install oha".into())
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

fn chat_body(model: &str, prompt: &str, last: &str, stream: bool) -> String {
    let mut messages = Vec::new();
    if !prompt.is_empty() {
        messages.push(json!({"role": "system", "content": prompt}));
    }
    messages.push(json!({"role": "user", "content": last}));
    json!({"model": model, "stream": stream, "messages": messages}).to_string()
}

/// Text of `n` bytes that reads like prose.
fn text(n: usize) -> String {
    let words =
        "the gateway inspects every prompt and response as it streams and leaves an audit row ";
    words.repeat(n / words.len() + 1)[..n].to_string()
}

/// One oha run: requests/s and latency percentiles (ms).
fn run_oha(
    oha: &Path,
    url: &str,
    headers: &[String],
    body: &str,
    conns: u32,
    rate: Option<u32>,
    secs: u64,
) -> Result<Value, String> {
    let body_file =
        std::env::temp_dir().join(format!("tappass-bench-body-{}.json", std::process::id()));
    std::fs::write(&body_file, body).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(oha);
    cmd.args(["--no-tui", "--output-format", "json", "-z"])
        .arg(format!("{secs}s"))
        .args(["-c", &conns.to_string(), "-m", "POST"])
        .args(["-H", "content-type: application/json"])
        .args(["-H", &format!("authorization: Bearer {KEY}")])
        .arg("-D")
        .arg(&body_file)
        .arg(url);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(q) = rate {
        cmd.args(["-q", &q.to_string()]);
    }
    let out = cmd.output().map_err(|e| format!("oha: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("oha output: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let pct = |p: &str| v["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let total: u64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    Ok(json!({
        "rps": v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        "p50_ms": pct("p50"), "p90_ms": pct("p90"), "p99_ms": pct("p99"),
        "ok": ok, "total": total,
    }))
}

/// Streams with `conns` concurrent clients for `secs`: time to first and
/// last byte (ms, p50 and p99) and streams per second.
async fn stream_probe(
    url: String,
    headers: Vec<String>,
    body: String,
    conns: usize,
    secs: u64,
) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, url, body, headers) =
            (client.clone(), url.clone(), body.clone(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let mut req = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json");
                for h in &headers {
                    if let Some((k, v)) = h.split_once(": ") {
                        req = req.header(k, v);
                    }
                }
                let Ok(resp) = req.body(body.clone()).send().await else {
                    continue;
                };
                let mut stream = resp.bytes_stream();
                let mut first = None;
                let mut done = false;
                use futures_util::StreamExt;
                while let Some(Ok(chunk)) = stream.next().await {
                    first.get_or_insert_with(|| t0.elapsed());
                    if chunk.windows(6).any(|w| w == b"[DONE]") {
                        done = true;
                    }
                }
                if let (Some(f), true) = (first, done) {
                    samples.push((
                        f.as_secs_f64() * 1000.0,
                        t0.elapsed().as_secs_f64() * 1000.0,
                    ));
                }
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let pct = |mut v: Vec<f64>, p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let ttfb: Vec<f64> = all.iter().map(|s| s.0).collect();
    let ttlb: Vec<f64> = all.iter().map(|s| s.1).collect();
    json!({
        "streams": all.len(),
        "streams_per_sec": all.len() as f64 / secs as f64,
        "ttfb_p50_ms": pct(ttfb.clone(), 0.5), "ttfb_p99_ms": pct(ttfb, 0.99),
        "ttlb_p50_ms": pct(ttlb.clone(), 0.5), "ttlb_p99_ms": pct(ttlb, 0.99),
    })
}

fn start_peers(dir: &Path, mock: u16, targets: &mut Vec<Target>, notes: &mut Vec<String>) {
    // LiteLLM proxy in a virtualenv, config only, no database.
    let venv = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/tappass/litellm-venv");
    let litellm = venv.join("bin/litellm");
    if !litellm.exists() {
        eprintln!("installing litellm[proxy] into {}…", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "litellm[proxy]==1.100.5"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            notes.push("LiteLLM could not be installed; not measured.".into());
        }
    }
    if litellm.exists() {
        let port = free_port();
        let cfg = dir.join("litellm.yaml");
        let _ = std::fs::write(
            &cfg,
            format!("model_list:\n  - model_name: mock-gpt\n    litellm_params:\n      model: openai/mock-gpt\n      api_base: http://127.0.0.1:{mock}/v1\n      api_key: sk-mock\ngeneral_settings:\n  master_key: {KEY}\n"),
        );
        match spawn(
            Command::new(&litellm).args(["--config"]).arg(&cfg).args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--num_workers",
                "1",
            ]),
            port,
            "litellm",
        ) {
            Ok(p) => targets.push(Target {
                name: "LiteLLM proxy".into(),
                base: format!("http://127.0.0.1:{port}/v1"),
                pid: Some(p.0.id()),
                headers: vec![],
                _procs: vec![p],
            }),
            Err(e) => notes.push(format!("LiteLLM did not start: {e}")),
        }
    }
    // Portkey gateway through npx, routed to the mock with its own headers.
    let port = free_port();
    match spawn(
        Command::new("npx").args([
            "--yes",
            "@portkey-ai/gateway@1.15.2",
            &format!("--port={port}"),
            "--headless",
        ]),
        port,
        "portkey",
    ) {
        Ok(p) => targets.push(Target {
            name: "Portkey gateway".into(),
            base: format!("http://127.0.0.1:{port}/v1"),
            pid: Some(p.0.id()),
            headers: vec![
                "x-portkey-provider: openai".into(),
                format!("x-portkey-custom-host: http://127.0.0.1:{mock}/v1"),
            ],
            _procs: vec![p],
        }),
        Err(e) => notes.push(format!("Portkey could not run: {e}")),
    }
}

/// The governance pipeline's own cost: every step on against the same
/// gateway with the pipeline off (with and without the audit trail), per
/// round (the configurations of one round ran minutes apart at most), then
/// the median and spread of the rounds.
fn overhead_section(
    md: &mut String,
    args: &Args,
    figures: &BTreeMap<String, BTreeMap<String, Vec<f64>>>,
) {
    let on = Setup::EveryStep.name();
    let bases = [Setup::PipelineOff.name(), Setup::PipelineOffAudited.name()];
    let per_round = |base: &str, key: &str, ratio: bool| -> Vec<f64> {
        let a = figures_get(figures, on, key);
        let b = figures_get(figures, base, key);
        a.iter()
            .zip(&b)
            .map(|(a, b)| if ratio { a / b } else { a - b })
            .collect()
    };
    let mut rows: Vec<(String, String, String, bool)> = Vec::new();
    for rate in &args.rates {
        for p in ["p50", "p99"] {
            rows.push((
                format!("{p}_ms_at_{rate}"),
                format!("added {p} latency ms at {rate} req/s (1 KiB prompt, 1 KiB reply)"),
                if p == "p99" { "< 1 ms" } else { "–" }.into(),
                false,
            ));
        }
    }
    for p in ["p50", "p99"] {
        rows.push((
            format!("ttfb_{p}_ms"),
            format!("added stream time to first byte, {p}, ms"),
            "< 1 ms".into(),
            false,
        ));
    }
    for c in [8, 32] {
        rows.push((
            format!("rps_c{c}"),
            format!("throughput ratio, {c} connections"),
            "≥ 0.7".into(),
            true,
        ));
    }
    rows.push((
        "mixed_rps_c32".into(),
        "throughput ratio, mixed workload, 32 connections".into(),
        "–".into(),
        true,
    ));
    md.push_str(&format!(
        "\n## Pipeline overhead\n\n\"{on}\" against the same gateway with the pipeline off, measured in the same rounds: differences (added milliseconds) and ratios per round, median (min–max). Against \"{}\" it is the whole cost of governance; against \"{}\" it is the cost of the pipeline's steps, the signed, durable audit trail being on in both.\n\n| figure | target | vs {} | vs {} |\n|---|---|---|---|\n",
        bases[0], bases[1], bases[0], bases[1]
    ));
    for (key, label, target, ratio) in rows {
        md.push_str(&format!("| {label} | {target} |"));
        for base in bases {
            let (m, lo, hi) = median_spread(&per_round(base, &key, ratio));
            md.push_str(&format!(" {m:.2} ({lo:.2}–{hi:.2}) |"));
        }
        md.push('\n');
    }
}

fn figures_get(
    f: &BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    name: &str,
    key: &str,
) -> Vec<f64> {
    f.get(name)
        .and_then(|m| m.get(key))
        .cloned()
        .unwrap_or_default()
}

fn median_spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 2;
        args.rounds = 1;
        args.rates = vec![500];
    }
    let result = if args.memory {
        memory::run(&args)
    } else {
        run(&args)
    };
    if let Err(e) = result {
        eprintln!("tappass-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let oha = oha_path()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut notes: Vec<String> = Vec::new();

    let mock_port = free_port();
    let mock = spawn(
        Command::new(bin("tappass-mock-llm")).args([
            "--listen",
            &format!("127.0.0.1:{mock_port}"),
            "--threads",
            "1",
        ]),
        mock_port,
        "tappass-mock-llm",
    )?;
    let mut targets = vec![Target {
        name: "direct".into(),
        base: format!("http://127.0.0.1:{mock_port}/v1"),
        pid: None,
        headers: vec![],
        _procs: vec![],
    }];
    let (pt, pt_port) = setups::start_passthrough(mock_port)?;
    targets.push(Target {
        name: "Pingora pass-through".into(),
        base: format!("http://127.0.0.1:{pt_port}/v1"),
        pid: Some(pt.0.id()),
        headers: vec![],
        _procs: vec![pt],
    });
    for setup in [
        Setup::PipelineOff,
        Setup::PipelineOffAudited,
        Setup::EveryStep,
    ] {
        let (p, port) = setups::start_gateway(dir.path(), mock_port, setup)?;
        targets.push(Target {
            name: setup.name().into(),
            base: format!("http://127.0.0.1:{port}/v1"),
            pid: Some(p.0.id()),
            headers: vec![],
            _procs: vec![p],
        });
        notes.push(setup.describe().into());
    }
    if args.peers {
        start_peers(dir.path(), mock_port, &mut targets, &mut notes);
    } else {
        notes.push(
            "LiteLLM and Portkey were not measured (run with --peers to install and include them)."
                .into(),
        );
    }

    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let w1k = chat_body("mock-gpt", "", &text(1024), false);
    let w16k = chat_body("mock-gpt", &text(16 * 1024), "Answer in one line.", false);
    let stream = chat_body(
        "mock-gpt",
        "",
        &format!("MOCK:{{\"reply\":\"{}\",\"chunk_size\":26}}", text(1024)),
        true,
    );
    let mixed_bodies = Arc::new(mixed::bodies("mock-gpt", args.seed));
    // name -> figure -> values over rounds
    let mut figures: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut record = |t: &str, k: &str, v: f64| {
        figures
            .entry(t.to_string())
            .or_default()
            .entry(k.to_string())
            .or_default()
            .push(v);
    };
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        let n = targets.len();
        for i in 0..n {
            let t = &targets[(i + round) % n];
            let url = format!("{}/chat/completions", t.base);
            let cpu0 = t.pid.map(proc_cpu_seconds);
            let mut requests: f64 = 0.0;
            for conns in [8u32, 32] {
                let r = run_oha(&oha, &url, &t.headers, &w1k, conns, None, args.seconds)?;
                requests += r["total"].as_f64().unwrap_or(0.0);
                record(
                    &t.name,
                    &format!("rps_c{conns}"),
                    r["rps"].as_f64().unwrap_or(0.0),
                );
                record(
                    &t.name,
                    &format!("ok_share_c{conns}"),
                    r["ok"].as_f64().unwrap_or(0.0) / r["total"].as_f64().unwrap_or(1.0).max(1.0),
                );
            }
            for &rate in &args.rates {
                let r = run_oha(&oha, &url, &t.headers, &w1k, 32, Some(rate), args.seconds)?;
                requests += r["total"].as_f64().unwrap_or(0.0);
                for p in ["p50_ms", "p90_ms", "p99_ms"] {
                    record(
                        &t.name,
                        &format!("{p}_at_{rate}"),
                        r[p].as_f64().unwrap_or(f64::NAN),
                    );
                }
            }
            let r = run_oha(&oha, &url, &t.headers, &w16k, 8, None, args.seconds)?;
            requests += r["total"].as_f64().unwrap_or(0.0);
            record(&t.name, "rps_16k_c8", r["rps"].as_f64().unwrap_or(0.0));
            record(
                &t.name,
                "p99_ms_16k_c8",
                r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            );
            let s = rt.block_on(stream_probe(
                url.clone(),
                t.headers.clone(),
                stream.clone(),
                8,
                args.seconds,
            ));
            requests += s["streams"].as_f64().unwrap_or(0.0);
            for k in [
                "ttfb_p50_ms",
                "ttfb_p99_ms",
                "ttlb_p50_ms",
                "ttlb_p99_ms",
                "streams_per_sec",
            ] {
                record(&t.name, k, s[k].as_f64().unwrap_or(f64::NAN));
            }
            // The mixed workload, with the harness's own client (one
            // interleaved sample set per run): saturation at 32
            // connections, then latency at the first fixed rate.
            let m = rt.block_on(mixed::probe(
                url.clone(),
                t.headers.clone(),
                mixed_bodies.clone(),
                32,
                None,
                args.seconds,
            ));
            requests += m["total"].as_f64().unwrap_or(0.0);
            for (k, key) in [
                ("rps", "mixed_rps_c32"),
                ("p50_ms", "mixed_p50_ms_c32"),
                ("p99_ms", "mixed_p99_ms_c32"),
                ("plain_p50_ms", "mixed_plain_p50_ms_c32"),
                ("secret_p50_ms", "mixed_secret_p50_ms_c32"),
                ("tool_p50_ms", "mixed_tool_p50_ms_c32"),
            ] {
                record(&t.name, key, m[k].as_f64().unwrap_or(f64::NAN));
            }
            let share = |m: &Value, a: &str, b: &str| {
                m[a].as_f64().unwrap_or(0.0) / m[b].as_f64().unwrap_or(0.0).max(1.0)
            };
            record(&t.name, "mixed_ok_share_c32", share(&m, "ok", "total"));
            record(
                &t.name,
                "mixed_secret_refused_share_c32",
                share(&m, "secret_refused", "secret_total"),
            );
            record(
                &t.name,
                "mixed_tool_reply_share_c32",
                share(&m, "tool_call_replies", "tool_total"),
            );
            if let Some(&rate) = args.rates.first() {
                let m = rt.block_on(mixed::probe(
                    url.clone(),
                    t.headers.clone(),
                    mixed_bodies.clone(),
                    32,
                    Some(rate),
                    args.seconds,
                ));
                requests += m["total"].as_f64().unwrap_or(0.0);
                for p in ["p50_ms", "p90_ms", "p99_ms"] {
                    record(
                        &t.name,
                        &format!("mixed_{p}_at_{rate}"),
                        m[p].as_f64().unwrap_or(f64::NAN),
                    );
                }
            }
            if let (Some(pid), Some(c0)) = (t.pid, cpu0) {
                record(
                    &t.name,
                    "cpu_s_per_1000_req",
                    (proc_cpu_seconds(pid) - c0) * 1000.0 / requests.max(1.0),
                );
                record(&t.name, "peak_rss_mib", proc_rss_mib(pid).1);
            }
        }
    }
    for t in &targets {
        for key in ["ok_share_c8", "ok_share_c32", "mixed_ok_share_c32"] {
            let worst = figures_get(&figures, &t.name, key)
                .into_iter()
                .fold(f64::INFINITY, f64::min);
            let expected = if key.starts_with("mixed") && t.name == Setup::EveryStep.name() {
                0.89 // the secret-carrying 10% are refused
            } else {
                0.99
            };
            if worst < expected {
                notes.push(format!("{}: in at least one round only {:.0}% of the `{key}` requests succeeded, so its figures for that run measure refusals or errors.", t.name, worst * 100.0));
            }
        }
        let streams = figures_get(&figures, &t.name, "streams_per_sec");
        if streams.iter().all(|v| *v == 0.0) {
            notes.push(format!("{}: no stream completed (its streaming path failed against the mock), so its streaming figures are missing.", t.name));
        }
    }
    drop(mock);
    report(
        args,
        &targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        &figures,
        &notes,
    )
}

fn report(
    args: &Args,
    names: &[String],
    figures: &BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    notes: &[String],
) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let get = |n: &str, k: &str| -> (f64, f64, f64) {
        figures
            .get(n)
            .and_then(|f| f.get(k))
            .map_or((f64::NAN, f64::NAN, f64::NAN), |v| median_spread(v))
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::new();
    md.push_str(&format!(
        "# Load benchmark\n\nCommand: `make bench` (`tappass-bench --seconds {} --rounds {}{}`). Machine: {cpus} cores, shared and noisy; the mock provider, the proxy under test and `oha` share the cores. Medians of {} alternating rounds, with min–max.\n\n",
        args.seconds,
        args.rounds,
        if args.peers { " --peers" } else { "" },
        args.rounds
    ));
    md.push_str(&format!("Workloads: 1 KiB prompt → 1 KiB echoed reply (non-streaming), 16 KiB prompt → short reply, and a streamed 1 KiB reply in ~40 chunks. The mock answers instantly and deterministically.\n\nMixed workload: 1 KiB prompts of which 10% carry a secret (an AWS key pair, a GitHub, Slack or Stripe token, with random characters) and 5% a tool call (the definition of a catalog tool, an earlier call of it and its result in the history, and a reply that calls it again), drawn deterministically from seed {} in a fixed order of 1,000 bodies. oha sends one body per run, so this workload is driven by the harness's own client (reqwest, HTTP/1.1 keep-alive): all three kinds interleave on the same connections and the percentiles are of one combined sample set. At the fixed rate the client is open-loop and latency counts from each request's scheduled start. Its figures compare configurations with each other; they are not comparable with the oha rows (a different client). Memory under 1,000 concurrent slow streams is measured separately: [memory.md](memory.md) (`make bench-memory`).\n\n", args.seed));
    let rows: Vec<(String, String)> = {
        let mut r = vec![
            (
                "rps_c8".to_string(),
                "requests/s, 8 connections".to_string(),
            ),
            (
                "rps_c32".to_string(),
                "requests/s, 32 connections".to_string(),
            ),
        ];
        for rate in &args.rates {
            r.push((
                format!("p50_ms_at_{rate}"),
                format!("p50 ms at {rate} req/s"),
            ));
            r.push((
                format!("p90_ms_at_{rate}"),
                format!("p90 ms at {rate} req/s"),
            ));
            r.push((
                format!("p99_ms_at_{rate}"),
                format!("p99 ms at {rate} req/s"),
            ));
        }
        r.extend([
            (
                "rps_16k_c8".to_string(),
                "requests/s, 16 KiB prompts, 8 connections".to_string(),
            ),
            (
                "ttfb_p50_ms".to_string(),
                "stream: time to first byte p50 ms".to_string(),
            ),
            (
                "ttfb_p99_ms".to_string(),
                "stream: time to first byte p99 ms".to_string(),
            ),
            (
                "ttlb_p50_ms".to_string(),
                "stream: time to last byte p50 ms".to_string(),
            ),
            (
                "cpu_s_per_1000_req".to_string(),
                "proxy CPU seconds per 1,000 requests".to_string(),
            ),
            ("peak_rss_mib".to_string(), "proxy peak RSS MiB".to_string()),
            (
                "mixed_rps_c32".to_string(),
                "mixed: requests/s, 32 connections".to_string(),
            ),
            (
                "mixed_p50_ms_c32".to_string(),
                "mixed: p50 ms, 32 connections".to_string(),
            ),
            (
                "mixed_p99_ms_c32".to_string(),
                "mixed: p99 ms, 32 connections".to_string(),
            ),
            (
                "mixed_secret_p50_ms_c32".to_string(),
                "mixed: p50 ms of the secret-carrying 10%".to_string(),
            ),
            (
                "mixed_tool_p50_ms_c32".to_string(),
                "mixed: p50 ms of the tool-call 5%".to_string(),
            ),
            (
                "mixed_secret_refused_share_c32".to_string(),
                "mixed: share of secret prompts refused (403)".to_string(),
            ),
            (
                "mixed_tool_reply_share_c32".to_string(),
                "mixed: share of tool-call prompts answered with a tool call".to_string(),
            ),
        ]);
        if let Some(rate) = args.rates.first() {
            for p in ["p50", "p90", "p99"] {
                r.push((
                    format!("mixed_{p}_ms_at_{rate}"),
                    format!("mixed: {p} ms at {rate} req/s"),
                ));
            }
        }
        r
    };
    md.push_str("| figure |");
    for n in names {
        md.push_str(&format!(" {n} |"));
    }
    md.push_str("\n|---|");
    for _ in names {
        md.push_str("---|");
    }
    md.push('\n');
    for (key, label) in &rows {
        md.push_str(&format!("| {label} |"));
        for n in names {
            let (m, lo, hi) = get(n, key);
            if m.is_nan() {
                md.push_str(" – |");
            } else if lo == hi {
                md.push_str(&format!(" {m:.2} |"));
            } else {
                md.push_str(&format!(" {m:.2} ({lo:.2}–{hi:.2}) |"));
            }
        }
        md.push('\n');
    }
    md.push_str("\nRatios (median of the figure divided by the same figure of the reference configuration):\n\n| figure | reference |");
    for n in names.iter().skip(1) {
        md.push_str(&format!(" {n} |"));
    }
    md.push_str("\n|---|---|");
    for _ in names.iter().skip(1) {
        md.push_str("---|");
    }
    md.push('\n');
    for key in [
        "rps_c8",
        "rps_c32",
        "ttfb_p50_ms",
        "ttlb_p50_ms",
        "mixed_rps_c32",
        "mixed_p99_ms_c32",
    ] {
        for reference in ["direct", "Pingora pass-through"] {
            md.push_str(&format!("| {key} | {reference} |"));
            let base = get(reference, key).0;
            for n in names.iter().skip(1) {
                let v = get(n, key).0;
                md.push_str(&format!(" {:.2} |", v / base));
            }
            md.push('\n');
        }
    }
    overhead_section(&mut md, args, figures);
    md.push_str("\n![requests per second](load.svg)\n\n");
    for n in notes {
        md.push_str(&format!("- {n}\n"));
    }
    let json = json!({"args": {"seconds": args.seconds, "rounds": args.rounds, "rates": args.rates, "peers": args.peers, "seed": args.seed},
        "cpus": cpus, "configurations": names, "figures": figures, "notes": notes});
    let write = |name: &str, data: &[u8]| -> Result<(), String> {
        let path = args.out.join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(data))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        "load.json",
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    write("load.md", md.as_bytes())?;
    write(
        "load.svg",
        bar_chart(names, |n| get(n, "rps_c32").0).as_bytes(),
    )?;
    println!("{md}");
    Ok(())
}

/// A horizontal bar chart of requests/s at 32 connections, as SVG.
fn bar_chart(names: &[String], value: impl Fn(&str) -> f64) -> String {
    let vals: Vec<f64> = names.iter().map(|n| value(n)).collect();
    let max = vals
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let (w, bar_h, label_w) = (720.0, 28.0, 260.0);
    let h = 40.0 + bar_h * 1.4 * names.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13"><text x="10" y="20" font-weight="bold">requests/s, 1 KiB chat, 32 connections (median)</text>"#
    );
    for (i, (n, v)) in names.iter().zip(&vals).enumerate() {
        let y = 35.0 + i as f64 * bar_h * 1.4;
        let len = if v.is_finite() {
            (w - label_w - 80.0) * v / max
        } else {
            0.0
        };
        svg.push_str(&format!(
            r##"<text x="10" y="{}">{}</text><rect x="{label_w}" y="{y}" width="{len:.1}" height="{bar_h}" fill="#3b6ea5"/><text x="{:.1}" y="{}">{:.0}</text>"##,
            y + bar_h * 0.7,
            n.replace('&', "&amp;").replace('<', "&lt;"),
            label_w + len + 6.0,
            y + bar_h * 0.7,
            v
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
