//! `tappass-bench-propagation`: how fast a change pushed over xDS is enforced
//! by a fleet of gateways under load, and whether any request fails while
//! they swap.
//!
//! Starts an ADS server (the `tappass-xds` server, in process) and three real
//! `tappass-gateway` processes subscribed to it, runs a steady request load
//! against every gateway, then pushes a series of signed changes (each adds a
//! new gateway API key). For each change and gateway it measures the time
//! from publishing to the gateway's ACK, which the gateway sends only after
//! the new state is swapped in, and checks that the new key is accepted.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use serde_json::json;
use tappass_xds::pb::tappass::v1::{ApiKeyHash, ApiKeyHashes, ApiKeyHashesPayload};
use tappass_xds::types::API_KEY_HASHES;
use tappass_xds::{pack, AdsServer, Resource, SnapshotCache, SnapshotSigner, TypeSnapshot};

#[derive(Parser, Debug)]
#[command(name = "tappass-bench-propagation")]
struct Args {
    /// Gateways in the fleet.
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    /// Changes pushed.
    #[arg(long, default_value_t = 40)]
    changes: u64,
    /// Pause between changes, in milliseconds.
    #[arg(long, default_value_t = 150)]
    pause_ms: u64,
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use tappass_testkit::free_port;

fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn key(v: u64) -> String {
    format!("tp-fleet-key-{v}")
}

/// Signed API-key hashes holding the keys of versions 1..=v.
fn keys_snapshot(signer: &SnapshotSigner, v: u64) -> TypeSnapshot {
    let payload = ApiKeyHashesPayload {
        keys: (1..=v)
            .map(|i| ApiKeyHash {
                alg: "sha256".into(),
                hash: tappass_dataplane::auth::hash_key(&key(i)),
                agent: format!("agent-{i}"),
                project: String::new(),
                key_id: format!("k{i}"),
                expires_at: None,
            })
            .collect(),
    };
    let r: ApiKeyHashes = signer.resource(
        "api-keys",
        v,
        SystemTime::now(),
        Duration::from_secs(3600),
        prost::Message::encode_to_vec(&payload),
    );
    TypeSnapshot::new(v.to_string(), vec![Resource::new("api-keys", pack(&r))])
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let signer = SnapshotSigner::from_seed(rand::random::<[u8; 32]>());
    let public = hex_string(signer.verifying_key().as_bytes());
    let cache = SnapshotCache::new();
    cache.set(API_KEY_HASHES, keys_snapshot(&signer, 1));
    let server = AdsServer::new(cache.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let xds_addr = listener.local_addr().expect("addr");
    let srv = server.clone();
    rt.spawn(async move {
        let _ = srv.serve(listener, std::future::pending()).await;
    });

    let mock_port = free_port();
    let _mock = Proc(
        Command::new(bin("tappass-mock-llm"))
            .args(["--listen", &format!("127.0.0.1:{mock_port}")])
            .stdout(Stdio::null())
            .spawn()
            .expect("mock"),
    );
    assert!(wait_port(mock_port), "mock did not start");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gateways = Vec::new();
    let mut urls = Vec::new();
    for g in 0..args.gateways {
        let (port, admin) = (free_port(), free_port());
        let cfg = dir.path().join(format!("gw{g}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nthreads: 1\nlog:\n  level: warn\ncontrol_plane:\n  url: http://{xds_addr}\n  node_id: gw-{g}\n  snapshot_public_keys: [\"{public}\"]\nproviders:\n  - name: mock\n    kind: openai-compatible\n    base_url: http://127.0.0.1:{mock_port}/v1\nmodels:\n  - name: mock-gpt\n    provider: mock\n"
            ),
        )
        .expect("config");
        gateways.push(Proc(
            Command::new(bin("tappass-gateway"))
                .arg("--config")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gateway"),
        ));
        assert!(wait_port(port), "gateway {g} did not start");
        urls.push(format!("http://127.0.0.1:{port}/v1/chat/completions"));
    }
    let acked = |v: u64| {
        (0..args.gateways).all(|g| {
            server
                .node(&format!("gw-{g}"))
                .is_some_and(|n| n.acked_version(API_KEY_HASHES) == Some(&v.to_string()))
        })
    };
    let t0 = Instant::now();
    while !acked(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "gateways never ACKed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Steady load with the first key, which every version keeps.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body =
        json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "steady load"}]})
            .to_string();
    let mut load = Vec::new();
    for url in &urls {
        for _ in 0..4 {
            let (ok, failed, stop, url, body) = (
                ok.clone(),
                failed.clone(),
                stop.clone(),
                url.clone(),
                body.clone(),
            );
            load.push(rt.spawn(async move {
                let c = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .post(&url)
                        .bearer_auth(key(1))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }

    let mut samples_ms = Vec::new();
    let mut enforced = 0u64;
    let probe = reqwest::blocking::Client::new();
    for v in 2..=args.changes + 1 {
        std::thread::sleep(Duration::from_millis(args.pause_ms));
        let published = Instant::now();
        cache.set(API_KEY_HASHES, keys_snapshot(&signer, v));
        let mut pending: Vec<usize> = (0..args.gateways).collect();
        while !pending.is_empty() && published.elapsed() < Duration::from_secs(10) {
            pending.retain(|&g| {
                let done = server
                    .node(&format!("gw-{g}"))
                    .is_some_and(|n| n.acked_version(API_KEY_HASHES) == Some(&v.to_string()));
                if done {
                    samples_ms.push(published.elapsed().as_secs_f64() * 1000.0);
                }
                !done
            });
            std::thread::sleep(Duration::from_micros(200));
        }
        for url in &urls {
            let accepted = probe
                .post(url)
                .bearer_auth(key(v))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .is_ok_and(|r| r.status().is_success());
            enforced += u64::from(accepted);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = rt.block_on(l);
    }
    let expected = args.changes * args.gateways as u64;
    let (p50, p99, max) = (
        pct(samples_ms.clone(), 0.5),
        pct(samples_ms.clone(), 0.99),
        pct(samples_ms.clone(), 1.0),
    );
    let md = format!(
        "# Policy propagation\n\nCommand: `cargo run --release -p tappass-benches --bin tappass-bench-propagation -- --gateways {g} --changes {c}`\n\nMachine: the project's 2-core machine, shared; the ADS server, {g} gateways (one worker thread each), the mock provider and the load all run on it, on loopback.\n\nEach change is a new signed API-key snapshot (Ed25519, delta xDS). Propagation is the time from publishing to each gateway's ACK; a gateway ACKs only after it has verified the snapshot and swapped the new state in. After every change the new key is tried on every gateway.\n\n| figure | value |\n|---|---|\n| changes × gateways | {expected} |\n| propagation p50 ms | {p50:.2} |\n| propagation p99 ms | {p99:.2} |\n| propagation max ms | {max:.2} |\n| ACKs observed | {n} |\n| new key accepted right after the ACKs | {enforced} of {expected} |\n| steady-load requests that succeeded / failed during the swaps | {ok} / {failed} |\n",
        g = args.gateways,
        c = args.changes,
        n = samples_ms.len(),
        ok = ok.load(Ordering::Relaxed),
        failed = failed.load(Ordering::Relaxed),
    );
    println!("{md}");
    let _ = std::fs::create_dir_all(&args.out);
    let doc = json!({"gateways": args.gateways, "changes": args.changes, "propagation_ms": samples_ms,
        "p50_ms": p50, "p99_ms": p99, "max_ms": max, "enforced": enforced, "expected": expected,
        "load_ok": ok.load(Ordering::Relaxed), "load_failed": failed.load(Ordering::Relaxed)});
    let _ = std::fs::write(
        args.out.join("propagation.json"),
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    );
    let _ = std::fs::write(args.out.join("propagation.md"), md);
    if failed.load(Ordering::Relaxed) > 0 || enforced < expected {
        std::process::exit(1);
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
