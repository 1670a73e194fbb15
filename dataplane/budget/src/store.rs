//! Budget counters on disk (RocksDB), written by one thread off the
//! request path.
//!
//! Two kinds of record: `c/<counter key>` holds what a counter has spent,
//! and `r/<id>` holds an open reservation (counter keys and amounts). A
//! settlement replaces the reservation record by the new counter totals in
//! one atomic write batch, so a crash either keeps the reservation (charged
//! in full at the next start) or keeps the settled totals — never both,
//! never neither. Counters therefore never go backwards across a restart
//! and nothing is counted twice. Writes reach the operating system at once
//! (they survive `kill -9` of the gateway); a synced flush follows every
//! [`Store::barrier`] and at most every second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rocksdb::{Options, WriteBatch, WriteOptions, DB};

use crate::ledger::key_window;
use crate::window::{Clock, WindowKind};
use crate::BudgetError;

const COUNTER: &str = "c/";
const RESERVATION: &str = "r/";

/// Counter keys are shared with the ledger's counters: sending one costs a
/// reference count, not a copy.
type Entries = Vec<(std::sync::Arc<str>, u64)>;

enum Op {
    Reserve(u64, Entries),
    Settle(u64, Entries),
    Barrier(mpsc::SyncSender<()>),
}

/// What a store held when it was opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Spent per counter key (open reservations charged in full).
    pub totals: HashMap<String, u64>,
    /// Reservations that were open when the gateway stopped.
    pub charged_reservations: usize,
    /// Counters of windows long over, removed.
    pub pruned: usize,
}

/// The writer's handle.
pub struct Store {
    tx: mpsc::Sender<Op>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Prefix that makes reservation ids unique across restarts.
    epoch: u64,
    seq: std::sync::atomic::AtomicU64,
    dir: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn reservation_key(id: u64) -> String {
    format!("{RESERVATION}{id:016x}")
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl Store {
    /// Open (or create) the store in `dir`: charge reservations left open
    /// by a previous run, drop counters of windows that ended long ago,
    /// and start the writer.
    pub fn open(dir: &Path, clock: &Clock) -> Result<(Store, Loaded), BudgetError> {
        let err = |e: rocksdb::Error| BudgetError::Store(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir)
            .map_err(|e| BudgetError::Store(format!("{}: {e}", dir.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, dir).map_err(err)?;
        let loaded = recover(&db, clock).map_err(err)?;
        let (tx, rx) = mpsc::channel();
        let totals = loaded.totals.clone();
        let writer = std::thread::Builder::new()
            .name("tappass-budget-writer".into())
            .spawn(move || write_loop(db, rx, totals))
            .map_err(|e| BudgetError::Store(format!("cannot start the writer: {e}")))?;
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok((
            Store {
                tx,
                writer: Mutex::new(Some(writer)),
                // Milliseconds since the epoch in the high bits; a restart
                // within the same millisecond is not a case we serve.
                epoch: epoch << 20,
                seq: std::sync::atomic::AtomicU64::new(0),
                dir: dir.to_path_buf(),
            },
            loaded,
        ))
    }

    fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            tracing::error!(dir = %self.dir.display(), "budget writer stopped; counters are kept in memory only");
        }
    }

    /// Record an open reservation; returns its id.
    pub fn reserve(&self, entries: Entries) -> u64 {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = self.epoch.wrapping_add(n);
        self.send(Op::Reserve(id, entries));
        id
    }

    /// Replace reservation `id` by what it spent.
    pub fn settle(&self, id: u64, spent: Entries) {
        self.send(Op::Settle(id, spent));
    }

    /// Wait until everything sent so far is written and synced.
    pub fn barrier(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Op::Barrier(tx));
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.barrier();
        // Closing the channel ends the writer.
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }
}

fn recover(db: &DB, clock: &Clock) -> Result<Loaded, rocksdb::Error> {
    let mut loaded = Loaded::default();
    let mut batch = WriteBatch::default();
    let now = clock.now();
    let oldest = |w: WindowKind| {
        let back_ms = match w {
            WindowKind::Minute => 2 * 60_000,
            WindowKind::Day => 2 * 86_400_000,
            WindowKind::Month => 62 * 86_400_000,
        };
        clock.at(now.unix_ms - back_ms).index(w)
    };
    let mut open = Vec::new();
    for item in db.iterator(rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let Ok(key) = std::str::from_utf8(&k) else {
            continue;
        };
        if let Some(counter) = key.strip_prefix(COUNTER) {
            match (key_window(counter), parse_u64(&v)) {
                (Some((w, index)), Some(n)) if index >= oldest(w) => {
                    loaded.totals.insert(counter.to_string(), n);
                }
                _ => {
                    batch.delete(&k);
                    loaded.pruned += 1;
                }
            }
        } else if key.starts_with(RESERVATION) {
            open.push((k.to_vec(), v.to_vec()));
        }
    }
    for (k, v) in open {
        let entries: Vec<(String, u64)> = serde_json::from_slice(&v).unwrap_or_default();
        for (counter, amount) in entries {
            let t = loaded.totals.entry(counter.clone()).or_insert(0);
            *t = t.saturating_add(amount);
            batch.put(format!("{COUNTER}{counter}"), t.to_string());
        }
        batch.delete(&k);
        loaded.charged_reservations += 1;
    }
    if !batch.is_empty() {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo)?;
    }
    Ok(loaded)
}

