//! What a status poll shows of a job this process is running, kept in memory beside the store.
//! With imports keeping the disk busy, each database round trip of a poll took 2–4 ms (see
//! docs/benchmark.md); a poll of a running job now reads this instead. The store stays the
//! record: a job not running here (queued, finished, or before a restart resumes it) is answered
//! from there.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use crate::{
    domain::{FileCounts, JobState},
    jobs::file_bounds::JobBytes,
};

/// A running job's state as the status endpoint reports it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: JobState,
    /// The provider's own progress text while exporting.
    pub text: Option<String>,
    pub files: FileCounts,
    /// What has arrived so far, files in progress included, once the job imports.
    pub received: Option<Received>,
}

/// Bytes (decoded) and resources received so far, and the rate since the import began here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Received {
    pub bytes: u64,
    pub resources: u64,
    pub bytes_per_sec: f64,
}

/// The job's live counters and where they stood when the import began here.
#[derive(Debug)]
struct Counters {
    counters: Arc<JobBytes>,
    since: Instant,
    bytes_then: u64,
}

/// Updated by the pipeline where it writes the same facts to the store. Polls read the store
/// instead until the job has published its state, and again from the moment it is closed.
#[derive(Debug, Default)]
pub struct Progress(Mutex<Live>, Mutex<Option<Counters>>);

#[derive(Debug, Default)]
enum Live {
    #[default]
    NotYet,
    Known(Snapshot),
    /// The job's last word is in the store (finished, failed, cancelled); later updates are dropped.
    Closed,
}

impl Progress {
    pub fn snapshot(&self) -> Option<Snapshot> {
        let mut snapshot = match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Live::Known(s) => s.clone(),
            Live::NotYet | Live::Closed => return None,
        };
        if let Some(live) = &*self.1.lock().unwrap_or_else(PoisonError::into_inner) {
            let bytes = live.counters.bytes();
            let secs = live.since.elapsed().as_secs_f64();
            let bytes_per_sec =
                if secs > 0.0 { bytes.saturating_sub(live.bytes_then) as f64 / secs } else { 0.0 };
            snapshot.received = Some(Received { bytes, resources: live.counters.resources(), bytes_per_sec });
        }
        Some(snapshot)
    }

    /// Read the job's counters from now on (the import begins or resumes here).
    pub fn watch(&self, counters: Arc<JobBytes>) {
        let bytes_then = counters.bytes();
        *self.1.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Counters { counters, since: Instant::now(), bytes_then });
    }

    /// Call right after the job's final store write, so no poll reports it running after that.
    pub fn close(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Live::Closed;
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut live = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Live::NotYet = *live {
            *live = Live::Known(Snapshot {
                state: JobState::Queued,
                text: None,
                files: FileCounts::default(),
                received: None,
            });
        }
        if let Live::Known(snapshot) = &mut *live {
            f(snapshot);
        }
    }

    pub fn set_state(&self, state: JobState, text: Option<String>) {
        self.update(|s| {
            s.state = state;
            s.text = text;
        });
    }

    pub fn set_text(&self, text: String) {
        self.update(|s| s.text = Some(text));
    }

    /// The plan is stored: from now on the job counts files.
    pub fn importing(&self, files: FileCounts) {
        self.update(|s| {
            s.state = JobState::Importing;
            s.files = files;
        });
    }

    pub fn file_finished(&self) {
        self.update(|s| s.files.finished += 1);
    }
}
