//! The fleet's audit trail through a real control plane: a real gateway
//! reports its chain head and audit keys over the xDS port, the control
//! plane lists the head and serves the keys, `tappass audit verify --jwks
//! URL --expect-head` checks the gateway's WAL against both (across a key
//! rotation), and reports for another gateway's id are refused.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{sibling, wait_port};
use serde_json::Value;
use tappass_audit::chain::CheckpointKind;
use tappass_audit::{AuditKey, WalReader};
use tappass_controlplane::records::CreateAgent;
use tappass_controlplane::{ControlPlane, Options};
use tappass_testkit::free_port;
use tappass_xds::pb::tappass::v1::{AuditHead, GatewayReport};
use tappass_xds::{report_signing_input, send_report, Channel};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM (a clean stop: the WAL is sealed), then wait.
    fn stop(mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the gateway did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn tappass(args: &[&str], token: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(args)
        .env("TAPPASS_ADMIN_TOKEN", token)
        .output()
        .expect("run tappass")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn call(c: &reqwest::blocking::Client, url: &str, key: &str) -> bool {
    c.post(url)
        .bearer_auth(key)
        .json(&serde_json::json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "audited"}]}))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Served {
    cp: ControlPlane,
    admin_url: String,
    xds_url: String,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn serve(dir: &Path) -> Served {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = Options {
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        ..Options::default()
    };
    let cp = ControlPlane::open(dir, opts).unwrap();
    let bound = rt.block_on(cp.bind()).unwrap();
    let (admin_url, xds_url) = (bound.admin_url(), bound.xds_url());
    let serving = cp.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        let _ = serving
            .serve(bound, async {
                let _ = rx.await;
            })
            .await;
    });
    Served {
        cp,
        admin_url,
        xds_url,
        rt,
        stop: Some(tx),
    }
}

