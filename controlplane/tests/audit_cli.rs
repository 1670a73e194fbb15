//! `tappass audit` against a real WAL.

use std::path::Path;
use std::process::{Command, Output};

use tappass_audit::{AuditKey, AuditRecord, AuditWal, Decision, WalConfig};

fn tappass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(args)
        .output()
        .expect("run tappass")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn make_wal(dir: &Path) {
    let key = AuditKey::load_or_create(&dir.join("signing.key")).unwrap();
    let wal = AuditWal::open(WalConfig::new(dir, "gw-cli"), key).unwrap();
    for i in 0..6u64 {
        let mut r = AuditRecord::new("gw-cli", &format!("trace-{i}"));
        r.endpoint = "chat_completions".into();
        r.agent_id = Some(if i % 2 == 0 { "alice" } else { "bob" }.into());
        r.status = if i == 3 { 401 } else { 200 };
        r.decision = if i == 3 {
            Decision::Deny
        } else {
            Decision::Allow
        };
        r.reason = (i == 3).then(|| "invalid_api_key".into());
        r.ended_at_ms = 1_700_000_000_000 + i;
        wal.append_blocking(r)
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
    }
    wal.close();
}

#[test]
fn verify_show_tail_export_and_erase() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().to_str().unwrap();
    make_wal(dir.path());

    let o = tappass(&["audit", "verify", "--wal", wal]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("ok: rows 1..=6, 6 rows"),
        "{}",
        stdout(&o)
    );

    let o = tappass(&["audit", "show", "trace-3", "--wal", wal]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.contains("invalid_api_key") && s.contains("Deny"), "{s}");
    assert_eq!(
        tappass(&["audit", "show", "nope", "--wal", wal])
            .status
            .code(),
        Some(1)
    );

    let o = tappass(&["audit", "tail", "--wal", wal, "-n", "2", "--agent", "alice"]);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("trace-2") && lines[1].contains("trace-4"));
    let o = tappass(&["audit", "tail", "--wal", wal, "--decision", "deny"]);
    assert_eq!(stdout(&o).lines().count(), 1);

    let o = tappass(&[
        "audit",
        "export",
        "--wal",
        wal,
        "--format",
        "jsonl",
        "--since",
        "1700000000004",
    ]);
    let docs: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["record"]["trace_id"], "trace-4");

    let o = tappass(&[
        "audit",
        "erase",
        "--wal",
        wal,
        "--trace",
        "trace-1",
        "--reason",
        "GDPR Art. 17",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tappass(&["audit", "verify", "--wal", wal, "--format", "json"]);
    assert!(o.status.success());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["erased"], 1);
}

#[test]
fn verify_fails_on_tampering_and_with_a_foreign_key() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().to_str().unwrap();
    make_wal(dir.path());
    // Another key set: every checkpoint is signed with an unknown key.
    let foreign = dir.path().join("foreign.json");
    std::fs::write(&foreign, AuditKey::generate().jwks().to_string()).unwrap();
    let o = tappass(&[
        "audit",
        "verify",
        "--wal",
        wal,
        "--jwks",
        foreign.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("unknown key"), "{}", stdout(&o));
    // A head the log does not reach.
    let o = tappass(&["audit", "verify", "--wal", wal, "--expect-head", "9:00"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("FAILED at row 7"), "{}", stdout(&o));
    // Usage errors exit 2.
    assert_eq!(
        tappass(&["audit", "verify", "--wal", wal, "--expect-head", "x"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        tappass(&["audit", "verify", "--wal", "/nonexistent"])
            .status
            .code(),
        Some(2)
    );
}
