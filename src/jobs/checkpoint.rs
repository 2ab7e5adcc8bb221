//! Durable points of a file's download, kept in the store with the file: how many bytes the
//! destination holds whole (at a line end), what had been counted there, and the provider's
//! validator, so a process that takes the job over (or the same server after a restart) asks
//! for the rest with `Range` instead of fetching the file again. Written under the job's lease
//! token: a process whose lease was taken over cannot move another's point.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use tokio_util::sync::CancellationToken;

use crate::{destination::Saved, store::job_store::JobStore};

/// What a continuation needs, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub saved: Saved,
    /// Complete lines up to `saved.bytes`.
    pub lines: u64,
    pub resources: i64,
    pub blank: u64,
    /// Resources per type, for an untyped (`organizeOutputBy`) file.
    pub by_type: Option<BTreeMap<String, i64>>,
    /// The provider's strong validator (`If-Range`).
    pub validator: String,
    /// The whole file's length, when its first answer gave it.
    pub total: Option<u64>,
}

/// What had been counted at a line end the destination took; it becomes a checkpoint once the
/// destination says those bytes are durable.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at: u64,
    pub lines: u64,
    pub resources: i64,
    pub blank: u64,
    pub by_type: Option<BTreeMap<String, i64>>,
}

/// Where one file's checkpoints are kept: its row, under the lease token the job runs with.
#[derive(Clone)]
pub struct Checkpoints {
    store: Arc<dyn JobStore>,
    fence: Option<i64>,
    job: String,
    idx: i64,
    /// The server is stopping: a download it stops keeps its partial file for the next start.
    shutdown: CancellationToken,
}

impl Checkpoints {
    pub fn new(
        store: Arc<dyn JobStore>,
        fence: Option<i64>,
        job: &str,
        idx: i64,
        shutdown: CancellationToken,
    ) -> Self {
        Self { store, fence, job: job.into(), idx, shutdown }
    }

    /// The file's last checkpoint, if a usable one is stored.
    pub async fn load(&self) -> Option<Checkpoint> {
        let stored = match self.store.file_checkpoint(&self.job, self.idx).await {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not read where the file's download had got to; it starts over");
                return None;
            }
        };
        match serde_json::from_str(&stored) {
            Ok(checkpoint) => Some(checkpoint),
            Err(e) => {
                tracing::warn!(error = %e, "the file's stored checkpoint is unreadable; it starts over");
                None
            }
        }
    }

    /// Keep a checkpoint: `Some(false)` when the store refused it (the file is no longer
    /// pending, or the job's lease was taken over), `None` when it could not take it.
    pub async fn save(&self, checkpoint: &Checkpoint) -> Option<bool> {
        let json = serde_json::to_string(checkpoint).ok()?;
        match self.store.save_checkpoint(&self.job, self.idx, Some(&json), self.fence).await {
            Ok(kept) => Some(kept),
            Err(e) => {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not store where the file's download has got to");
                None
            }
        }
    }

    /// Forget the file's checkpoint, before what it points to goes. False when this process
    /// may no longer (its lease was taken over): another may be continuing from it.
    pub async fn clear(&self) -> bool {
        match self.store.save_checkpoint(&self.job, self.idx, None, self.fence).await {
            Ok(cleared) => cleared,
            Err(e) => {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not forget the file's checkpoint");
                false
            }
        }
    }

    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// The checkpoints of one download in progress: line ends taken, not yet durable.
pub struct Keeping {
    pub checkpoints: Checkpoints,
    marks: VecDeque<Mark>,
    validator: String,
    total: Option<u64>,
    /// A checkpoint is stored for this download (one to clear if it is thrown away).
    pub stored: bool,
}

/// Marks waiting for their bytes to become durable: S3 has one part in flight and one filling.
const MAX_MARKS: usize = 8;

impl Keeping {
    pub fn new(checkpoints: Checkpoints, validator: String, total: Option<u64>, stored: bool) -> Self {
        Self { checkpoints, marks: VecDeque::new(), validator, total, stored }
    }

    /// The destination took a line end: remember what was counted there.
    pub fn taken(&mut self, mark: Mark) {
        if self.marks.len() == MAX_MARKS {
            self.marks.pop_front();
        }
        self.marks.push_back(mark);
    }

    /// The destination made bytes durable up to a line end it took: store that as a checkpoint.
    /// False when the store refused it: the file is no longer this process's to write (withdrawn,
    /// or the job taken over), and the download must stop.
    pub async fn saved(&mut self, saved: Saved) -> bool {
        while self.marks.front().is_some_and(|m| m.at < saved.bytes) {
            self.marks.pop_front();
        }
        let Some(mark) = self.marks.front().filter(|m| m.at == saved.bytes).cloned() else { return true };
        let checkpoint = Checkpoint {
            saved,
            lines: mark.lines,
            resources: mark.resources,
            blank: mark.blank,
            by_type: mark.by_type,
            validator: self.validator.clone(),
            total: self.total,
        };
        match self.checkpoints.save(&checkpoint).await {
            Some(true) => {
                self.stored = true;
                tracing::debug!(bytes = checkpoint.saved.bytes, "checkpoint stored");
                true
            }
            Some(false) => false,
            // Only a later continuation loses by it: the download goes on.
            None => true,
        }
    }
}
