//! Capability-token verification: a real Ed25519-signed token (as the
//! control plane mints it) checked offline by the gateway's `Verifier`
//! against the trusted key set and a revocation list.
//!
//! `cargo bench -p tappass-benches --bench tokens`

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use tappass_keys::{Jwks, SigningKeyPair};
use tappass_tokens::{mint, Audience, Claims, Revocations, Scope, Verifier};

fn benches(c: &mut Criterion) {
    let key = SigningKeyPair::from_seed([7u8; 32]);
    // A second, unrelated key in the trusted set, as during a key rotation.
    let old = SigningKeyPair::from_seed([9u8; 32]);
    let jwks_doc = serde_json::json!({
        "keys": [key.public_jwk(), old.public_jwk()]
    })
    .to_string();
    let jwks = Jwks::from_json(&jwks_doc).expect("jwks");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = Claims {
        iss: "tappass-control".into(),
        aud: Audience::One("tappass-gateway".into()),
        sub: "support-emailer".into(),
        org: Some("acme".into()),
        project: Some("support".into()),
        sandbox: Some("sb-4f1c9e".into()),
        tier: Some("standard".into()),
        scope: Scope {
            tools_allow: vec!["gmail.*".into(), "zendesk.read_ticket".into()],
            tools_deny: vec!["gmail.delete".into()],
            models: vec!["gpt-4o*".into(), "claude-*".into()],
            ..Scope::default()
        },
        policy_version: Some(42),
        iat: now,
        nbf: None,
        exp: now + 300,
        jti: "tok-01HZX9K2M4Q8R7T6V5W3Y1".into(),
    };
    let token = mint(&claims, &key);
    let verifier = Verifier {
        jwks,
        audience: "tappass-gateway".into(),
        issuer: Some("tappass-control".into()),
        max_ttl_seconds: 300,
        leeway_seconds: 30,
    };
    let empty = Revocations::default();
    let mut revoked = Revocations::default();
    for i in 0..10_000 {
        revoked.jti.insert(format!("tok-revoked-{i:05}"));
    }
    for i in 0..1_000 {
        revoked.sandboxes.insert(format!("sb-revoked-{i:04}"));
    }
    // The benchmark must measure an accepting verification.
    assert_eq!(
        verifier.verify(&token, now, &revoked).map(|c| c.sub),
        Ok("support-emailer".to_string())
    );
    // Flip one character inside the signature (not the last one, whose
    // spare bits would fail base64 decoding before any curve arithmetic).
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap_or_default();
    assert!(matches!(
        verifier.verify(&tampered, now, &empty),
        Err(tappass_tokens::TokenError::Signature(_))
    ));

    let mut g = c.benchmark_group("tokens");
    g.bench_function("verify_ed25519_token", |b| {
        b.iter(|| verifier.verify(std::hint::black_box(&token), now, &empty))
    });
    g.bench_function("verify_ed25519_token_11k_revocations", |b| {
        b.iter(|| verifier.verify(std::hint::black_box(&token), now, &revoked))
    });
    g.bench_function("reject_bad_signature", |b| {
        b.iter(|| verifier.verify(std::hint::black_box(&tampered), now, &empty))
    });
    g.finish();
}

criterion_group! {
    name = tokens;
    config = common::criterion();
    targets = benches
}
criterion_main!(tokens);
