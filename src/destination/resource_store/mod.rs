//! resource-store: the current copy of each provider's data, queryable with SQL. One row per
//! (provider, resourceType, id) with `meta.lastUpdated`, `meta.versionId`, the resource as JSON
//! (jsonb on PostgreSQL), and the job and file that brought it. An incoming resource replaces the
//! stored one unless it is older; `deleted[]` Bundles delete the rows they name.
//!
//! A file's lines are written in batches, one transaction each, cut at line ends; every
//! `save_every` bytes of committed batches is a durable point, so a crashed file goes on from
//! there (writing a line twice changes nothing). Rows outlive the job's files: an expired or failed job keeps what it
//! brought (each row is the provider's own version, newer than what it replaced); a withdrawn
//! manifest or a stopped submission removes its rows (the versions they replaced are not kept).
mod postgres;
pub mod rows;
mod sqlite;

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

use super::{
    Destination, DestinationError, FileKind, FileTarget, FileWriter, LineEnd, Receipt, Removal, Saved,
};
use crate::metrics::Metrics;
use rows::{Gone, Row};

/// What the store holds per provider and type: the same SQL on both backends.
const COUNTS: &str = "SELECT provider, resource_type, count(*) FROM fhir_resources GROUP BY provider, resource_type ORDER BY provider, resource_type";

/// Rows in one batch (one transaction), at most.
pub const BATCH_ROWS: usize = 2_000;
/// Bytes of resources in one batch, at most (beyond the line that crosses it).
pub const BATCH_BYTES: usize = 4 << 20;
/// What the store's durable points say: a checkpoint another destination left is not one of ours.
const SAVED_STATE: &str = "resource-store/1";

/// Where the store is (`RESOURCE_STORE_URL`).
#[derive(Debug, Clone)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    /// May hold a password: never logged.
    Postgres(SecretString),
}

impl PartialEq for StoreUrl {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Sqlite(a), Self::Sqlite(b)) => a == b,
            (Self::Postgres(a), Self::Postgres(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}
impl Eq for StoreUrl {}

/// Who brought a batch: rows are the provider's, and remember their job and file.
#[derive(Debug, Clone)]
pub struct Origin {
    pub provider: String,
    pub job: String,
    pub file: String,
}

/// Resources stored of one type from one provider.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeCount {
    pub provider: String,
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    pub count: i64,
}

/// One stored resource as the tables hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// UTC with microseconds, as `rows::instant` writes it.
    pub last_updated: Option<String>,
    pub version_id: Option<String>,
    pub resource: serde_json::Value,
    pub job: String,
    pub file: String,
}

impl TypeCount {
    fn from_columns((provider, resource_type, count): (String, String, i64)) -> Self {
        Self { provider, resource_type, count }
    }
}

