//! `tappass-bench --memory`: resident memory of a proxy holding many
//! concurrent slow streams. The mock provider streams one event per second
//! for about `--memory-seconds`; the proxies under test (TapPass with every
//! guardrail and the audit trail on, TapPass with the pipeline off, and the
//! Pingora pass-through) each carry `--memory-streams` of them at the same
//! time. Each proxy's VmRSS is sampled while all its streams are open.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::setups::{start_gateway, start_passthrough, Setup};
use super::{bin, chat_body, free_port, spawn, Args, Proc, KEY};

/// VmRSS and VmHWM of one process, in KiB.
fn rss_hwm_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

struct Subject {
    name: &'static str,
    url: String,
    pid: u32,
    _proc: Proc,
}

/// Progress of one subject's streams.
#[derive(Default)]
struct Counters {
    /// Streams whose first event arrived.
    open: AtomicUsize,
    /// Streams open right now (first event arrived, not ended).
    live: AtomicUsize,
    /// Streams that ended with `[DONE]`.
    completed: AtomicUsize,
    /// Streams that ended otherwise (error status, broken stream).
    failed: AtomicUsize,
}

/// Warm a proxy up (connection pools, allocator arenas, lazily built state)
/// with a few ordinary and streamed calls before its idle RSS is read.
async fn warm_up(client: &reqwest::Client, url: &str, model: &str) {
    for stream in [false, true, false, true] {
        let body = chat_body(model, "", "warm-up call", stream);
        if let Ok(r) = client
            .post(url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            let _ = r.bytes().await;
        }
    }
}

