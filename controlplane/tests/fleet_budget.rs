//! One org budget shared by two real gateways through a real control
//! plane: each gateway spends only within leases the control plane grants,
//! so the two together stay within the one limit.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{sibling, test_options, wait_port, Running};
use serde_json::{json, Value};
use tappass_controlplane::records::CreateAgent;
use tappass_testkit::free_port;

struct Gateway {
    child: Child,
    port: u16,
    admin: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LIMIT: u64 = 3000;

async fn start_gateway(dir: &Path, name: &str, xds: &str, snapshot_key: &str) -> Gateway {
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        [
            format!("listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nthreads: 1"),
            format!("control_plane:\n  url: {xds}\n  node_id: {name}\n  snapshot_public_keys: [\"{snapshot_key}\"]"),
            "budgets:\n  default_org: acme\n  prices:\n    mock-gpt: { input: 1, output: 1 }".into(),
            format!("  scopes:\n    org:acme: {{ tokens_per_day: {LIMIT} }}"),
            "  fleet:\n    scopes: [\"org:*\"]\n    lease_fraction: 0.1\n    renew_every_ms: 200\n    wait_for_lease_ms: 2000".into(),
            "providers:\n  - name: m\n    kind: mock\nmodels:\n  - name: mock-gpt\n    provider: m\n".into(),
        ]
        .join("\n"),
    )
    .unwrap();
    let child = Command::new(sibling("tappass-gateway"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let gw = Gateway { child, port, admin };
    wait_port(port);
    wait_port(admin);
    gw
}

async fn org_used(http: &reqwest::Client, gw: &Gateway) -> u64 {
    let v: Value = http
        .get(format!("http://127.0.0.1:{}/budgets", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["scope"] == "org:acme")
        .map_or(0, |l| {
            l["used"].as_u64().unwrap() + l["reserved"].as_u64().unwrap()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_one_org_budget_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Running::start(&dir.path().join("control"), test_options()).await;
    let c = cp.cp.clone();
    c.create_agent(&CreateAgent {
        name: "shared".into(),
        project: None,
        function: None,
        tier: None,
    })
    .unwrap();
    let key = c.create_api_key("shared").unwrap().key;
    let snapshot_key = hex::encode(c.snapshot_verifying_key().as_bytes());
    let a = Arc::new(start_gateway(dir.path(), "gw-a", &cp.xds_url, &snapshot_key).await);
    let b = Arc::new(start_gateway(dir.path(), "gw-b", &cp.xds_url, &snapshot_key).await);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let body = json!({"model": "mock-gpt", "max_tokens": 20,
        "messages": [{"role": "user", "content": "a shared budget, please"}]});

    // The agent's key reaches both gateways, and the control plane's lease
    // book grants once its warm-up is over.
    for gw in [&a, &b] {
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", gw.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = http
                .post(&url)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never admitted: {}",
                r.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Both gateways spend until the org budget refuses them.
    let ok = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let mut workers = Vec::new();
    for w in 0..8 {
        let gw = if w % 2 == 0 { a.clone() } else { b.clone() };
        let ok = ok[w % 2].clone();
        let (http, key, body) = (http.clone(), key.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let url = format!("http://127.0.0.1:{}/v1/chat/completions", gw.port);
            let mut refused_in_a_row = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while refused_in_a_row < 5 && Instant::now() < deadline {
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        refused_in_a_row = 0;
                    }
                    429 => {
                        let v: Value = r.json().await.unwrap();
                        assert_eq!(v["error"]["code"], "token_budget_exceeded", "{v}");
                        refused_in_a_row += 1;
                    }
                    s => panic!("status {s}: {}", r.text().await.unwrap()),
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let (ok_a, ok_b) = (ok[0].load(Ordering::Relaxed), ok[1].load(Ordering::Relaxed));
    assert!(ok_a > 0 && ok_b > 0, "both gateways spent: {ok_a} / {ok_b}");

    let used_a = org_used(&http, &a).await;
    let used_b = org_used(&http, &b).await;
    let total = used_a + used_b;
    eprintln!("calls {ok_a} + {ok_b}; spent {used_a} + {used_b} = {total} of {LIMIT}");
    // Within the one limit, and past what either gateway could have spent
    // on a limit of its own half.
    assert!(
        total <= LIMIT,
        "the fleet spent {total} of {LIMIT} ({used_a} + {used_b})"
    );
    assert!(
        total > LIMIT / 2,
        "the fleet stopped early: {total} of {LIMIT}"
    );

    // Each gateway reports its lease and the fleet's spend beside its own.
    let v: Value = http
        .get(format!("http://127.0.0.1:{}/budgets", a.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let line = v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["scope"] == "org:acme")
        .unwrap()
        .clone();
    let lease = line["lease"]
        .as_u64()
        .expect("a shared limit reports its lease");
    assert!(lease >= used_a && lease <= LIMIT, "{line}");
    let fleet = line["fleet_committed"].as_u64().unwrap();
    assert!(fleet > used_a && fleet <= LIMIT, "{line}");
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args([
            "budget",
            "show",
            "--gateway",
            &format!("http://127.0.0.1:{}", a.admin),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success() && out.contains("org:acme"), "{out}");

    // The control plane's book agrees: leases never add up past the limit.
    let book = cp.get("/v1/budgets").await;
    let shared = &book["shared"][0];
    assert_eq!(shared["limit"], LIMIT, "{book}");
    assert!(shared["leased"].as_u64().unwrap() <= LIMIT, "{book}");
    let gws = shared["gateways"].as_object().unwrap();
    assert!(
        gws.contains_key("gw-a") && gws.contains_key("gw-b"),
        "{book}"
    );
    drop((a, b));
    cp.stop().await;
}
