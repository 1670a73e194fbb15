//! The real RocksDB WAL: durability across reopen, tamper detection,
//! retention and erasure, per-row signing, concurrent appends.

use std::path::Path;
use std::time::Duration;

use tappass_audit::chain::{self, CheckpointKind, SealedRow};
use tappass_audit::verify::{verify_dir, VerifyOptions, VerifyReport};
use tappass_audit::wal::open_raw_for_tests;
use tappass_audit::{AuditKey, AuditRecord, AuditWal, Jwks, Retention, SigningMode, WalConfig};

fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::new("gw-test", &format!("trace-{i}"));
    r.endpoint = "chat_completions".into();
    r.model = Some("mock-gpt".into());
    r.status = 200;
    r.started_at_ms = 1_700_000_000_000 + i;
    r.ended_at_ms = 1_700_000_000_100 + i;
    r
}

fn config(dir: &Path) -> WalConfig {
    WalConfig::new(dir, "gw-test")
}

fn write_rows(wal: &AuditWal, range: std::ops::Range<u64>) {
    let acks: Vec<_> = range
        .map(|i| wal.append_blocking(record(i)).unwrap())
        .collect();
    for a in acks {
        a.blocking_recv().unwrap().unwrap();
    }
}

fn verify(dir: &Path, key: &AuditKey) -> VerifyReport {
    verify_dir(dir, &Jwks::from_key(key), &VerifyOptions::default()).unwrap()
}

fn key_of(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[test]
fn rows_survive_reopen_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let wal = AuditWal::open(config(dir.path()), key.clone()).unwrap();
    write_rows(&wal, 0..10);
    assert_eq!(wal.head().seq, 10);
    wal.close();
    let wal = AuditWal::open(config(dir.path()), key.clone()).unwrap();
    write_rows(&wal, 10..15);
    assert_eq!(wal.head().seq, 15);
    wal.close();
    let r = verify(dir.path(), &key);
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.first_seq, r.last_seq, r.rows), (Some(1), Some(15), 15));
    assert_eq!(
        r.unsigned_tail, 0,
        "closing seals the chain with a checkpoint"
    );
    // The published JWKS beside the WAL verifies it.
    let jwks =
        Jwks::from_json(&std::fs::read_to_string(dir.path().join("jwks.json")).unwrap()).unwrap();
    assert!(verify_dir(dir.path(), &jwks, &VerifyOptions::default())
        .unwrap()
        .ok());
}

fn tampered(mutate: impl FnOnce(&rocksdb::DB)) -> (VerifyReport, AuditKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let wal = AuditWal::open(config(dir.path()), key.clone()).unwrap();
    write_rows(&wal, 0..8);
    wal.close();
    {
        let db = open_raw_for_tests(dir.path()).unwrap();
        mutate(&db);
    }
    let r = verify(dir.path(), &key);
    (r, key)
}

fn rows(db: &rocksdb::DB) -> &rocksdb::ColumnFamily {
    db.cf_handle("rows").unwrap()
}

#[test]
fn a_changed_byte_is_found_and_named() {
    let (r, _) = tampered(|db| {
        let mut v = db.get_cf(rows(db), key_of(5)).unwrap().unwrap();
        let at = v.windows(8).position(|w| w == b"mock-gpt").unwrap();
        v[at] = b'M';
        db.put_cf(rows(db), key_of(5), v).unwrap();
    });
    let f = r.failure.expect("tamper detected");
    assert_eq!(f.seq, 5);
    assert!(f.reason.contains("body"), "{}", f.reason);
}

#[test]
fn a_deleted_row_is_found_and_named() {
    let (r, _) = tampered(|db| db.delete_cf(rows(db), key_of(4)).unwrap());
    let f = r.failure.expect("deletion detected");
    assert_eq!(f.seq, 4);
    assert!(f.reason.contains("deleted"), "{}", f.reason);
}

#[test]
fn reordered_rows_are_found() {
    let (r, _) = tampered(|db| {
        let a = db.get_cf(rows(db), key_of(3)).unwrap().unwrap();
        let b = db.get_cf(rows(db), key_of(4)).unwrap().unwrap();
        db.put_cf(rows(db), key_of(3), b).unwrap();
        db.put_cf(rows(db), key_of(4), a).unwrap();
    });
    assert_eq!(r.failure.expect("reorder detected").seq, 3);
}

