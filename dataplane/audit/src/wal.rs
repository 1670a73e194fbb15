//! The audit write-ahead log in RocksDB.
//!
//! Column families: `rows` (key: sequence number, 8 bytes big-endian; value:
//! a [`SealedRow`] as JSON), `checkpoints` (same keys; value: a
//! [`Checkpoint`]), `meta` (`cut`: the retention-cut checkpoint).
//!
//! One dedicated writer thread owns all writes. Callers enqueue records
//! without blocking ([`AuditWal::try_append`]); the writer takes everything
//! queued (group commit), seals the rows into the chain, writes them in one
//! synced `WriteBatch`, and only then acknowledges each row. An acknowledged
//! row therefore survives `kill -9` and power loss; no call waits on a flush
//! of its own.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use crate::chain::{self, Checkpoint, CheckpointKind, SealedRow, GENESIS_HASH};
use crate::keys::AuditKey;
use crate::record::AuditRecord;
use crate::AuditError;

const CF_ROWS: &str = "rows";
const CF_CHECKPOINTS: &str = "checkpoints";
const CF_META: &str = "meta";
const META_CUT: &[u8] = b"cut";

/// How rows are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningMode {
    /// An Ed25519 signature on every row.
    PerRow,
    /// A signed checkpoint over the chain head every `every_rows` rows or
    /// `every` time, whichever comes first (and at shutdown).
    Checkpoint { every_rows: u64, every: Duration },
}

/// Retention limits; rows beyond them are cut at the next checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_rows: Option<u64>,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub gateway_id: String,
    pub signing: SigningMode,
    pub retention: Retention,
    /// Records that may wait in the queue before appends report `Full`.
    pub queue_capacity: usize,
    /// Most rows in one synced batch.
    pub max_batch: usize,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>, gateway_id: &str) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            gateway_id: gateway_id.into(),
            signing: SigningMode::Checkpoint {
                every_rows: 1000,
                every: Duration::from_millis(1000),
            },
            retention: Retention::default(),
            queue_capacity: 65_536,
            max_batch: 4096,
        }
    }
}

/// The chain head: last sequence number and its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    /// Last sequence number covered by a signature.
    pub signed_seq: u64,
}

/// Resolves when the row is durable: its sequence number, or the error that
/// kept it from being written.
pub type Ack = oneshot::Receiver<Result<u64, String>>;

enum Msg {
    Append(Box<AuditRecord>, oneshot::Sender<Result<u64, String>>),
    Erase {
        seq: u64,
        reason: String,
        done: oneshot::Sender<Result<(), String>>,
    },
    Prune {
        through_seq: u64,
        done: oneshot::Sender<Result<u64, String>>,
    },
    Rotate {
        key: Box<AuditKey>,
        done: oneshot::Sender<Result<Head, String>>,
    },
}

/// A record that could not be queued, handed back to the caller.
#[derive(Debug)]
pub enum TryAppendError {
    /// The queue is full: retry shortly (backpressure).
    Full(Box<AuditRecord>),
    /// The writer has stopped (after a write error or shutdown).
    Closed,
}

/// Handle to an open audit WAL.
pub struct AuditWal {
    tx: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<()>>,
    head: Arc<Mutex<Head>>,
    key: Arc<Mutex<AuditKey>>,
    dir: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn db_options(create: bool) -> Options {
    let mut o = Options::default();
    o.create_if_missing(create);
    o.create_missing_column_families(create);
    o
}

fn cfs() -> Vec<ColumnFamilyDescriptor> {
    [CF_ROWS, CF_CHECKPOINTS, CF_META]
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, Options::default()))
        .collect()
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, AuditError> {
    db.cf_handle(name)
        .ok_or_else(|| AuditError::Corrupt(format!("column family `{name}` is missing")))
}

