//! Where imported files go. `DestinationKind` (from config) chooses; `Destination`/`FileWriter`
//! behave: open → write… → finish (commit) or abort (nothing half-written stays visible).
pub mod dev_null;
pub mod fan_out;
pub mod file_name;
pub mod resource_store;
pub mod s3;
pub mod tmp_fs;

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::fhir::manifest::FileKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationKind {
    DevNull,
    TmpFs,
    S3(s3::S3Config),
    ResourceStore(resource_store::StoreUrl),
    /// Every file to each of these (`DESTINATION_TYPE=s3,resource-store`).
    Several(Vec<DestinationKind>),
}

impl DestinationKind {
    /// Whether one of its destinations is the resource store.
    pub fn has_resource_store(&self) -> bool {
        match self {
            DestinationKind::ResourceStore(_) => true,
            DestinationKind::Several(all) => all.iter().any(Self::has_resource_store),
            _ => false,
        }
    }

    /// The local directories its bytes land in (for the disk-room bounds, `jobs::disk_room`).
    pub fn local_places(&self, jobs_path: &std::path::Path) -> Vec<PathBuf> {
        match self {
            DestinationKind::TmpFs => vec![jobs_path.to_path_buf()],
            DestinationKind::ResourceStore(resource_store::StoreUrl::Sqlite(file)) => {
                file.parent().map(|d| vec![d.to_path_buf()]).unwrap_or_default()
            }
            DestinationKind::Several(all) => all.iter().flat_map(|k| k.local_places(jobs_path)).collect(),
            _ => Vec::new(),
        }
    }

    /// What cancelling or deleting a job does to what it stored here, per destination, in words
    /// a person reads before and after (the API's answers, the UI's dialogs, the CLI).
    pub fn what_a_stop_does(&self) -> String {
        match self {
            DestinationKind::DevNull => "nothing was stored (dev-null)".into(),
            DestinationKind::TmpFs => "the files it stored under JOBS_PATH are removed".into(),
            DestinationKind::S3(_) => "the objects it uploaded to S3 are removed".into(),
            DestinationKind::ResourceStore(_) => "the resources it already wrote to the resource store stay: each is a whole resource, newer than the one it replaced, which removing it would not bring back (its rows name the job, for SQL)".into(),
            DestinationKind::Several(all) => all.iter().map(Self::what_a_stop_does).collect::<Vec<_>>().join("; "),
        }
    }

    /// Its `DESTINATION_TYPE` name.
    pub fn name(&self) -> String {
        match self {
            DestinationKind::DevNull => "dev-null".into(),
            DestinationKind::TmpFs => "tmp-fs".into(),
            DestinationKind::S3(_) => "s3".into(),
            DestinationKind::ResourceStore(_) => "resource-store".into(),
            DestinationKind::Several(all) => all.iter().map(Self::name).collect::<Vec<_>>().join(","),
        }
    }
}

/// Why everything of a job goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Kept for `JOBS_MAX_AGE` and past it, or removed by an operator.
    Expired,
    /// The job failed: its files are incomplete.
    Failed,
    /// The provider stopped (withdrew) the submission: what it sent must not stay.
    Withdrawn,
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destination I/O failed")]
    Io(#[from] std::io::Error),
    #[error("file name '{0}' is not a safe single path component")]
    UnsafeName(String),
    /// An S3 request failed; `what` names it (and what to check), `source` is the SDK's error.
    #[error("S3: {what}")]
    S3 { what: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// S3 answered without something the protocol requires.
    #[error("S3 answered {0}")]
    S3Answer(&'static str),
    #[error("resource store: {0}")]
    Tables(#[from] resource_store::TablesError),
    /// A line the resource store cannot read as a resource (the download validated it, so rare).
    #[error("resource store: cannot store a line")]
    Unreadable(#[from] resource_store::rows::RowError),
    /// One of several destinations failed; `name` says which.
    #[error("destination {name} failed")]
    OneOf { name: String, source: Box<DestinationError> },
}

impl DestinationError {
    /// The file's data is at fault, not the destination: the file fails, the job goes on.
    pub fn refuses_the_file(&self) -> bool {
        match self {
            DestinationError::Unreadable(_) => true,
            DestinationError::Tables(resource_store::TablesError::Refused { .. }) => true,
            DestinationError::OneOf { source, .. } => source.refuses_the_file(),
            _ => false,
        }
    }

    /// What a person reading the job's status should know and do. The full cause goes to the
    /// log; this names the setting to look at.
    pub fn advice(&self) -> String {
        match self {
            DestinationError::Io(e) => match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => format!(
                    "the destination is full ({e}) on the disk holding JOBS_PATH: free space there or set JOBS_PATH to a larger disk, then have the provider ping again"
                ),
                Some(libc::EACCES | libc::EPERM | libc::EROFS) => format!(
                    "the destination cannot be written ({e}) under JOBS_PATH: fix its permissions or set JOBS_PATH, then have the provider ping again"
                ),
                Some(libc::EMFILE | libc::ENFILE) => format!(
                    "the server ran out of open files ({e}): raise its open-file limit (ulimit -n, LimitNOFILE=)"
                ),
                _ => format!("writing to the destination failed ({e}); the server log has the details"),
            },
            DestinationError::S3 { .. } | DestinationError::S3Answer(_) => {
                "the S3 destination failed the upload; the server log names the request and S3's answer".into()
            }
            DestinationError::Tables(e) => format!(
                "the resource store failed ({}); check RESOURCE_STORE_URL and that its database is up, then have the provider ping again",
                crate::error_text::chain(e)
            ),
            DestinationError::Unreadable(e) => format!("the resource store could not read a resource: {e}"),
            DestinationError::OneOf { name, source } => format!("{name}: {}", source.advice()),
            DestinationError::UnsafeName(_) => self.to_string(),
        }
    }
}

/// The file being written: where it goes and what it holds (object metadata on S3).
#[derive(Debug, Clone, Copy)]
pub struct FileTarget<'a> {
    pub job: &'a str,
    pub name: &'a str,
    pub resource_type: &'a str,
    /// The registration the data came from (its client_id).
    pub provider: &'a str,
    pub kind: FileKind,
}

/// What a committed file looks like.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Where it landed, for people (a path or `dev-null`).
    pub location: String,
    pub bytes: u64,
}

/// A durable point of a file being written: its first `bytes` (whole lines) are stored, and
/// `state` is what the destination needs to go on from there in another process (an S3 upload and
/// its parts; nothing for a local file, whose `.part` holds it all).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub bytes: u64,
    pub state: String,
}

