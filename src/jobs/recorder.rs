//! A job's facts, recorded in one place: each goes to the store (the record, which survives a
//! restart) and to the in-memory progress polls read, in that order, so the two never disagree.
use crate::jobs::error::JobError;
use crate::jobs::progress::Progress;
use crate::{
    domain::{FileCounts, FinishedFile, JobState},
    store::job_store::JobStore,
    time_util::now_unix,
};

pub struct Recorder<'a> {
    pub store: &'a dyn JobStore,
    pub id: &'a str,
    pub progress: &'a Progress,
    /// The lease token this process runs the job under: its completion is fenced by it.
    pub fence: Option<i64>,
}

impl Recorder<'_> {
    /// A resumed job shows where it was (an importing job waits for its file counts).
    pub fn resumed(&self, state: JobState, text: Option<String>) {
        if state != JobState::Importing {
            self.progress.set_state(state, text);
        }
    }

    /// A static export: its manifest is being fetched.
    pub async fn exporting(&self) -> Result<(), JobError> {
        self.store.set_state(self.id, JobState::Exporting).await?;
        self.progress.set_state(JobState::Exporting, None);
        Ok(())
    }

    /// A kick-off is about to be sent; `true` if an earlier one was (and its answer never came).
    pub async fn kicking_off(&self) -> Result<bool, JobError> {
        let earlier = self.store.kickoff_started(self.id).await?.is_some();
        self.store.mark_kickoff_started(self.id, now_unix()).await?;
        Ok(earlier)
    }

    /// The provider accepted the kick-off: recorded before anything else, a release needs it.
    pub async fn status_url(&self, url: &str) -> Result<(), JobError> {
        self.store.set_status_url(self.id, url).await?;
        self.progress.set_state(JobState::Exporting, None);
        Ok(())
    }

    /// The provider's progress text while it exports; a failed write only costs the text.
    pub async fn export_progress(&self, text: String) {
        self.progress.set_text(text.clone());
        if let Err(e) = self.store.set_progress(self.id, &text).await {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not record export progress");
        }
    }

    /// The plan is stored: the job imports, with these counts.
    pub fn importing(&self, files: FileCounts, expected_resources: Option<u64>) {
        self.progress.importing(files, expected_resources);
    }

    /// Store the job's throughput chart (failing to is only logged: it is not the data).
    pub async fn keep_throughput(&self) {
        if let Err(e) = self.store.set_throughput(self.id, &self.progress.throughput_json()).await {
            tracing::warn!(error = %crate::error_text::chain(&e), "could not store the job's throughput chart");
        }
    }

    /// False when the file was no longer pending (withdrawn while it downloaded) or `token`, the
    /// file's lease, was taken over.
    pub async fn file_finished(
        &self,
        idx: i64,
        done: &FinishedFile<'_>,
        token: i64,
    ) -> Result<bool, JobError> {
        let recorded = self.store.finish_file(self.id, idx, done, Some(token)).await?;
        if recorded {
            self.progress.file_finished();
        }
        Ok(recorded)
    }

    /// False when the job cannot complete yet (its plan is open, or a file is pending).
    pub async fn completed(&self) -> Result<bool, JobError> {
        // The chart first: the job page stops asking once it reads "completed".
        self.keep_throughput().await;
        let completed = self.store.complete_job(self.id, now_unix(), self.fence).await?;
        if completed {
            self.progress.close();
        }
        Ok(completed)
    }
}