/// Last row and last checkpoint of a WAL: the head to continue from.
fn recover_head(db: &DB) -> Result<Head, AuditError> {
    let rows = cf(db, CF_ROWS)?;
    let mut head = Head {
        seq: 0,
        hash: GENESIS_HASH.to_string(),
        signed_seq: 0,
    };
    if let Some(cut) = db.get_cf(cf(db, CF_META)?, META_CUT)? {
        let cut: Checkpoint = serde_json::from_slice(&cut)
            .map_err(|e| AuditError::Corrupt(format!("retention cut: {e}")))?;
        head.seq = cut.seq;
        head.hash = cut.hash.clone();
        head.signed_seq = cut.seq;
    }
    if let Some(item) = db.iterator_cf(rows, IteratorMode::End).next() {
        let (_, value) = item?;
        let row: SealedRow = serde_json::from_slice(&value)
            .map_err(|e| AuditError::Corrupt(format!("last row: {e}")))?;
        head.seq = row.seq;
        head.hash = row.hash;
        if row.mandate.is_some() {
            head.signed_seq = row.seq;
        }
    }
    if let Some(item) = db
        .iterator_cf(cf(db, CF_CHECKPOINTS)?, IteratorMode::End)
        .next()
    {
        let (_, value) = item?;
        let cp: Checkpoint = serde_json::from_slice(&value)
            .map_err(|e| AuditError::Corrupt(format!("last checkpoint: {e}")))?;
        head.signed_seq = head.signed_seq.max(cp.seq.min(head.seq));
    }
    Ok(head)
}

