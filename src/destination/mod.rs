//! Where imported files go. `DestinationKind` (from config) chooses; `Destination`/`FileWriter`
//! behave: open → write… → finish (commit) or abort (nothing half-written stays visible).
pub mod dev_null;
pub mod file_name;
pub mod tmp_fs;

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    DevNull,
    TmpFs,
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destination I/O failed")]
    Io(#[from] std::io::Error),
    #[error("file name '{0}' is not a safe single path component")]
    UnsafeName(String),
}

/// What a committed file looks like.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Where it landed, for people (a path or `dev-null`).
    pub location: String,
    pub bytes: u64,
}

#[async_trait]
pub trait FileWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError>;
    async fn finish(self: Box<Self>) -> Result<Receipt, DestinationError>;
    async fn abort(self: Box<Self>) -> Result<(), DestinationError>;
}

#[async_trait]
pub trait Destination: Send + Sync {
    /// Start writing `name` for `job`; any earlier partial write of the same file is replaced.
    async fn open(&self, job: &str, name: &str) -> Result<Box<dyn FileWriter>, DestinationError>;
    /// Remove everything stored for `job`.
    async fn delete_job(&self, job: &str) -> Result<(), DestinationError>;
    /// One line for `/info` and logs.
    fn describe(&self) -> String;
}

impl DestinationKind {
    pub fn build(self, jobs_path: PathBuf) -> Arc<dyn Destination> {
        match self {
            DestinationKind::DevNull => Arc::new(dev_null::DevNull),
            DestinationKind::TmpFs => Arc::new(tmp_fs::TmpFs::new(jobs_path)),
        }
    }
}