fn write_loop(db: DB, rx: mpsc::Receiver<Op>, mut totals: HashMap<String, u64>) {
    let wo = WriteOptions::default();
    let mut last_sync = Instant::now();
    let mut dirty = false;
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(op) => op,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if dirty {
                    let _ = db.flush_wal(true);
                    dirty = false;
                    last_sync = Instant::now();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // One batch per wake-up. A reservation settled within the same
        // batch is never written: only its settled totals are.
        let mut opened: HashMap<u64, Entries> = HashMap::new();
        let mut settled: Vec<u64> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        let mut barriers = Vec::new();
        let mut ops = 0usize;
        let mut apply = |op: Op| match op {
            Op::Reserve(id, entries) => {
                opened.insert(id, entries);
            }
            Op::Settle(id, spent) => {
                for (counter, n) in spent {
                    let key = counter.to_string();
                    let t = totals.entry(key.clone()).or_insert(0);
                    *t = t.saturating_add(n);
                    touched.push(key);
                }
                if opened.remove(&id).is_none() {
                    settled.push(id);
                }
            }
            Op::Barrier(done) => barriers.push(done),
        };
        apply(first);
        while ops < 4096 {
            match rx.try_recv() {
                Ok(op) => {
                    apply(op);
                    ops += 1;
                }
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch::default();
        for (id, entries) in &opened {
            let entries: Vec<(&str, u64)> = entries.iter().map(|(k, n)| (&**k, *n)).collect();
            let v = serde_json::to_vec(&entries).unwrap_or_default();
            batch.put(reservation_key(*id), v);
        }
        touched.sort_unstable();
        touched.dedup();
        for key in &touched {
            let t = totals.get(key).copied().unwrap_or(0);
            batch.put(format!("{COUNTER}{key}"), t.to_string());
        }
        for id in settled {
            batch.delete(reservation_key(id));
        }
        if !batch.is_empty() {
            if let Err(e) = db.write_opt(batch, &wo) {
                tracing::error!(error = %e, "budget counters could not be written");
            }
            dirty = true;
        }
        if dirty && (!barriers.is_empty() || last_sync.elapsed() >= Duration::from_secs(1)) {
            if let Err(e) = db.flush_wal(true) {
                tracing::error!(error = %e, "budget counters could not be synced");
            }
            dirty = false;
            last_sync = Instant::now();
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
    let _ = db.flush_wal(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, Spend};
    use crate::rules::{CallScopes, Limit, Metric, Rules, ScopeRule, ScopeSelector};

    fn rules() -> Rules {
        Rules::new(vec![ScopeRule {
            scope: ScopeSelector::parse("agent:*").unwrap(),
            limits: vec![Limit {
                metric: Metric::Tokens,
                window: WindowKind::Day,
                max: 1_000_000,
                model: None,
            }],
        }])
    }

    fn who() -> CallScopes {
        CallScopes {
            agent: Some("bot".into()),
            ..Default::default()
        }
    }

    fn tokens(n: u64) -> Spend {
        Spend {
            tokens: n,
            requests: 1,
            ..Default::default()
        }
    }

    fn open(dir: &Path) -> (std::sync::Arc<Ledger>, Loaded) {
        let clock = Clock::new("UTC").unwrap();
        let (store, loaded) = Store::open(dir, &clock).unwrap();
        let totals = loaded.totals.clone();
        (Ledger::persistent(clock, store, totals), loaded)
    }

    #[test]
    fn counters_survive_a_restart_and_open_reservations_are_charged_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = rules();
        let key;
        {
            let (l, _) = open(dir.path());
            l.reserve(&r, &who(), "m", tokens(100))
                .unwrap()
                .settle(tokens(40));
            key = format!(
                "agent:bot|tokens|day||{}",
                l.clock().now().index(WindowKind::Day)
            );
        }
        {
            // A crash while a call is in flight: its reservation record is
            // written, its settlement never comes.
            let clock = Clock::new("UTC").unwrap();
            let (store, loaded) = Store::open(dir.path(), &clock).unwrap();
            assert_eq!(loaded.totals.get(&key), Some(&40));
            store.reserve(vec![(std::sync::Arc::from(key.as_str()), 70)]);
        }
        let (l, loaded) = open(dir.path());
        assert_eq!(loaded.charged_reservations, 1);
        // Reported before any call touches the counter.
        assert_eq!(l.report(&r)[0].used, 110);
        l.reserve(&r, &who(), "m", tokens(1))
            .unwrap()
            .settle(tokens(0));
        assert_eq!(l.report(&r)[0].used, 110);
        drop(l);
        let (l, loaded) = open(dir.path());
        assert_eq!(loaded.charged_reservations, 0);
        l.reserve(&r, &who(), "m", tokens(1))
            .unwrap()
            .settle(tokens(0));
        assert_eq!(l.report(&r)[0].used, 110);
    }

    #[test]
    fn a_second_gateway_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::new("UTC").unwrap();
        let (_a, _) = Store::open(dir.path(), &clock).unwrap();
        let e = Store::open(dir.path(), &clock).unwrap_err();
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn old_windows_are_pruned_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = DB::open_default(dir.path()).unwrap();
            db.put("c/agent:bot|tokens|day||19990101", "5").unwrap();
            db.put("c/agent:bot|tokens|day||notanumber", "5").unwrap();
            db.put("c/agent:bot|tokens|month||999912", "7").unwrap();
            db.put("r/00000000000000ff", "not json").unwrap();
            db.put("zz/unknown", "x").unwrap();
        }
        let clock = Clock::new("UTC").unwrap();
        let (_s, loaded) = Store::open(dir.path(), &clock).unwrap();
        assert_eq!(loaded.pruned, 2);
        assert_eq!(loaded.charged_reservations, 1);
        assert_eq!(
            loaded.totals.get("agent:bot|tokens|month||999912"),
            Some(&7)
        );
    }
}
