//! The state store: one RocksDB database, keys grouped by prefix, values
//! JSON (secrets are sealed with the master key before they get here).
//! Every change is one synced `WriteBatch`.

use std::path::Path;

use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ControlError, Result};

pub struct Store {
    db: DB,
}

/// A set of changes applied atomically by [`Store::commit`].
#[derive(Default)]
pub struct Batch {
    inner: WriteBatch,
}

impl Batch {
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| ControlError::Store(format!("encoding {key}: {e}")))?;
        self.inner.put(key.as_bytes(), bytes);
        Ok(())
    }

    pub fn delete(&mut self, key: &str) {
        self.inner.delete(key.as_bytes());
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, path).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") {
                ControlError::Store(format!(
                    "{} is in use by another process (is a control plane already running on this data directory?): {msg}",
                    path.display()
                ))
            } else {
                ControlError::Store(format!("opening {}: {msg}", path.display()))
            }
        })?;
        Ok(Store { db })
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.db.get(key.as_bytes())? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ControlError::Store(format!("decoding {key}: {e}"))),
        }
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(prefix.as_bytes()) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = serde_json::from_slice(&v)
                .map_err(|e| ControlError::Store(format!("decoding {key}: {e}")))?;
            out.push((key, value));
        }
        Ok(out)
    }

    pub fn commit(&self, batch: Batch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch.inner, &wo)?;
        Ok(())
    }

    /// Applies a batch without waiting for the disk: it survives a crash of
    /// the process, not necessarily a power loss (for records that are
    /// re-sent anyway, such as reported chain heads).
    pub fn commit_unsynced(&self, batch: Batch) -> Result<()> {
        self.db.write(batch.inner)?;
        Ok(())
    }

    /// Flushes the memtable to SST files (used at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
