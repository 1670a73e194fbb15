//! The signed-snapshot envelope and `Any` handling on bad input.

use std::time::{Duration, SystemTime};

use prost::Message;
use prost_types::Any;
use tappass_xds::pb::tappass::v1::{
    PolicySnapshot, Revocations, RevocationsPayload, RevokedSandbox, RevokedToken,
};
use tappass_xds::types::{REVOCATIONS, SIGNED_POLICY_JSON};
use tappass_xds::{
    pack, resource_name, unpack, EnvelopeError, Expect, SignedResource, SnapshotSigner,
    SnapshotVerifier,
};

fn now() -> SystemTime {
    SystemTime::now()
}

fn setup() -> (SnapshotSigner, SnapshotVerifier, PolicySnapshot) {
    let s = SnapshotSigner::from_seed([1; 32]);
    let v = SnapshotVerifier::new([s.verifying_key()]);
    let r: PolicySnapshot =
        s.resource("agent-a", 5, now(), Duration::from_secs(60), b"{}".to_vec());
    (s, v, r)
}

#[test]
fn valid_snapshot_verifies() {
    let (s, v, r) = setup();
    let ok = v.verify_resource(&r, Some(4), now()).unwrap();
    assert_eq!(ok.version, 5);
    assert_eq!(ok.payload, b"{}");
    assert_eq!(ok.key_id, s.key_id());
    assert_eq!(s.key_id().len(), 16);
    assert_eq!(PolicySnapshot::payload_type(), SIGNED_POLICY_JSON);
}

#[test]
fn every_tampering_is_refused() {
    let (_, v, r) = setup();
    let check = |m: &dyn Fn(&mut PolicySnapshot)| {
        let mut t = r.clone();
        m(&mut t);
        v.verify_resource(&t, None, now()).unwrap_err()
    };
    assert_eq!(
        check(&|t| t.snapshot.as_mut().unwrap().payload = b"{\"x\":1}".to_vec()),
        EnvelopeError::BadSignature
    );
    assert_eq!(
        check(&|t| t.snapshot.as_mut().unwrap().version = 6),
        EnvelopeError::BadSignature
    );
    assert_eq!(
        check(
            &|t| t.snapshot.as_mut().unwrap().ttl = Some(prost_types::Duration {
                seconds: 999_999,
                nanos: 0
            })
        ),
        EnvelopeError::BadSignature
    );
    assert_eq!(
        check(&|t| t.snapshot.as_mut().unwrap().subject = "agent-b".into()),
        EnvelopeError::BadSignature
    );
    assert_eq!(
        check(&|t| t.snapshot.as_mut().unwrap().signature.truncate(10)),
        EnvelopeError::MalformedSignature
    );
    assert_eq!(
        check(&|t| t.snapshot.as_mut().unwrap().alg = "none".into()),
        EnvelopeError::Algorithm("none".into())
    );
    assert!(matches!(
        check(&|t| t.snapshot.as_mut().unwrap().key_id = "0000000000000000".into()),
        EnvelopeError::UnknownKey(_)
    ));
    assert_eq!(
        check(&|t| t.snapshot = None),
        EnvelopeError::MissingSnapshot
    );
    // Renaming the resource: the signed subject no longer matches.
    assert!(matches!(
        check(&|t| t.name = "agent-b".into()),
        EnvelopeError::Subject { .. }
    ));
}

#[test]
fn unknown_key_replay_expiry_and_future_are_refused() {
    let (_, v, r) = setup();
    let other = SnapshotSigner::from_seed([2; 32]);
    let forged: PolicySnapshot =
        other.resource("agent-a", 9, now(), Duration::from_secs(60), b"{}".to_vec());
    assert!(matches!(
        v.verify_resource(&forged, None, now()),
        Err(EnvelopeError::UnknownKey(_))
    ));
    // Replay of the held version or an older one.
    assert_eq!(
        v.verify_resource(&r, Some(5), now()).unwrap_err(),
        EnvelopeError::NotNewer {
            version: 5,
            held: 5
        }
    );
    assert!(v.verify_resource(&r, Some(9), now()).is_err());
    // Past the TTL.
    let later = now() + Duration::from_secs(61);
    assert!(matches!(
        v.verify_resource(&r, None, later),
        Err(EnvelopeError::Expired { .. })
    ));
    // Issued too far in the future.
    let earlier = now() - Duration::from_secs(3600);
    assert!(matches!(
        v.verify_resource(&r, None, earlier),
        Err(EnvelopeError::FromTheFuture { .. })
    ));
}

#[test]
fn protobuf_payloads_round_trip_and_payload_type_is_checked() {
    let s = SnapshotSigner::from_seed([3; 32]);
    let v = SnapshotVerifier::new([s.verifying_key()]);
    let payload = RevocationsPayload {
        tokens: vec![RevokedToken {
            jti: "j1".into(),
            expires_at: Some(now().into()),
        }],
        sandboxes: vec![RevokedSandbox {
            sandbox_id: "sb".into(),
            expires_at: None,
        }],
    };
    let snap = s.seal_message("revocations", 1, now(), Duration::from_secs(60), &payload);
    let r = Revocations {
        name: "revocations".into(),
        snapshot: Some(snap.clone()),
    };
    let any = pack(&r);
    assert_eq!(any.type_url, REVOCATIONS);
    let back: Revocations = unpack(&any).unwrap();
    let ok = v.verify_resource(&back, None, now()).unwrap();
    assert_eq!(ok.decode::<RevocationsPayload>().unwrap(), payload);
    // The same snapshot presented as a policy is refused for its payload type.
    let p = PolicySnapshot {
        name: "revocations".into(),
        snapshot: Some(snap),
    };
    assert!(matches!(
        v.verify_resource(&p, None, now()),
        Err(EnvelopeError::PayloadType { .. })
    ));
    let e = v
        .verify(
            back.snapshot.as_ref().unwrap(),
            &Expect {
                payload_type: "x",
                subject: None,
                newer_than: None,
                now: now(),
            },
        )
        .unwrap_err();
    assert!(matches!(e, EnvelopeError::PayloadType { .. }));
}

#[test]
fn malformed_any_never_panics() {
    let garbage = [
        vec![],
        vec![0xff; 64],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x08, 0x01],
        vec![0x0a, 0x02, 0xc3, 0x28],
    ];
    for g in garbage {
        let any = Any {
            type_url: REVOCATIONS.into(),
            value: g.clone(),
        };
        let _ = resource_name(&any);
        let _ = unpack::<Revocations>(&any);
        let _ = PolicySnapshot::decode(g.as_slice());
    }
    let wrong = Any {
        type_url: "type.googleapis.com/other.Type".into(),
        value: vec![],
    };
    assert!(unpack::<Revocations>(&wrong).is_err());
    assert_eq!(
        resource_name(&pack(&Revocations {
            name: "n".into(),
            snapshot: None
        }))
        .as_deref(),
        Some("n")
    );
}

#[test]
fn descriptor_set_lists_the_protos() {
    let fds = prost_types::FileDescriptorSet::decode(tappass_xds::FILE_DESCRIPTOR_SET).unwrap();
    let names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    for want in [
        "envoy/service/discovery/v3/ads.proto",
        "tappass/v1/resources.proto",
        "tappass/v1/envelope.proto",
        "google/rpc/status.proto",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}
