//! Signing: round trip, tamper detection, wrong keys, monotonic versions.

mod common;

use tappass_policies::sign::{key_id, SignedPolicy};
use tappass_policies::{keypair_from_seed, sign, verify, PublicKeyFile, SecretKeyFile};

fn keys(seed: u8) -> (SecretKeyFile, PublicKeyFile) {
    keypair_from_seed([seed; 32])
}

fn signed_json(version: u64) -> (String, PublicKeyFile) {
    let (sk, pk) = keys(7);
    let mut p = common::compile_example("refund-bot").policy;
    p.identity.policy_version = version;
    (sign(&p, &sk).unwrap().to_canonical_json().unwrap(), pk)
}

#[test]
fn sign_and_verify_round_trip() {
    let (json, pk) = signed_json(3);
    let p = verify(&json, std::slice::from_ref(&pk), None).unwrap();
    assert_eq!(p.identity.agent, "refund-bot");
    let env: SignedPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(env.signature.key_id, pk.key_id);
    assert_eq!(env.signature.alg, "Ed25519");
    assert_eq!(pk.key_id, key_id(&pk.verifying_key().unwrap()));
    assert_eq!(pk.key_id.len(), 16);
    // Signing is deterministic (Ed25519) and canonical.
    assert_eq!(json, signed_json(3).0);
    // Pretty-printing the envelope does not break verification (canonical payload).
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&json).unwrap())
            .unwrap();
    assert!(verify(&pretty, &[pk], None).is_ok());
}

#[test]
fn any_payload_change_fails() {
    let (json, pk) = signed_json(3);
    for (from, to) in [
        ("\"refund-bot\"", "\"refund-bog\""),
        ("\"max_amount\":1000", "\"max_amount\":1001"),
        ("\"read_only\":false", "\"read_only\":true"),
    ] {
        assert!(json.contains(from), "{from}");
        let tampered = json.replacen(from, to, 1);
        let err = verify(&tampered, std::slice::from_ref(&pk), None).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{from}: {err}");
    }
}

#[test]
fn flipped_bytes_anywhere_never_verify_and_never_panic() {
    let (json, pk) = signed_json(3);
    let bytes = json.as_bytes();
    // Flip one bit at many positions across payload and signature.
    let step = (bytes.len() / 150).max(1);
    let mut checked = 0;
    for i in (0..bytes.len()).step_by(step) {
        let mut b = bytes.to_vec();
        b[i] ^= 0x01;
        let Ok(s) = String::from_utf8(b) else {
            continue;
        };
        if let Ok(p) = verify(&s, std::slice::from_ref(&pk), None) {
            // Only whitespace-insignificant flips could pass; canonical JSON has none.
            panic!("flip at {i} verified: {:?}", p.identity);
        }
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn signature_byte_flip_fails() {
    let (json, pk) = signed_json(3);
    let mut env: serde_json::Value = serde_json::from_str(&json).unwrap();
    let sig = env["signature"]["sig"].as_str().unwrap().to_string();
    use base64::Engine as _;
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&sig)
        .unwrap();
    raw[10] ^= 0x80;
    env["signature"]["sig"] = base64::engine::general_purpose::STANDARD.encode(raw).into();
    let err = verify(&env.to_string(), &[pk], None).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn wrong_or_untrusted_key_fails() {
    let (json, _pk) = signed_json(3);
    let (_, other) = keys(9);
    let err = verify(&json, std::slice::from_ref(&other), None).unwrap_err();
    assert!(err.to_string().contains("not trusted"), "{err}");
    // Same key id claimed, different key material.
    let (_, real) = keys(7);
    let forged = PublicKeyFile {
        key_id: real.key_id.clone(),
        ..other
    };
    let err = verify(&json, &[forged], None).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(verify(&json, &[], None).is_err());
}

#[test]
fn versions_must_increase() {
    let (json, pk) = signed_json(5);
    assert!(verify(&json, std::slice::from_ref(&pk), Some(4)).is_ok());
    let err = verify(&json, std::slice::from_ref(&pk), Some(5)).unwrap_err();
    assert!(err.to_string().contains("not newer"), "{err}");
    assert!(verify(&json, &[pk], Some(9)).is_err());
}

#[test]
fn malformed_envelopes_and_keys_are_errors() {
    let (_, pk) = keys(7);
    let unsigned = common::compile_example("refund-bot")
        .policy
        .to_canonical_json()
        .unwrap();
    assert!(verify(&unsigned, std::slice::from_ref(&pk), None)
        .unwrap_err()
        .to_string()
        .contains("no payload"));
    for bad in [
        "",
        "null",
        "[]",
        "{\"payload\":{},\"signature\":{}}",
        "{\"payload\":1,\"signature\":{\"alg\":\"Ed25519\",\"key_id\":\"x\",\"sig\":\"!!\"}}",
    ] {
        assert!(
            verify(bad, std::slice::from_ref(&pk), None).is_err(),
            "{bad}"
        );
    }
    assert!(SecretKeyFile::parse("{}").is_err());
    assert!(PublicKeyFile::parse(
        "{\"alg\":\"Ed25519\",\"key_id\":\"00\",\"public_key\":\"AAAA\"}"
    )
    .is_err());
    let (sk, pk2) = keys(1);
    assert_eq!(
        SecretKeyFile::parse(&serde_json::to_string(&sk).unwrap()).unwrap(),
        sk
    );
    assert_eq!(
        PublicKeyFile::parse(&serde_json::to_string(&pk2).unwrap()).unwrap(),
        pk2
    );
    let mut wrong_id = pk2.clone();
    wrong_id.key_id = "0000000000000000".into();
    assert!(PublicKeyFile::parse(&serde_json::to_string(&wrong_id).unwrap()).is_err());
}