async fn one_stream(client: reqwest::Client, url: String, body: String, c: Arc<Counters>) {
    let resp = client
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let Ok(resp) = resp else {
        c.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if !resp.status().is_success() {
        c.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut stream = resp.bytes_stream();
    let mut first = true;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            if !first {
                c.live.fetch_sub(1, Ordering::Relaxed);
            }
            c.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if first && !chunk.is_empty() {
            first = false;
            c.open.fetch_add(1, Ordering::Relaxed);
            c.live.fetch_add(1, Ordering::Relaxed);
        }
        tail.extend_from_slice(&chunk);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    if !first {
        c.live.fetch_sub(1, Ordering::Relaxed);
    }
    if tail.windows(6).any(|w| w == b"[DONE]") {
        c.completed.fetch_add(1, Ordering::Relaxed);
    } else {
        c.failed.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn run(args: &Args) -> Result<(), String> {
    let n = args.memory_streams;
    let secs = args.memory_seconds.max(5);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mock_port = free_port();
    let _mock = spawn(
        Command::new(bin("tappass-mock-llm")).args([
            "--listen",
            &format!("127.0.0.1:{mock_port}"),
            "--threads",
            "2",
        ]),
        mock_port,
        "tappass-mock-llm",
    )?;
    let mut subjects = Vec::new();
    for setup in [Setup::EveryStep, Setup::PipelineOff] {
        let (p, port) = start_gateway(dir.path(), mock_port, setup)?;
        subjects.push(Subject {
            name: setup.name(),
            url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
            pid: p.0.id(),
            _proc: p,
        });
    }
    let (pt, pt_port) = start_passthrough(mock_port)?;
    subjects.push(Subject {
        name: "Pingora pass-through",
        url: format!("http://127.0.0.1:{pt_port}/v1/chat/completions"),
        pid: pt.0.id(),
        _proc: pt,
    });

    // One event per second: the role event, `secs - 3` text chunks of 8
    // characters, the finish event and `[DONE]`.
    let chunks = (secs - 3) as usize;
    let reply: String = "slow 1s ".repeat(chunks).chars().take(chunks * 8).collect();
    let script = json!({"reply": reply, "chunk_size": 8, "chunk_delay_ms": 1000}).to_string();
    let body = chat_body("mock-gpt", "", &format!("MOCK:{script}"), true);

    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs + 45);
    let results = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(secs + 40))
            .build()
            .map_err(|e| e.to_string())?;
        let mut idle = Vec::new();
        for s in &subjects {
            warm_up(&client, &s.url, "mock-gpt").await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for s in &subjects {
            idle.push(rss_hwm_kib(s.pid));
        }
        // All subjects' streams open together, in waves of 100 per subject.
        let counters: Vec<Arc<Counters>> = subjects
            .iter()
            .map(|_| Arc::new(Counters::default()))
            .collect();
        let mut tasks = Vec::new();
        let t_open = Instant::now();
        let mut launched = 0;
        while launched < n {
            let wave = (n - launched).min(100);
            for (s, c) in subjects.iter().zip(&counters) {
                for _ in 0..wave {
                    tasks.push(tokio::spawn(one_stream(
                        client.clone(),
                        s.url.clone(),
                        body.clone(),
                        c.clone(),
                    )));
                }
            }
            launched += wave;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Sample every 200 ms until every stream ended (or the deadline).
        let k = subjects.len();
        // Per subject: the most streams seen open at one sample, and the
        // highest RSS among the samples with that many open.
        let mut best_live = vec![0usize; k];
        let mut best_rss = vec![0u64; k];
        let mut peak_any = vec![0u64; k];
        let mut all_open_at: Vec<Option<f64>> = vec![None; k];
        let mut samples_all_open = vec![0usize; k];
        loop {
            let ended = counters.iter().all(|c| {
                c.completed.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed) >= n
            });
            if ended || Instant::now() > deadline {
                break;
            }
            for i in 0..k {
                let (rss, _) = rss_hwm_kib(subjects[i].pid);
                peak_any[i] = peak_any[i].max(rss);
                let live = counters[i].live.load(Ordering::Relaxed);
                if live > best_live[i] {
                    best_live[i] = live;
                    best_rss[i] = rss;
                } else if live == best_live[i] {
                    best_rss[i] = best_rss[i].max(rss);
                }
                if live >= n {
                    all_open_at[i].get_or_insert(t_open.elapsed().as_secs_f64());
                    samples_all_open[i] += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for t in &tasks {
            t.abort();
        }
        let mut out = Vec::new();
        for i in 0..k {
            let (rss_after, hwm) = rss_hwm_kib(subjects[i].pid);
            let c = &counters[i];
            let (idle_rss, idle_hwm) = idle[i];
            let per_stream = (best_live[i] > 0).then(|| {
                best_rss[i].saturating_sub(idle_rss) as f64 * 1024.0 / best_live[i] as f64
            });
            out.push(json!({
                "name": subjects[i].name,
                "streams": n,
                "opened": c.open.load(Ordering::Relaxed),
                "completed": c.completed.load(Ordering::Relaxed),
                "failed": c.failed.load(Ordering::Relaxed),
                "seconds_to_all_open": all_open_at[i],
                "samples_with_all_open": samples_all_open[i],
                "rss_idle_kib": idle_rss,
                "hwm_idle_kib": idle_hwm,
                "max_open_at_once": best_live[i],
                "rss_peak_max_open_kib": best_rss[i],
                "rss_peak_kib": peak_any[i],
                "hwm_end_kib": hwm,
                "rss_after_kib": rss_after,
                "bytes_per_stream": per_stream,
            }));
        }
        Ok::<_, String>(out)
    })?;
    let wall = started.elapsed().as_secs_f64();
    report(args, n, secs, wall, &results)
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("–".to_string(), |k| format!("{:.1}", k / 1024.0))
}

fn report(args: &Args, n: usize, secs: u64, wall: f64, results: &[Value]) -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let pass = results
        .iter()
        .find(|r| r["name"] == "Pingora pass-through")
        .and_then(|r| r["bytes_per_stream"].as_f64());
    let mut md = String::new();
    md.push_str(&format!(
        "# Memory: {n} concurrent slow streams\n\n\
         Command: `make bench-memory` (`tappass-bench --memory --memory-streams {n} --memory-seconds {secs}`), {wall:.0} s wall clock. \
         Machine: {cpus} cores ({cpu_model}), shared with the mock provider and the client.\n\n\
         The mock provider streams one SSE event per second for about {secs} s (OpenAI chat format, 8 characters of text per event). \
         The three proxies each carry {n} such streams at the same time (one HTTP/1.1 connection per stream on each side); \
         their VmRSS is read from `/proc/PID/status` every 200 ms. Idle is after a warm-up of four calls; \
         \"Peak\" is the highest VmRSS among the samples with the most streams of that proxy open at once (normally all {n}); \
         per stream = (peak − idle) / streams open at that sample. VmHWM at idle includes start-up (TapPass compiles its detector rule set then).\n\n"
    ));
    md.push_str("| proxy | streams opened / completed / failed | most open at once | idle RSS MiB | peak RSS MiB | KiB per stream | ratio to pass-through | VmHWM MiB at end (idle) | RSS MiB after |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let per = r["bytes_per_stream"].as_f64();
        md.push_str(&format!(
            "| {} | {} / {} / {} | {} | {} | {} | {} | {} | {} ({}) | {} |\n",
            r["name"].as_str().unwrap_or("?"),
            r["opened"],
            r["completed"],
            r["failed"],
            r["max_open_at_once"],
            mib(&r["rss_idle_kib"]),
            mib(&r["rss_peak_max_open_kib"]),
            per.map_or("–".into(), |b| format!("{:.1}", b / 1024.0)),
            match (per, pass) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            },
            mib(&r["hwm_end_kib"]),
            mib(&r["hwm_idle_kib"]),
            mib(&r["rss_after_kib"]),
        ));
    }
    md.push_str("\n\"Every step on\" holds, per stream, the response guard's streaming scanner (a Hyperscan stream and its scratch), the held-back window, the tool-call and budget stream hooks and the call record. ");
    md.push_str(Setup::EveryStep.describe());
    md.push(' ');
    md.push_str(Setup::PipelineOff.describe());
    md.push('\n');
    let json = json!({
        "streams": n, "stream_seconds": secs, "wall_seconds": wall,
        "cpus": cpus, "cpu_model": cpu_model, "results": results,
    });
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    write(&args.out, "memory.md", md.as_bytes())?;
    write(
        &args.out,
        "memory.json",
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    println!("{md}");
    Ok(())
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))
}