/// What a writer did with a line end it was told of.
#[derive(Debug, Default)]
pub struct LineEnd {
    /// It will become a durable point (reported by this call or a later one).
    pub taken: bool,
    /// The newest durable point reached since the last call, if any: one of the line ends taken.
    pub saved: Option<Saved>,
}

#[async_trait]
pub trait FileWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError>;
    /// The bytes written so far, up to `at`, end at a line end: a place the writer may make
    /// durable (where S3 parts are cut). Writers that cannot continue a file elsewhere ignore it.
    async fn line_end(&mut self, _at: u64) -> Result<LineEnd, DestinationError> {
        Ok(LineEnd::default())
    }
    /// Commit the file; `resources` is its validated line count, recorded where the backend can.
    async fn finish(self: Box<Self>, resources: u64) -> Result<Receipt, DestinationError>;
    async fn abort(self: Box<Self>) -> Result<(), DestinationError>;
}

#[async_trait]
pub trait Destination: Send + Sync {
    /// Start writing a file; any earlier partial write of the same file is replaced.
    async fn open(&self, file: FileTarget<'_>) -> Result<Box<dyn FileWriter>, DestinationError>;
    /// Go on writing a file from a durable point an earlier writer (maybe in another process)
    /// reached; `None` when what it stored is gone, and the file must start over.
    async fn reopen(
        &self,
        _file: FileTarget<'_>,
        _saved: &Saved,
    ) -> Result<Option<Box<dyn FileWriter>>, DestinationError> {
        Ok(None)
    }
    /// Remove one committed file (its manifest was withdrawn); a file that is not there is fine.
    async fn delete_file(&self, job: &str, name: &str) -> Result<(), DestinationError>;
    /// Remove everything stored for `job`; `why` lets a store keep what outlives the job's files.
    async fn delete_job(&self, job: &str, why: Removal) -> Result<(), DestinationError>;
    /// One line for `/info` and logs.
    fn describe(&self) -> String;
    /// Whether every process writing here writes to the same place (an object store, not a local
    /// directory): then other replicas may download files of a job this one runs.
    fn shared(&self) -> bool {
        false
    }
}

impl DestinationKind {
    /// Build the backend; S3 checks at once that its bucket is reachable. `save_every`: bytes
    /// between durable points where nothing else sets them (S3 has its parts).
    pub async fn build(
        &self,
        jobs_path: PathBuf,
        save_every: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Built, DestinationError> {
        let mut store = None;
        let destination = self.build_into(jobs_path, save_every, &metrics, &mut store).await?;
        Ok(Built { destination, store })
    }

    async fn build_into(
        &self,
        jobs_path: PathBuf,
        save_every: u64,
        metrics: &Arc<crate::metrics::Metrics>,
        store: &mut Option<Arc<dyn resource_store::Tables>>,
    ) -> Result<Arc<dyn Destination>, DestinationError> {
        Ok(match self {
            DestinationKind::DevNull => Arc::new(dev_null::DevNull { save_every }),
            DestinationKind::TmpFs => Arc::new(tmp_fs::TmpFs::new(jobs_path, save_every)),
            DestinationKind::S3(config) => Arc::new(s3::S3::connect(config).await?),
            DestinationKind::ResourceStore(url) => {
                let tables = resource_store::open(url).await?;
                *store = Some(tables.clone());
                let store = resource_store::ResourceStore::new(tables).counted(metrics.clone());
                Arc::new(store.saving_every(save_every))
            }
            DestinationKind::Several(kinds) => {
                let mut all = Vec::with_capacity(kinds.len());
                for kind in kinds {
                    let built =
                        Box::pin(kind.build_into(jobs_path.clone(), save_every, metrics, store)).await;
                    let one =
                        built.map_err(|e| DestinationError::OneOf { name: kind.name(), source: e.into() })?;
                    all.push((kind.name(), one));
                }
                Arc::new(fan_out::FanOut::new(all))
            }
        })
    }
}

/// The destination, and the resource store's tables if it writes to one (for counts).
pub struct Built {
    pub destination: Arc<dyn Destination>,
    pub store: Option<Arc<dyn resource_store::Tables>>,
}