impl AuditWal {
    /// Open (or create) the WAL in `config.dir`, signing with `key`. The
    /// chain continues from the last row on disk; rows left unsigned by a
    /// crash are covered by a checkpoint right away.
    pub fn open(config: WalConfig, key: AuditKey) -> Result<AuditWal, AuditError> {
        std::fs::create_dir_all(&config.dir)?;
        let db = DB::open_cf_descriptors(&db_options(true), config.dir.join("wal"), cfs())?;
        let head = recover_head(&db)?;
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let shared = Arc::new(Mutex::new(head.clone()));
        let shared_key = Arc::new(Mutex::new(key.clone()));
        // Publish the public key beside the WAL for verifiers (keys used
        // before stay in the set, so older rows still verify).
        crate::keys::publish_public_key(&config.dir.join(crate::keys::JWKS_FILE), &key)?;
        let mut writer = Writer {
            db,
            key,
            shared_key: shared_key.clone(),
            config: config.clone(),
            head,
            shared: shared.clone(),
            last_checkpoint: Instant::now(),
        };
        if writer.head.signed_seq < writer.head.seq {
            writer.write_checkpoint(CheckpointKind::Periodic)?;
        }
        let handle = std::thread::Builder::new()
            .name("tappass-audit-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(AuditWal {
            tx: Some(tx),
            writer: Some(handle),
            head: shared,
            key: shared_key,
            dir: config.dir,
        })
    }

    /// Queue a record without blocking.
    pub fn try_append(&self, record: AuditRecord) -> Result<Ack, TryAppendError> {
        let Some(tx) = &self.tx else {
            return Err(TryAppendError::Closed);
        };
        let (done, ack) = oneshot::channel();
        match tx.try_send(Msg::Append(Box::new(record), done)) {
            Ok(()) => Ok(ack),
            Err(TrySendError::Full(Msg::Append(r, _))) => Err(TryAppendError::Full(r)),
            Err(_) => Err(TryAppendError::Closed),
        }
    }

    /// Queue a record, waiting (blocking this thread) while the queue is full.
    pub fn append_blocking(&self, record: AuditRecord) -> Result<Ack, AuditError> {
        let mut record = record;
        loop {
            match self.try_append(record) {
                Ok(ack) => return Ok(ack),
                Err(TryAppendError::Full(r)) => {
                    record = *r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(TryAppendError::Closed) => return Err(AuditError::Closed),
            }
        }
    }

    /// Replace row `seq`'s body with a signed tombstone.
    pub fn erase_blocking(&self, seq: u64, reason: &str) -> Result<(), AuditError> {
        let (done, rx) = oneshot::channel();
        self.send(Msg::Erase {
            seq,
            reason: reason.into(),
            done,
        })?;
        rx.blocking_recv()
            .map_err(|_| AuditError::Closed)?
            .map_err(AuditError::Write)
    }

    /// Delete rows through `seq`, sealing the cut with a signed checkpoint.
    /// Returns how many rows were deleted.
    pub fn prune_blocking(&self, through_seq: u64) -> Result<u64, AuditError> {
        let (done, rx) = oneshot::channel();
        self.send(Msg::Prune { through_seq, done })?;
        rx.blocking_recv()
            .map_err(|_| AuditError::Closed)?
            .map_err(AuditError::Write)
    }

    /// Switch to `key`: everything queued before is written, the chain head
    /// is sealed with a `key_rotation` checkpoint signed by the current key,
    /// and later rows, checkpoints and tombstones are signed by `key`.
    /// Publish `key`'s public half (`jwks.json`) before calling this.
    /// Resolves to the head the rotation checkpoint covers.
    pub fn rotate_key(
        &self,
        key: AuditKey,
    ) -> Result<oneshot::Receiver<Result<Head, String>>, AuditError> {
        let (done, rx) = oneshot::channel();
        self.send(Msg::Rotate {
            key: Box::new(key),
            done,
        })?;
        Ok(rx)
    }

    /// [`AuditWal::rotate_key`], waiting (blocking this thread).
    pub fn rotate_key_blocking(&self, key: AuditKey) -> Result<Head, AuditError> {
        self.rotate_key(key)?
            .blocking_recv()
            .map_err(|_| AuditError::Closed)?
            .map_err(AuditError::Write)
    }

    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        self.tx
            .as_ref()
            .ok_or(AuditError::Closed)?
            .send(msg)
            .map_err(|_| AuditError::Closed)
    }

    /// The current chain head.
    pub fn head(&self) -> Head {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Id of the key the WAL signs with now.
    pub fn key_id(&self) -> String {
        self.signing_key().kid().to_string()
    }

    /// The key the WAL signs with now (it changes with
    /// [`AuditWal::rotate_key`]).
    pub fn signing_key(&self) -> AuditKey {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stop the writer after it has written everything queued, sealing the
    /// chain with a shutdown checkpoint.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for AuditWal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Writer {
    db: DB,
    key: AuditKey,
    shared_key: Arc<Mutex<AuditKey>>,
    config: WalConfig,
    head: Head,
    shared: Arc<Mutex<Head>>,
    last_checkpoint: Instant,
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let first = match self.config.signing {
                SigningMode::Checkpoint { every, .. } if self.head.signed_seq < self.head.seq => {
                    let wait = every.saturating_sub(self.last_checkpoint.elapsed());
                    match rx.recv_timeout(wait) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.write_checkpoint(CheckpointKind::Periodic) {
                                tracing_error(&format!("audit checkpoint failed: {e}"));
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        if self.head.seq > 0 {
            if let Err(e) = self.write_checkpoint(CheckpointKind::Shutdown) {
                tracing_error(&format!("final audit checkpoint failed: {e}"));
            }
        }
    }

    /// Write the appends of a batch in one synced write, then acknowledge
    /// them; erasures and prunes run in queue order between appends.
    fn process(&mut self, batch: Vec<Msg>) {
        let mut pending: Vec<(chain::EncodedRow, oneshot::Sender<Result<u64, String>>)> =
            Vec::new();
        for msg in batch {
            match msg {
                Msg::Append(record, ack) => {
                    // The body is stored exactly as serialized here and
                    // hashed as stored, so it needs no canonical form.
                    let body = match serde_json::to_string(&*record) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ack.send(Err(format!("cannot encode audit row: {e}")));
                            continue;
                        }
                    };
                    let prev = pending
                        .last()
                        .map(|(r, _)| r.hash.clone())
                        .unwrap_or_else(|| self.head.hash.clone());
                    let seq = pending.last().map_or(self.head.seq, |(r, _)| r.seq) + 1;
                    let sign =
                        matches!(self.config.signing, SigningMode::PerRow).then_some(&self.key);
                    pending.push((chain::seal_encoded(seq, &prev, body, sign), ack));
                }
                Msg::Erase { seq, reason, done } => {
                    self.commit(std::mem::take(&mut pending));
                    let _ = done.send(self.erase(seq, &reason).map_err(|e| e.to_string()));
                }
                Msg::Prune { through_seq, done } => {
                    self.commit(std::mem::take(&mut pending));
                    let _ = done.send(self.prune(through_seq).map_err(|e| e.to_string()));
                }
                Msg::Rotate { key, done } => {
                    self.commit(std::mem::take(&mut pending));
                    let _ = done.send(self.rotate(*key).map_err(|e| e.to_string()));
                }
            }
        }
        self.commit(pending);
    }

    fn commit(&mut self, rows: Vec<(chain::EncodedRow, oneshot::Sender<Result<u64, String>>)>) {
        if rows.is_empty() {
            return;
        }
        let result = (|| -> Result<(), AuditError> {
            let cf_rows = cf(&self.db, CF_ROWS)?;
            let mut wb = WriteBatch::default();
            for (row, _) in &rows {
                wb.put_cf(cf_rows, seq_key(row.seq), &row.stored);
            }
            self.write(wb)
        })();
        match result {
            Ok(()) => {
                let (last, _) = &rows[rows.len() - 1];
                self.head.seq = last.seq;
                self.head.hash = last.hash.clone();
                if last.signed {
                    self.head.signed_seq = last.seq;
                }
                self.publish();
                for (row, ack) in rows {
                    let _ = ack.send(Ok(row.seq));
                }
                if let SigningMode::Checkpoint { every_rows, every } = self.config.signing {
                    let unsigned = self.head.seq - self.head.signed_seq;
                    if unsigned >= every_rows || self.last_checkpoint.elapsed() >= every {
                        if let Err(e) = self.write_checkpoint(CheckpointKind::Periodic) {
                            tracing_error(&format!("audit checkpoint failed: {e}"));
                        }
                    }
                }
                if let Err(e) = self.apply_retention() {
                    tracing_error(&format!("audit retention failed: {e}"));
                }
            }
            Err(e) => {
                let msg = format!("audit write failed: {e}");
                tracing_error(&msg);
                for (_, ack) in rows {
                    let _ = ack.send(Err(msg.clone()));
                }
            }
        }
    }

    fn write(&self, wb: WriteBatch) -> Result<(), AuditError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    fn publish(&self) {
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = self.head.clone();
    }

    fn write_checkpoint(&mut self, kind: CheckpointKind) -> Result<(), AuditError> {
        if self.head.seq == 0 {
            return Ok(());
        }
        let cp = chain::checkpoint(
            self.head.seq,
            &self.head.hash,
            now_ms(),
            kind,
            &self.config.gateway_id,
            &self.key,
        );
        let mut wb = WriteBatch::default();
        let value = serde_json::to_vec(&cp).map_err(|e| AuditError::Write(e.to_string()))?;
        wb.put_cf(cf(&self.db, CF_CHECKPOINTS)?, seq_key(cp.seq), value);
        self.write(wb)?;
        self.head.signed_seq = self.head.seq;
        self.last_checkpoint = Instant::now();
        self.publish();
        Ok(())
    }

    /// Seal the head with the outgoing key, then switch keys.
    fn rotate(&mut self, key: AuditKey) -> Result<Head, AuditError> {
        if key.kid() == self.key.kid() {
            return Ok(self.head.clone());
        }
        self.write_checkpoint(CheckpointKind::KeyRotation)?;
        self.key = key.clone();
        *self.shared_key.lock().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(self.head.clone())
    }

    fn read_row(&self, seq: u64) -> Result<Option<SealedRow>, AuditError> {
        match self.db.get_cf(cf(&self.db, CF_ROWS)?, seq_key(seq))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| AuditError::Corrupt(format!("row {seq}: {e}"))),
        }
    }

    fn erase(&mut self, seq: u64, reason: &str) -> Result<(), AuditError> {
        let mut row = self
            .read_row(seq)?
            .ok_or_else(|| AuditError::NotFound(format!("row {seq}")))?;
        if row.erased.is_some() {
            return Ok(());
        }
        chain::erase(&mut row, now_ms(), reason, &self.key);
        let mut wb = WriteBatch::default();
        let value = serde_json::to_vec(&row).map_err(|e| AuditError::Write(e.to_string()))?;
        wb.put_cf(cf(&self.db, CF_ROWS)?, seq_key(seq), value);
        self.write(wb)
    }

    fn prune(&mut self, through_seq: u64) -> Result<u64, AuditError> {
        let through = through_seq.min(self.head.seq);
        let Some(row) = self.read_row(through)? else {
            return Ok(0); // already pruned
        };
        let first = match self
            .db
            .iterator_cf(cf(&self.db, CF_ROWS)?, IteratorMode::Start)
            .next()
        {
            Some(item) => u64::from_be_bytes(item?.0.as_ref().try_into().unwrap_or([0; 8])),
            None => return Ok(0),
        };
        let cut = chain::checkpoint(
            through,
            &row.hash,
            now_ms(),
            CheckpointKind::RetentionCut,
            &self.config.gateway_id,
            &self.key,
        );
        let value = serde_json::to_vec(&cut).map_err(|e| AuditError::Write(e.to_string()))?;
        let mut wb = WriteBatch::default();
        wb.put_cf(cf(&self.db, CF_META)?, META_CUT, &value);
        wb.put_cf(cf(&self.db, CF_CHECKPOINTS)?, seq_key(through), &value);
        wb.delete_range_cf(cf(&self.db, CF_ROWS)?, seq_key(0), seq_key(through + 1));
        wb.delete_range_cf(cf(&self.db, CF_CHECKPOINTS)?, seq_key(0), seq_key(through));
        self.write(wb)?;
        if self.head.signed_seq < through {
            self.head.signed_seq = through;
            self.publish();
        }
        Ok(through + 1 - first)
    }

    /// Cut rows beyond the configured retention.
    fn apply_retention(&mut self) -> Result<(), AuditError> {
        let Retention { max_rows, max_age } = self.config.retention;
        let mut through = 0;
        if let Some(n) = max_rows {
            through = self.head.seq.saturating_sub(n);
        }
        if let Some(age) = max_age {
            let limit = now_ms().saturating_sub(age.as_millis() as u64);
            for item in self
                .db
                .iterator_cf(cf(&self.db, CF_ROWS)?, IteratorMode::Start)
            {
                let (_, v) = item?;
                let row: SealedRow =
                    serde_json::from_slice(&v).map_err(|e| AuditError::Corrupt(e.to_string()))?;
                let ended = row
                    .body
                    .as_ref()
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(b.get()).ok())
                    .and_then(|v| v.get("ended_at_ms").and_then(serde_json::Value::as_u64));
                match ended {
                    Some(t) if t < limit => through = through.max(row.seq),
                    Some(_) => break,
                    None => {}
                }
            }
        }
        let first = match self
            .db
            .iterator_cf(cf(&self.db, CF_ROWS)?, IteratorMode::Start)
            .next()
        {
            Some(item) => u64::from_be_bytes(item?.0.as_ref().try_into().unwrap_or([0; 8])),
            None => return Ok(()),
        };
        if through >= first {
            self.prune(through)?;
        }
        Ok(())
    }
}