#[test]
fn the_control_plane_lists_the_head_and_serves_the_keys_that_verify_the_wal_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("control"));
    let cp = s.cp.clone();
    let token = cp.admin_token().to_string();
    cp.create_agent(&CreateAgent {
        name: "fleet".into(),
        project: None,
        function: None,
        tier: None,
    })
    .unwrap();
    let key = cp.create_api_key("fleet").unwrap().key;
    let snapshot_key = hex::encode(cp.snapshot_verifying_key().as_bytes());

    let audit_dir = dir.path().join("audit");
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nthreads: 1\ncontrol_plane:\n  url: {xds}\n  node_id: gw-a\n  snapshot_public_keys: [\"{snapshot_key}\"]\naudit:\n  dir: {audit}\n  gateway_id: gw-a\nproviders:\n  - name: m\n    kind: mock\nmodels:\n  - name: mock-gpt\n    provider: m\n",
            xds = s.xds_url,
            audit = audit_dir.display()
        ),
    )
    .unwrap();
    let gw = Proc(
        Command::new(sibling("tappass-gateway"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    eventually(20, "the gateway accepts the agent's key", || {
        call(&c, &url, &key).then_some(())
    });
    for _ in 0..5 {
        assert!(call(&c, &url, &key));
    }

    // The control plane lists the head the gateway serves at /audit/head.
    let gw_head = || -> Value {
        c.get(format!("http://127.0.0.1:{admin}/audit/head"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let listed = |want_seq: u64| {
        let g = cp.gateway("gw-a").ok()?;
        let h = g.head.clone()?;
        (h.seq >= want_seq).then_some(g)
    };
    let local = gw_head();
    let local_seq = local["seq"].as_u64().unwrap();
    assert!(local_seq >= 6, "{local}");
    let t0 = Instant::now();
    let g = eventually(10, "the control plane lists the gateway's head", || {
        listed(local_seq)
    });
    eprintln!("head listed {:?} after the last call", t0.elapsed());
    let head = g.head.clone().unwrap();
    assert_eq!(head.seq, local_seq);
    assert_eq!(head.hash, local["hash"].as_str().unwrap());
    assert_eq!(g.key_id, local["key_id"].as_str().unwrap());
    assert_eq!((g.keys.len(), g.key_generation), (1, 0));
    let old_kid = g.key_id.clone();
    // The private key stayed in the audit directory; the control plane holds
    // the public half only.
    let jwk = &g.keys[0].jwk;
    assert!(
        jwk.get("d").is_none() && jwk["kid"] == old_kid.as_str(),
        "{jwk}"
    );

    // `tappass audit heads` shows it.
    let o = tappass(&["audit", "heads", "--control", &s.admin_url], &token);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains(&format!("{}:{}", head.seq, head.hash)),
        "{}",
        stdout(&o)
    );

    // Rotation: asked through the CLI, done by the gateway at its next report
    // while calls continue.
    let o = tappass(
        &[
            "audit",
            "rotate-key",
            "--gateway",
            "gw-a",
            "--control",
            &s.admin_url,
        ],
        &token,
    );
    assert!(o.status.success(), "{o:?}");
    assert!(cp.gateway("gw-a").unwrap().rotation_pending());
    let t0 = Instant::now();
    let rotated = eventually(30, "the gateway switches to a new audit key", || {
        assert!(call(&c, &url, &key));
        let g = cp.gateway("gw-a").ok()?;
        (g.key_generation == 1 && g.key_id != old_kid).then_some(g)
    });
    eprintln!("rotation done {:?} after it was asked for", t0.elapsed());
    assert!(!rotated.rotation_pending());
    assert_eq!(rotated.keys.len(), 2, "both keys stay published");
    assert_eq!(gw_head()["key_id"], rotated.key_id.as_str());
    for _ in 0..3 {
        assert!(call(&c, &url, &key));
    }
    let local = gw_head();
    let local_seq = local["seq"].as_u64().unwrap();
    let g = eventually(10, "the head after the rotation is listed", || {
        listed(local_seq)
    });
    let head = g.head.unwrap();
    assert_eq!(head.hash, local["hash"].as_str().unwrap());
    gw.stop();

    // The fleet key set (public, no admin token) holds both keys.
    let jwks: Value = c
        .get(format!("{}/v1/audit/jwks", s.admin_url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&rotated.key_id.as_str()),
        "{kids:?}"
    );

    // The WAL holds a rotation checkpoint signed by the old key, later
    // checkpoints by the new one.
    {
        let reader = WalReader::open(&audit_dir).unwrap();
        let cps = reader.checkpoints().unwrap();
        let rot = cps
            .iter()
            .find(|c| c.kind == CheckpointKind::KeyRotation)
            .expect("a key_rotation checkpoint");
        assert_eq!(rot.mandate.key_id, old_kid);
        assert!(rot.seq < head.seq);
        assert_eq!(cps.last().unwrap().mandate.key_id, rotated.key_id);
    }
    // The old private key is gone from the audit directory.
    let key_text = std::fs::read_to_string(audit_dir.join("signing.key")).unwrap();
    assert_eq!(
        AuditKey::from_seed(hex_seed(&key_text)).kid(),
        rotated.key_id
    );
    assert!(!audit_dir.join("signing.key.next").exists());

    // verify against the published key set and the listed head.
    let wal = audit_dir.to_str().unwrap();
    let jwks_url = format!("{}/v1/audit/jwks", s.admin_url);
    let expect = format!("{}:{}", head.seq, head.hash);
    let o = tappass(
        &[
            "audit",
            "verify",
            "--wal",
            wal,
            "--jwks",
            &jwks_url,
            "--expect-head",
            &expect,
        ],
        &token,
    );
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("head {expect}")),
        "{}",
        stdout(&o)
    );
    // A head the WAL does not reach fails (a cut-off tail).
    let further = format!("{}:{}", head.seq + 1, head.hash);
    let o = tappass(
        &[
            "audit",
            "verify",
            "--wal",
            wal,
            "--jwks",
            &jwks_url,
            "--expect-head",
            &further,
        ],
        &token,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    // The key set from before the rotation does not cover the new rows.
    let only_old = dir.path().join("old.jwks.json");
    let old_jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == old_kid.as_str())
        .unwrap()
        .clone();
    std::fs::write(
        &only_old,
        serde_json::json!({"keys": [old_jwk]}).to_string(),
    )
    .unwrap();
    let o = tappass(
        &[
            "audit",
            "verify",
            "--wal",
            wal,
            "--jwks",
            only_old.to_str().unwrap(),
        ],
        &token,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    drop(s);
}

fn hex_seed(text: &str) -> [u8; 32] {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).unwrap();
    seed
}

fn report(id: &str, seq: u64, hash: &str, keys: &[&AuditKey], signer: &AuditKey) -> GatewayReport {
    let jwks = serde_json::json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()});
    let mut r = GatewayReport {
        gateway_id: id.into(),
        audit_head: Some(AuditHead {
            seq,
            hash: hash.into(),
            signed_seq: seq,
            time_ms: 1,
        }),
        audit_jwks_json: jwks.to_string(),
        audit_key_generation: 0,
        key_id: signer.kid().into(),
        signature: String::new(),
        sent_at_ms: 1,
    };
    r.signature = signer.sign(&report_signing_input(&r));
    r
}