impl Stored {
    /// From the columns both backends select: last_updated, version_id, resource (as text), job, file.
    fn from_columns(
        (last_updated, version_id, text, job, file): (Option<String>, Option<String>, String, String, String),
    ) -> Result<Self, TablesError> {
        let resource = serde_json::from_str(&text).map_err(TablesError::NotJson)?;
        Ok(Self { last_updated, version_id, resource, job, file })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("{what}")]
    Sql { what: &'static str, source: sqlx::Error },
    #[error("cannot make the store file owner-only")]
    File(#[source] std::io::Error),
    #[error("a stored resource is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// The database refused the data itself (PostgreSQL: a value jsonb or text cannot hold).
    #[error("{what}: the database refused a resource")]
    Refused { what: &'static str, source: sqlx::Error },
}

/// The tables, on SQLite or PostgreSQL. Each call is one transaction.
#[async_trait]
pub trait Tables: Send + Sync {
    /// Store each row unless the one stored is newer. No two rows share a (type, id).
    async fn upsert(&self, from: &Origin, rows: &[Row]) -> Result<(), TablesError>;
    /// Delete the rows named, unless the stored one is newer than the deletion (or, when the
    /// deletion has no time, came with this same job: the resource was made again since).
    async fn delete(&self, from: &Origin, gone: &[Gone]) -> Result<u64, TablesError>;
    /// Delete the rows a job (or one of its files) brought.
    async fn remove(&self, job: &str, file: Option<&str>) -> Result<u64, TablesError>;
    async fn counts(&self) -> Result<Vec<TypeCount>, TablesError>;
    /// The stored resource of a provider with that type and id.
    async fn get(&self, provider: &str, resource_type: &str, id: &str)
        -> Result<Option<Stored>, TablesError>;
    fn describe(&self) -> String;
    fn shared(&self) -> bool;
}

/// Open (and create) the store's tables.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Tables>, TablesError> {
    Ok(match url {
        StoreUrl::Sqlite(path) => Arc::new(sqlite::SqliteTables::open(path).await?),
        StoreUrl::Postgres(url) => Arc::new(postgres::PgTables::open(url.expose_secret()).await?),
    })
}

pub struct ResourceStore {
    tables: Arc<dyn Tables>,
    metrics: Option<Arc<Metrics>>,
    /// Bytes between the durable points reported (each batch commits; a checkpoint is a write
    /// to the job's database, so not every batch becomes one). 0: every batch.
    save_every: u64,
}

impl ResourceStore {
    pub fn new(tables: Arc<dyn Tables>) -> Self {
        Self { tables, metrics: None, save_every: 0 }
    }

    /// Report a durable point only every `bytes` (`CHECKPOINT_BYTES`); a file resumed replays
    /// at most that much, which stores nothing twice.
    pub fn saving_every(self, bytes: u64) -> Self {
        Self { save_every: bytes, ..self }
    }

    /// Count rows and time batches in `/metrics`.
    pub fn counted(self, metrics: Arc<Metrics>) -> Self {
        Self { metrics: Some(metrics), ..self }
    }

    fn count(&self, kind: &str, rows: u64) {
        if let Some(m) = &self.metrics {
            m.store_rows(kind, rows);
        }
    }

    fn writer(&self, file: FileTarget<'_>, from: u64) -> Box<dyn FileWriter> {
        Box::new(StoreWriter {
            tables: self.tables.clone(),
            metrics: self.metrics.clone(),
            origin: Origin { provider: file.provider.into(), job: file.job.into(), file: file.name.into() },
            deletions: file.kind == FileKind::Deleted,
            carry: Vec::new(),
            batch: Batch::default(),
            written: from,
            reported: from,
            save_every: self.save_every,
            stored: 0,
        })
    }
}

#[async_trait]
impl Destination for ResourceStore {
    async fn open(&self, file: FileTarget<'_>) -> Result<Box<dyn FileWriter>, DestinationError> {
        Ok(self.writer(file, 0))
    }
    /// Every batch up to a durable point is in the tables; rewriting from there is harmless.
    async fn reopen(
        &self,
        file: FileTarget<'_>,
        saved: &Saved,
    ) -> Result<Option<Box<dyn FileWriter>>, DestinationError> {
        Ok((saved.state == SAVED_STATE).then(|| self.writer(file, saved.bytes)))
    }
    async fn delete_file(&self, job: &str, name: &str) -> Result<(), DestinationError> {
        let removed = self.tables.remove(job, Some(name)).await?;
        self.count("removed", removed);
        Ok(())
    }
    async fn delete_job(&self, job: &str, why: Removal) -> Result<(), DestinationError> {
        if why == Removal::Withdrawn {
            let removed = self.tables.remove(job, None).await?;
            self.count("removed", removed);
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("resource-store ({})", self.tables.describe())
    }
    fn shared(&self) -> bool {
        self.tables.shared()
    }
}

/// The lines of the batch being gathered, in arrival order.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    gone: Vec<Gone>,
    bytes: usize,
}

impl Batch {
    fn add(&mut self, row: Row) {
        self.bytes += row.json.len();
        self.rows.push(row);
    }
    fn len(&self) -> usize {
        self.rows.len() + self.gone.len()
    }
    fn full(&self) -> bool {
        self.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    /// In key order (concurrent files then lock rows in one order, so their batches cannot
    /// deadlock), with one row per (type, id): the newest, as the tables would keep it (one
    /// statement may not update a row twice on PostgreSQL).
    fn in_key_order(&mut self) {
        // Stable: of equal keys, arrival order stays, so "the later of equals" holds.
        self.rows.sort_by(|a, b| (&a.resource_type, &a.id).cmp(&(&b.resource_type, &b.id)));
        self.rows.dedup_by(|later, kept| {
            if (&later.resource_type, &later.id) != (&kept.resource_type, &kept.id) {
                return false;
            }
            if newer_or_same(later, kept) {
                std::mem::swap(later, kept);
            }
            true
        });
        self.gone.sort_by(|a, b| (&a.resource_type, &a.id).cmp(&(&b.resource_type, &b.id)));
    }
}

/// The tables' order: by lastUpdated, none counting as oldest; of equals, the later arrival.
/// A total order, so where batches split and which file comes first change nothing.
fn newer_or_same(incoming: &Row, stored: &Row) -> bool {
    match (&incoming.last_updated, &stored.last_updated) {
        (Some(a), Some(b)) => a >= b,
        (None, Some(_)) => false,
        (_, None) => true,
    }
}

struct StoreWriter {
    tables: Arc<dyn Tables>,
    metrics: Option<Arc<Metrics>>,
    origin: Origin,
    /// A deleted[] file: its lines are Bundles naming deleted resources.
    deletions: bool,
    /// The start of a line not ended yet.
    carry: Vec<u8>,
    batch: Batch,
    /// Bytes of the file written (from its start, also those of an earlier writer).
    written: u64,
    /// The last durable point reported.
    reported: u64,
    save_every: u64,
    /// Resources this writer stored (or deleted).
    stored: u64,
}

impl StoreWriter {
    fn line(&mut self, line: &[u8]) -> Result<(), DestinationError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if self.deletions {
            self.batch.gone.extend(rows::deleted(line)?);
        } else if let Some(row) = rows::row(line)? {
            self.batch.add(row);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DestinationError> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.in_key_order();
        let started = std::time::Instant::now();
        let mut deleted = 0;
        if !batch.rows.is_empty() {
            self.tables.upsert(&self.origin, &batch.rows).await?;
        }
        if !batch.gone.is_empty() {
            deleted = self.tables.delete(&self.origin, &batch.gone).await?;
        }
        self.stored += batch.len() as u64;
        if let Some(m) = &self.metrics {
            m.store_rows("written", batch.rows.len() as u64);
            m.store_rows("deleted", deleted);
            m.store_batch_seconds.observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

#[async_trait]
impl FileWriter for StoreWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        self.written += chunk.len() as u64;
        let mut rest = &chunk[..];
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.carry.is_empty() {
                self.line(&rest[..end])?;
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&rest[..end]);
                self.line(&line)?;
            }
            rest = &rest[end + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }
    async fn line_end(&mut self, at: u64) -> Result<LineEnd, DestinationError> {
        if !self.batch.full() || at + self.carry.len() as u64 != self.written {
            return Ok(LineEnd::default());
        }
        self.flush().await?;
        if at < self.reported + self.save_every {
            return Ok(LineEnd::default());
        }
        self.reported = at;
        Ok(LineEnd { taken: true, saved: Some(Saved { bytes: at, state: SAVED_STATE.into() }) })
    }
    async fn finish(mut self: Box<Self>, _resources: u64) -> Result<Receipt, DestinationError> {
        let last = std::mem::take(&mut self.carry);
        self.line(&last)?;
        self.flush().await?;
        let what = if self.deletions { "deletions" } else { "resources" };
        Ok(Receipt {
            location: format!("resource-store ({} {what} of {})", self.stored, self.origin.provider),
            bytes: self.written,
        })
    }
    /// What committed stays (see the module's note); the batch being gathered goes.
    async fn abort(self: Box<Self>) -> Result<(), DestinationError> {
        Ok(())
    }
}
