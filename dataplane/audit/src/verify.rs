//! Offline verification of a WAL: every link, every hash, every signature,
//! and the checkpoints against the rows they cover.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::chain::{self, Checkpoint, SealedRow, GENESIS_HASH};
use crate::keys::Jwks;
use crate::wal::WalReader;
use crate::AuditError;

/// The first problem found, by row sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    pub seq: u64,
    pub reason: String,
}

/// Outcome of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub head_hash: Option<String>,
    pub rows: u64,
    pub erased: u64,
    pub checkpoints: u64,
    /// Highest row covered by a valid signature (row or checkpoint).
    pub last_signed_seq: Option<u64>,
    /// Rows after the last signature (written since the last checkpoint).
    pub unsigned_tail: u64,
    pub failure: Option<VerifyFailure>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Options of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Fail when rows after the last signature exist.
    pub require_signed_tail: bool,
    /// The head the auditor expects (from the control plane's list of
    /// chain heads): detects a cut-off tail even when its checkpoints were
    /// removed too.
    pub expect_head: Option<(u64, String)>,
}

/// Verify the WAL in `dir` against the public keys in `jwks`.
pub fn verify_dir(
    dir: &Path,
    jwks: &Jwks,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let reader = WalReader::open(dir)?;
    verify(&reader, jwks, opts)
}

pub fn verify(
    reader: &WalReader,
    jwks: &Jwks,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let mut report = VerifyReport::default();
    let fail = |report: &mut VerifyReport, seq: u64, reason: String| {
        report.failure = Some(VerifyFailure { seq, reason });
    };

    let (mut expected_seq, mut expected_prev) = (1, GENESIS_HASH.to_string());
    if let Some(cut) = reader.retention_cut()? {
        if let Err(why) = chain::check_checkpoint(&cut, jwks) {
            fail(
                &mut report,
                cut.seq,
                format!("retention cut checkpoint: {why}"),
            );
            return Ok(report);
        }
        expected_seq = cut.seq + 1;
        expected_prev = cut.hash.clone();
        report.last_signed_seq = Some(cut.seq);
    }
    let mut checkpoints: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    for cp in reader.checkpoints()? {
        if let Err(why) = chain::check_checkpoint(&cp, jwks) {
            fail(
                &mut report,
                cp.seq,
                format!("checkpoint at row {}: {why}", cp.seq),
            );
            return Ok(report);
        }
        checkpoints.insert(cp.seq, cp);
    }
    report.checkpoints = checkpoints.len() as u64;

    for item in reader.raw_rows(0)? {
        let (key_seq, bytes) = item?;
        let row: SealedRow = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                fail(
                    &mut report,
                    key_seq,
                    format!("row is not a valid sealed row: {e}"),
                );
                return Ok(report);
            }
        };
        if row.seq != key_seq {
            fail(
                &mut report,
                key_seq,
                format!(
                    "row stored under {key_seq} says it is row {} (rows were moved)",
                    row.seq
                ),
            );
            return Ok(report);
        }
        if let Err(why) = chain::check_row(&row, expected_seq, &expected_prev, jwks, false) {
            let at = if row.seq > expected_seq {
                expected_seq
            } else {
                row.seq
            };
            fail(&mut report, at, why);
            return Ok(report);
        }
        if let Some(cp) = checkpoints.get(&row.seq) {
            if cp.hash != row.hash {
                fail(
                    &mut report,
                    row.seq,
                    "checkpoint does not match the row's hash".into(),
                );
                return Ok(report);
            }
        }
        if row.mandate.is_some() || checkpoints.contains_key(&row.seq) {
            report.last_signed_seq = Some(row.seq);
        }
        report.first_seq.get_or_insert(row.seq);
        report.last_seq = Some(row.seq);
        report.rows += 1;
        if row.erased.is_some() {
            report.erased += 1;
        }
        expected_seq = row.seq + 1;
        expected_prev = row.hash;
    }
    report.head_hash = report.last_seq.map(|_| expected_prev.clone());

    let last = report.last_seq.unwrap_or(expected_seq - 1);
    if let Some((&seq, _)) = checkpoints.range(last + 1..).next() {
        fail(
            &mut report,
            last + 1,
            format!("a signed checkpoint covers row {seq}, but the log ends at row {last} (rows were cut off the end)"),
        );
        return Ok(report);
    }
    if let Some((seq, hash)) = &opts.expect_head {
        if last < *seq {
            fail(
                &mut report,
                last + 1,
                format!("expected the log to reach row {seq}; it ends at row {last}"),
            );
            return Ok(report);
        }
        if last == *seq && report.head_hash.as_deref() != Some(hash.as_str()) {
            fail(
                &mut report,
                *seq,
                "the head hash differs from the expected one".into(),
            );
            return Ok(report);
        }
    }
    report.unsigned_tail = last - report.last_signed_seq.unwrap_or(0).min(last);
    if opts.require_signed_tail && report.unsigned_tail > 0 {
        let at = report.last_signed_seq.unwrap_or(0) + 1;
        let reason = format!("{} rows after the last signature", report.unsigned_tail);
        fail(&mut report, at, reason);
    }
    Ok(report)
}