#[test]
fn a_report_for_another_gateways_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("control"));
    let cp = s.cp.clone();
    let channel: Channel = s.rt.block_on(async {
        Channel::from_shared(s.xds_url.clone())
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap()
    });
    let send = |r: GatewayReport| {
        s.rt.block_on(send_report(channel.clone(), r, Duration::from_secs(5)))
    };
    let code = |r: GatewayReport| match send(r) {
        Ok(_) => tonic::Code::Ok,
        Err(tappass_xds::XdsError::Status(st)) => st.code(),
        Err(e) => panic!("transport error: {e}"),
    };
    let (ka, kb, kc) = (
        AuditKey::generate(),
        AuditKey::generate(),
        AuditKey::generate(),
    );
    let h = |c: char| c.to_string().repeat(64);

    // gw-a enrolls its key with its first report.
    let reply = send(report("gw-a", 10, &h('a'), &[&ka], &ka)).unwrap();
    assert_eq!(reply.audit_key_generation, 0);
    // Another party, with its own key, cannot report for gw-a …
    assert_eq!(
        code(report("gw-a", 99, &h('b'), &[&kb], &kb)),
        tonic::Code::PermissionDenied
    );
    // … nor by listing gw-a's public key beside its own …
    assert_eq!(
        code(report("gw-a", 99, &h('b'), &[&ka, &kb], &kb)),
        tonic::Code::PermissionDenied
    );
    // … nor by naming gw-a's key while signing with another.
    let mut forged = report("gw-a", 99, &h('b'), &[&ka, &kb], &kb);
    forged.key_id = ka.kid().into();
    assert_eq!(code(forged), tonic::Code::PermissionDenied);
    // A report changed after signing does not verify.
    let mut changed = report("gw-a", 11, &h('c'), &[&ka], &ka);
    changed.audit_head.as_mut().unwrap().seq = 12;
    assert_eq!(code(changed), tonic::Code::PermissionDenied);
    // gw-b enrolls, but cannot claim gw-a's key as one of its own.
    send(report("gw-b", 1, &h('d'), &[&kb], &kb)).unwrap();
    assert_eq!(
        code(report("gw-b", 2, &h('d'), &[&kb, &ka], &kb)),
        tonic::Code::PermissionDenied
    );
    // gw-a's own head may not go backwards or fork.
    assert_eq!(
        code(report("gw-a", 9, &h('e'), &[&ka], &ka)),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(report("gw-a", 10, &h('e'), &[&ka], &ka)),
        tonic::Code::FailedPrecondition
    );
    // Malformed input is refused, not stored.
    assert_eq!(
        code(report("gw a", 1, &h('a'), &[&kc], &kc)),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(report("gw-c", 1, "not-a-hash", &[&kc], &kc)),
        tonic::Code::InvalidArgument
    );
    let mut no_keys = report("gw-c", 1, &h('a'), &[&kc], &kc);
    no_keys.audit_jwks_json = "{\"keys\":[]}".into();
    assert_eq!(code(no_keys), tonic::Code::InvalidArgument);

    let a = cp.gateway("gw-a").unwrap();
    let head = a.head.clone().unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (10, h('a').as_str()));
    assert_eq!(a.keys.len(), 1);
    assert_eq!(a.keys[0].kid, ka.kid());
    assert!(cp.gateway("gw-c").is_err());

    // gw-a itself introduces a new key with a report signed by its enrolled
    // key; then reports with the new key.
    send(report("gw-a", 11, &h('f'), &[&ka, &kc], &ka)).unwrap();
    send(report("gw-a", 12, &h('0'), &[&ka, &kc], &kc)).unwrap();
    // Rotation requests reach gw-a in the reply.
    cp.rotate_audit_key("gw-a").unwrap();
    let reply = send(report("gw-a", 12, &h('0'), &[&ka, &kc], &kc)).unwrap();
    assert_eq!(reply.audit_key_generation, 1);

    // After re-enrollment a fresh key may take over gw-a; its earlier keys
    // stay in the fleet key set.
    let kd = AuditKey::generate();
    assert_eq!(
        code(report("gw-a", 1, &h('1'), &[&kd], &kd)),
        tonic::Code::PermissionDenied
    );
    cp.reenroll_gateway("gw-a").unwrap();
    send(report("gw-a", 1, &h('1'), &[&kd], &kd)).unwrap();
    let jwks = cp.audit_jwks().unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    for k in [&ka, &kb, &kc, &kd] {
        assert!(kids.contains(&k.kid()), "{kids:?}");
    }
    // The records survive a restart of the control plane.
    drop(channel);
    drop(s);
    drop(cp);
    let reopened = eventually(10, "the store is released", || {
        ControlPlane::open(
            &dir.path().join("control"),
            Options {
                xds_addr: "127.0.0.1:0".parse().unwrap(),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
                ..Options::default()
            },
        )
        .ok()
    });
    let a = reopened.gateway("gw-a").unwrap();
    assert_eq!(a.head.unwrap().seq, 1);
    assert_eq!(a.key_id, kd.kid());
    assert_eq!(reopened.audit_jwks().unwrap(), jwks);
}