fn tracing_error(msg: &str) {
    eprintln!("tappass-audit: {msg}");
}

/// Read-only access to a WAL directory (the gateway may be running).
pub struct WalReader {
    db: DB,
}

impl WalReader {
    pub fn open(dir: &Path) -> Result<WalReader, AuditError> {
        let path = dir.join("wal");
        if !path.exists() {
            return Err(AuditError::NotFound(format!(
                "no audit WAL in {}",
                dir.display()
            )));
        }
        let db = DB::open_cf_descriptors_read_only(&db_options(false), path, cfs(), false)?;
        Ok(WalReader { db })
    }

    /// Rows in sequence order, from `from_seq`, as (key seq, raw bytes).
    pub fn raw_rows(
        &self,
        from_seq: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), AuditError>> + '_, AuditError> {
        let key = seq_key(from_seq);
        let it = self.db.iterator_cf(
            cf(&self.db, CF_ROWS)?,
            IteratorMode::From(&key, rocksdb::Direction::Forward),
        );
        Ok(it.map(|item| {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| AuditError::Corrupt("row key is not 8 bytes".into()))?,
            );
            Ok((seq, v.to_vec()))
        }))
    }

    /// Parsed rows in sequence order from `from_seq`.
    pub fn rows(
        &self,
        from_seq: u64,
    ) -> Result<impl Iterator<Item = Result<SealedRow, AuditError>> + '_, AuditError> {
        Ok(self.raw_rows(from_seq)?.map(|item| {
            let (seq, v) = item?;
            serde_json::from_slice(&v).map_err(|e| AuditError::Corrupt(format!("row {seq}: {e}")))
        }))
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, AuditError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_CHECKPOINTS)?, IteratorMode::Start)
        {
            let (k, v) = item?;
            let cp: Checkpoint = serde_json::from_slice(&v)
                .map_err(|e| AuditError::Corrupt(format!("checkpoint {}: {e}", hex::encode(&k))))?;
            out.push(cp);
        }
        Ok(out)
    }

    pub fn retention_cut(&self) -> Result<Option<Checkpoint>, AuditError> {
        match self.db.get_cf(cf(&self.db, CF_META)?, META_CUT)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| AuditError::Corrupt(format!("retention cut: {e}"))),
        }
    }

    pub fn head(&self) -> Result<Head, AuditError> {
        recover_head(&self.db)
    }
}

/// Open a WAL for writing in tests and tools that modify it directly.
#[doc(hidden)]
pub fn open_raw_for_tests(dir: &Path) -> Result<DB, AuditError> {
    Ok(DB::open_cf_descriptors(
        &db_options(false),
        dir.join("wal"),
        cfs(),
    )?)
}