#[test]
fn a_cut_tail_is_found_even_when_resigned_with_a_foreign_key() {
    // Cut rows 6..8 but leave the checkpoints: they reach past the end.
    let (r, _) = tampered(|db| {
        for s in 6..=8 {
            db.delete_cf(rows(db), key_of(s)).unwrap();
        }
    });
    let f = r.failure.expect("cut tail detected");
    assert_eq!(f.seq, 6);
    // Cut the tail, drop the checkpoints, and sign a new head with a foreign key.
    let (r, _) = tampered(|db| {
        let cps = db.cf_handle("checkpoints").unwrap();
        for s in 6..=8 {
            db.delete_cf(rows(db), key_of(s)).unwrap();
            db.delete_cf(cps, key_of(s)).unwrap();
        }
        let v = db.get_cf(rows(db), key_of(5)).unwrap().unwrap();
        let row: SealedRow = serde_json::from_slice(&v).unwrap();
        let foreign = AuditKey::generate();
        let cp = chain::checkpoint(
            5,
            &row.hash,
            1,
            CheckpointKind::Shutdown,
            "gw-test",
            &foreign,
        );
        db.put_cf(cps, key_of(5), serde_json::to_vec(&cp).unwrap())
            .unwrap();
    });
    let f = r.failure.expect("foreign signature detected");
    assert_eq!(f.seq, 5);
    assert!(f.reason.contains("unknown key"), "{}", f.reason);
}

#[test]
fn a_cut_tail_without_any_checkpoint_is_found_with_the_expected_head() {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let wal = AuditWal::open(config(dir.path()), key.clone()).unwrap();
    write_rows(&wal, 0..8);
    let head = wal.head();
    wal.close();
    {
        let db = open_raw_for_tests(dir.path()).unwrap();
        let cps = db.cf_handle("checkpoints").unwrap();
        for s in 7..=8 {
            db.delete_cf(rows(&db), key_of(s)).unwrap();
        }
        for s in 1..=8 {
            db.delete_cf(cps, key_of(s)).unwrap();
        }
    }
    let opts = VerifyOptions {
        expect_head: Some((head.seq, head.hash)),
        ..VerifyOptions::default()
    };
    let r = verify_dir(dir.path(), &Jwks::from_key(&key), &opts).unwrap();
    assert_eq!(r.failure.expect("cut detected").seq, 7);
}

#[test]
fn retention_cut_and_erasure_keep_the_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let wal = AuditWal::open(config(dir.path()), key.clone()).unwrap();
    write_rows(&wal, 0..20);
    assert_eq!(wal.prune_blocking(5).unwrap(), 5);
    wal.erase_blocking(8, "GDPR Art. 17, ticket 1234").unwrap();
    write_rows(&wal, 20..22);
    wal.close();
    let r = verify(dir.path(), &key);
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        (r.first_seq, r.last_seq, r.rows, r.erased),
        (Some(6), Some(22), 17, 1)
    );
    let reader = tappass_audit::WalReader::open(dir.path()).unwrap();
    let row8 = reader.rows(8).unwrap().next().unwrap().unwrap();
    assert!(row8.body.is_none() && row8.erased.is_some());
    // A forged cut (signed by someone else) is refused.
    drop(reader);
    {
        let db = open_raw_for_tests(dir.path()).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        let v = db.get_cf(meta, b"cut").unwrap().unwrap();
        let mut cut: chain::Checkpoint = serde_json::from_slice(&v).unwrap();
        cut = chain::checkpoint(
            cut.seq,
            &cut.hash,
            cut.at_ms,
            cut.kind,
            "gw-test",
            &AuditKey::generate(),
        );
        db.put_cf(meta, b"cut", serde_json::to_vec(&cut).unwrap())
            .unwrap();
    }
    assert!(!verify(dir.path(), &key).ok());
}