/// Reports accepted per second by one control plane (signature check and
/// one synced store write each), one gateway sending back to back. A
/// measurement, not a check: `cargo test -p tappass-controlplane --test
/// fleet_audit -- --ignored --nocapture`.
#[test]
#[ignore]
fn report_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("control"));
    let channel: Channel = s.rt.block_on(async {
        Channel::from_shared(s.xds_url.clone())
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap()
    });
    let k = AuditKey::generate();
    let n = 2000u64;
    let reports: Vec<GatewayReport> = (1..=n)
        .map(|i| report("gw-load", i, &format!("{i:064x}"), &[&k], &k))
        .collect();
    let t0 = Instant::now();
    s.rt.block_on(async {
        for r in reports {
            send_report(channel.clone(), r, Duration::from_secs(5))
                .await
                .unwrap();
        }
    });
    let el = t0.elapsed();
    eprintln!(
        "{n} reports in {el:?}: {:.0} reports/s, {:.0} us each",
        n as f64 / el.as_secs_f64(),
        el.as_micros() as f64 / n as f64
    );
    assert_eq!(s.cp.gateway("gw-load").unwrap().head.unwrap().seq, n);
    // The same work without gRPC.
    let reports: Vec<GatewayReport> = (n + 1..=2 * n)
        .map(|i| report("gw-load", i, &format!("{i:064x}"), &[&k], &k))
        .collect();
    let t0 = Instant::now();
    for r in &reports {
        s.cp.accept_report(r, None).unwrap();
    }
    let el = t0.elapsed();
    eprintln!(
        "in process: {n} reports in {el:?}: {:.0} us each",
        el.as_micros() as f64 / n as f64
    );
}
