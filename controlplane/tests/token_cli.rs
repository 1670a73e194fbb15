//! `tappass token` against the real token verifier.

use std::process::{Command, Output};

fn tappass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(args)
        .output()
        .expect("run tappass")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn token_keygen_and_mint_produce_a_token_the_key_set_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tokens.key");
    let o = tappass(&["token", "keygen", "--out", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tappass(&[
        "token",
        "mint",
        "--agent",
        "support-emailer",
        "--key",
        key.to_str().unwrap(),
        "--ttl",
        "120",
        "--model",
        "gpt-*",
        "--sandbox",
        "sb-7",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = stdout(&o).trim().to_string();
    let jwks = std::fs::read_to_string(dir.path().join("tokens.key.jwks.json")).unwrap();
    let verifier = tappass_tokens::Verifier {
        jwks: tappass_keys::Jwks::from_json(&jwks).unwrap(),
        audience: "tappass-gateway".into(),
        issuer: Some("tappass-control".into()),
        max_ttl_seconds: 300,
        leeway_seconds: 5,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = verifier.verify(&token, now, &Default::default()).unwrap();
    assert_eq!(claims.sub, "support-emailer");
    assert_eq!(claims.scope.models, ["gpt-*"]);
    assert_eq!(claims.exp - claims.iat, 120);
    assert_eq!(
        tappass(&["token", "mint", "--agent", "a", "--key", "/nonexistent"])
            .status
            .code(),
        Some(2)
    );
}