#[test]
fn configured_retention_cuts_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let mut cfg = config(dir.path());
    cfg.retention = Retention {
        max_rows: Some(10),
        max_age: None,
    };
    let wal = AuditWal::open(cfg, key.clone()).unwrap();
    write_rows(&wal, 0..35);
    wal.close();
    let r = verify(dir.path(), &key);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.last_seq, Some(35));
    assert!(r.rows <= 10 + 1, "kept {} rows", r.rows);
    // Age-based: every test row is from 2023, far beyond a one-hour limit.
    let mut cfg = config(dir.path());
    cfg.retention = Retention {
        max_rows: None,
        max_age: Some(Duration::from_secs(3600)),
    };
    let wal = AuditWal::open(cfg, key.clone()).unwrap();
    write_rows(&wal, 35..37);
    wal.close();
    let r = verify(dir.path(), &key);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.rows, 0);
}

#[test]
fn per_row_signing_signs_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let mut cfg = config(dir.path());
    cfg.signing = SigningMode::PerRow;
    let wal = AuditWal::open(cfg, key.clone()).unwrap();
    write_rows(&wal, 0..5);
    wal.close();
    let reader = tappass_audit::WalReader::open(dir.path()).unwrap();
    assert!(reader
        .rows(0)
        .unwrap()
        .all(|r| r.unwrap().mandate.is_some()));
    drop(reader);
    let r = verify(dir.path(), &key);
    assert!(r.ok() && r.unsigned_tail == 0, "{r:?}");
    let other = AuditKey::generate();
    assert!(
        !verify(dir.path(), &other).ok(),
        "another key must not verify"
    );
}

#[test]
fn concurrent_appends_get_unique_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let wal = std::sync::Arc::new(AuditWal::open(config(dir.path()), key.clone()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| wal.append_blocking(record(t * 1000 + i)).unwrap())
                    .map(|a| a.blocking_recv().unwrap().unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=2000).collect::<Vec<u64>>());
    std::sync::Arc::try_unwrap(wal).ok().unwrap().close();
    assert!(verify(dir.path(), &key).ok());
}

#[test]
fn a_key_rotation_keeps_the_chain_verifiable_with_both_keys() {
    for signing in [
        SigningMode::PerRow,
        SigningMode::Checkpoint {
            every_rows: 1000,
            every: Duration::from_secs(3600),
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (AuditKey::generate(), AuditKey::generate());
        let mut cfg = config(dir.path());
        cfg.signing = signing;
        let wal = AuditWal::open(cfg, old.clone()).unwrap();
        write_rows(&wal, 0..5);
        let jwks_file = dir.path().join(tappass_audit::keys::JWKS_FILE);
        tappass_audit::keys::publish_public_key(&jwks_file, &new).unwrap();
        let head = wal.rotate_key_blocking(new.clone()).unwrap();
        assert_eq!((head.seq, head.signed_seq), (5, 5), "{signing:?}");
        assert_eq!(wal.key_id(), new.kid());
        write_rows(&wal, 5..9);
        wal.close();

        let reader = tappass_audit::WalReader::open(dir.path()).unwrap();
        let cps = reader.checkpoints().unwrap();
        let rotation = cps
            .iter()
            .find(|c| c.kind == CheckpointKind::KeyRotation)
            .expect("a key_rotation checkpoint");
        assert_eq!(
            (rotation.seq, rotation.mandate.key_id.as_str()),
            (5, old.kid())
        );
        let last = cps.last().unwrap();
        assert_eq!((last.seq, last.mandate.key_id.as_str()), (9, new.kid()));
        drop(reader);

        // The published key set (both keys) verifies across the rotation.
        let both = Jwks::from_json(&std::fs::read_to_string(&jwks_file).unwrap()).unwrap();
        let r = verify_dir(dir.path(), &both, &VerifyOptions::default()).unwrap();
        assert!(r.ok(), "{signing:?}: {r:?}");
        assert_eq!((r.rows, r.unsigned_tail), (9, 0));
        // Either key alone does not.
        for k in [&old, &new] {
            let r = verify(dir.path(), k);
            assert!(!r.ok(), "{signing:?}: one key verified both halves");
        }
        // Reopening with the new key continues the chain.
        let mut cfg = config(dir.path());
        cfg.signing = signing;
        let wal = AuditWal::open(cfg, new.clone()).unwrap();
        write_rows(&wal, 9..11);
        wal.close();
        let both = Jwks::from_json(&std::fs::read_to_string(&jwks_file).unwrap()).unwrap();
        let r = verify_dir(dir.path(), &both, &VerifyOptions::default()).unwrap();
        assert!(r.ok() && r.rows == 11, "{r:?}");
    }
}
