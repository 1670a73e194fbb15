//! CLI tests for `tappass policy|provider|packs|keys` on the reference examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tappass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(args)
        .output()
        .expect("run tappass")
}

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/examples/policy")
        .to_string_lossy()
        .into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tappass-policy-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn compile_prints_canonical_json_and_is_deterministic() {
    let a = tappass(&["policy", "compile", &examples(), "--agent", "refund-bot"]);
    assert!(a.status.success(), "{}", s(&a.stderr));
    let b = tappass(&["policy", "compile", &examples(), "--agent", "refund-bot"]);
    assert_eq!(a.stdout, b.stdout);
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["identity"]["agent"], "refund-bot");
    assert_eq!(v["identity"]["policy_version"], 1);
    assert!(
        !s(&a.stdout).trim_end().contains('\n'),
        "canonical JSON is one line"
    );
}

#[test]
fn sign_verify_and_tamper_through_the_cli() {
    let d = scratch("sign");
    let key = d.join("policy.key");
    let g = tappass(&["keys", "generate", "--out", key.to_str().unwrap()]);
    assert!(g.status.success(), "{}", s(&g.stderr));
    let pubkey = d.join("policy.key.pub");
    assert!(pubkey.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A second generate refuses to overwrite.
    assert!(
        !tappass(&["keys", "generate", "--out", key.to_str().unwrap()])
            .status
            .success()
    );
    let out = d.join("refund-bot.signed.json");
    let c = tappass(&[
        "policy",
        "compile",
        &examples(),
        "--agent",
        "refund-bot",
        "--sign-key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--policy-version",
        "4",
    ]);
    assert!(c.status.success(), "{}", s(&c.stderr));
    let v = tappass(&[
        "policy",
        "verify",
        out.to_str().unwrap(),
        "--public-key",
        pubkey.to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", s(&v.stderr));
    assert!(s(&v.stdout).contains("ok: agent refund-bot version 4"));
    // Monotonic: the next compile from --previous gets version 5.
    let next = tappass(&[
        "policy",
        "compile",
        &examples(),
        "--agent",
        "refund-bot",
        "--previous",
        out.to_str().unwrap(),
    ]);
    let nv: serde_json::Value = serde_json::from_slice(&next.stdout).unwrap();
    assert_eq!(nv["identity"]["policy_version"], 5);
    let stale = tappass(&[
        "policy",
        "compile",
        &examples(),
        "--agent",
        "refund-bot",
        "--previous",
        out.to_str().unwrap(),
        "--policy-version",
        "4",
    ]);
    assert_eq!(stale.status.code(), Some(2), "{}", s(&stale.stderr));
    assert!(!tappass(&[
        "policy",
        "verify",
        out.to_str().unwrap(),
        "--public-key",
        pubkey.to_str().unwrap(),
        "--min-version",
        "4"
    ])
    .status
    .success());
    // Tamper with the payload.
    let text = std::fs::read_to_string(&out).unwrap();
    let tampered = d.join("tampered.json");
    std::fs::write(
        &tampered,
        text.replacen("\"max_amount\":1000", "\"max_amount\":9000", 1),
    )
    .unwrap();
    let t = tappass(&[
        "policy",
        "verify",
        tampered.to_str().unwrap(),
        "--public-key",
        pubkey.to_str().unwrap(),
    ]);
    assert_eq!(t.status.code(), Some(1));
    assert!(s(&t.stderr).contains("does not match"), "{}", s(&t.stderr));
    // Wrong key.
    let other = d.join("other.key");
    assert!(
        tappass(&["keys", "generate", "--out", other.to_str().unwrap()])
            .status
            .success()
    );
    let w = tappass(&[
        "policy",
        "verify",
        out.to_str().unwrap(),
        "--public-key",
        d.join("other.key.pub").to_str().unwrap(),
    ]);
    assert_eq!(w.status.code(), Some(1));
    assert!(s(&w.stderr).contains("not trusted"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn invalid_cascade_exits_1_with_a_clear_error() {
    let d = scratch("relax");
    for (p, t) in [
        ("org/org.yaml", "budget:\n  tokens_per_day: 100\n"),
        ("projects/p/p.yaml", "packs: []\n"),
        (
            "agents/bot/agent.yaml",
            "agent:\n  name: bot\n  project: p\nbudget:\n  tokens_per_day: 500\n",
        ),
    ] {
        let path = d.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, t).unwrap();
    }
    let o = tappass(&["policy", "compile", d.to_str().unwrap(), "--agent", "bot"]);
    assert_eq!(o.status.code(), Some(1));
    let e = s(&o.stderr);
    assert!(
        e.contains("budget.tokens_per_day")
            && e.contains("agents/bot/agent.yaml:5")
            && e.contains("org/org.yaml:2"),
        "{e}"
    );
    assert!(o.stdout.is_empty());
    let p = tappass(&["policy", "preview", d.to_str().unwrap(), "--agent", "bot"]);
    assert_eq!(p.status.code(), Some(1));
    let missing = tappass(&[
        "policy",
        "compile",
        "/nonexistent/tappass",
        "--agent",
        "bot",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn preview_shows_because_trails() {
    let o = tappass(&[
        "policy",
        "preview",
        &examples(),
        "--agent",
        "catalog-steward",
    ]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    let t = s(&o.stdout);
    assert!(t.contains("tools.schemas.pii_archive = deny"), "{t}");
    assert!(
        t.contains("because agent @ agents/catalog-steward/agent.yaml:"),
        "{t}"
    );
    assert!(t.contains("pipeline (L4):"));
}

#[test]
fn provider_list_and_render() {
    let l = tappass(&["provider", "list"]);
    let t = s(&l.stdout);
    for id in [
        "claude-code",
        "codex",
        "cursor",
        "aider",
        "openshell",
        "nono",
        "bubblewrap",
        "gvisor",
        "monty",
        "llm-gateway",
        "mcp-broker",
    ] {
        assert!(t.contains(id), "{id} missing from {t}");
    }
    let d = scratch("render");
    let compiled = d.join("c.json");
    let c = tappass(&[
        "policy",
        "compile",
        &examples(),
        "--agent",
        "code-reviewer",
        "--out",
        compiled.to_str().unwrap(),
    ]);
    assert!(c.status.success());
    let r = tappass(&[
        "provider",
        "render",
        "--target",
        "claude-code",
        compiled.to_str().unwrap(),
        "--gateway-url",
        "https://gw.example",
    ]);
    assert!(r.status.success(), "{}", s(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["env"]["ANTHROPIC_BASE_URL"], "https://gw.example");
    assert!(
        s(&r.stderr).contains("unenforceable: filesystem: filesystem.workspace"),
        "{}",
        s(&r.stderr)
    );
    let codex = tappass(&[
        "provider",
        "render",
        "--target",
        "codex",
        compiled.to_str().unwrap(),
    ]);
    assert!(s(&codex.stdout).contains("# ---- requirements.toml ----"));
    assert!(s(&codex.stdout).contains("wire_api = \"responses\""));
    let bad = tappass(&[
        "provider",
        "render",
        "--target",
        "emacs",
        compiled.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn packs_list_and_show() {
    let l = tappass(&["packs", "list"]);
    let t = s(&l.stdout);
    for id in [
        "eu-ai-act-high-risk",
        "owasp-llm-top10",
        "gdpr-baseline",
        "pci-dss",
        "hipaa",
        "nis2-dora",
    ] {
        assert!(t.contains(id), "{id}");
    }
    assert!(t.contains("GDPR:Art32"));
    let sh = tappass(&["packs", "show", "pci-dss"]);
    assert!(sh.status.success());
    assert!(s(&sh.stdout).contains("PCI-DSS:3.4"));
    assert_eq!(tappass(&["packs", "show", "nope"]).status.code(), Some(1));
}
