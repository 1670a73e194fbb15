//! A control plane and three real gateways on loopback under a steady
//! request load: a policy change and a new API key reach every gateway, and
//! no request fails while they swap.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tappass_controlplane::records::{ApplyPack, CreateAgent};
use tappass_controlplane::{ControlPlane, Options};

const POLICY: &str = "type.googleapis.com/tappass.v1.PolicySnapshot";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use tappass_testkit::free_port;

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workspace's other binaries sit beside this package's.
fn sibling(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_tappass"))
        .parent()
        .unwrap()
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (make test does)",
        p.display()
    );
    p
}

fn accepted(c: &reqwest::blocking::Client, url: &str, key: &str) -> bool {
    c.post(url)
        .bearer_auth(key)
        .json(&serde_json::json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "load"}]}))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

#[test]
fn a_change_reaches_every_gateway_under_load_without_failures() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = Options {
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        ..Options::default()
    };
    let cp = ControlPlane::open(&dir.path().join("control"), opts).unwrap();
    cp.create_agent(&CreateAgent {
        name: "fleet".into(),
        project: None,
        function: None,
        tier: None,
    })
    .unwrap();
    let key1 = cp.create_api_key("fleet").unwrap().key;
    let bound = rt.block_on(cp.bind()).unwrap();
    let xds = bound.xds_url();
    let serving = cp.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        let _ = serving
            .serve(bound, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    let snapshot_key = hex::encode(cp.snapshot_verifying_key().as_bytes());

    let mock_port = free_port();
    let _mock = Proc(
        Command::new(sibling("tappass-mock-llm"))
            .args(["--listen", &format!("127.0.0.1:{mock_port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(mock_port);
    let mut gateways = Vec::new();
    let mut urls = Vec::new();
    for g in 0..3 {
        let (port, admin) = (free_port(), free_port());
        let cfg = dir.path().join(format!("gw{g}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nthreads: 1\ncontrol_plane:\n  url: {xds}\n  node_id: gw-{g}\n  snapshot_public_keys: [\"{snapshot_key}\"]\nproviders:\n  - name: mock\n    kind: openai-compatible\n    base_url: http://127.0.0.1:{mock_port}/v1\nmodels:\n  - name: mock-gpt\n    provider: mock\n"
            ),
        )
        .unwrap();
        gateways.push(Proc(
            Command::new(sibling("tappass-gateway"))
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        wait_port(port);
        urls.push(format!("http://127.0.0.1:{port}/v1/chat/completions"));
    }
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !urls.iter().all(|u| accepted(&c, u, &key1)) {
        assert!(
            Instant::now() < deadline,
            "the gateways never received the first key"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Steady load with the first key.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = urls
        .iter()
        .flat_map(|u| [u.clone(), u.clone()])
        .map(|url| {
            let (stop, ok, failed, key) = (stop.clone(), ok.clone(), failed.clone(), key1.clone());
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    if accepted(&c, &url, &key) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    // The agent's policy allows 600 requests per minute per
                    // gateway: stay below it.
                    std::thread::sleep(Duration::from_millis(120));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // A policy change: every gateway ACKs the newly signed policy version.
    let before = cp.status().unwrap().versions.get(POLICY).cloned();
    cp.apply_pack(&ApplyPack {
        level: "org".into(),
        pack: "gdpr-baseline".into(),
        remove: false,
    })
    .unwrap();
    let after = cp.status().unwrap().versions.get(POLICY).cloned();
    assert_ne!(before, after, "the change produced a new policy version");
    let t0 = Instant::now();
    loop {
        let st = cp.status().unwrap();
        let all = (0..3).all(|g| {
            st.gateways.iter().any(|gw| {
                gw.node_id == format!("gw-{g}")
                    && gw.types.get(POLICY).and_then(|t| t.acked_version.clone()) == after
            })
        });
        if all {
            eprintln!("every gateway ACKed the policy after {:?}", t0.elapsed());
            break;
        }
        // A gateway ACKs once the new policy is installed, and this one
        // turns detectors on: each gateway first finishes compiling its rule
        // sets, which it started at boot (three gateways compiling at once
        // take several seconds on a two-core machine).
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not every gateway ACKed the policy: {:?}",
            st.gateways
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A new key: every gateway enforces it promptly.
    let key2 = cp.create_api_key("fleet").unwrap().key;
    let t0 = Instant::now();
    for u in &urls {
        while !accepted(&c, u, &key2) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{u} never accepted the new key"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 20, "the load ran");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the swaps"
    );
    let _ = stop_tx.send(());
}
