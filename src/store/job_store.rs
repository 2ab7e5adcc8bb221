//! What the engine needs of a store, as traits: SQLite implements them now, a shared database
//! next, and both must pass the store conformance suite (`tests/api/store_conformance.rs`).
use async_trait::async_trait;

use super::{
    jobs::{Admission, FileCounts, FileTotals, FinishedFile, Job, JobCaps, JobFile, JobState},
    providers::Provider,
    Store, StoreError,
};

/// Jobs, their plans and their files.
#[async_trait]
pub trait JobStore: Send + Sync {
    async fn insert_job_if_room(&self, job: &Job, caps: JobCaps) -> Result<Admission, StoreError>;
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;
    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError>;
    async fn expired_jobs(&self, finished_before: i64, silent_since: i64) -> Result<Vec<String>, StoreError>;
    async fn touch(&self, id: &str, now: i64) -> Result<(), StoreError>;
    async fn file_totals(&self, job_id: &str) -> Result<FileTotals, StoreError>;
    async fn file_outcomes(&self, job_id: &str) -> Result<Vec<String>, StoreError>;
    async fn set_status_url(&self, id: &str, url: &str) -> Result<(), StoreError>;
    async fn mark_kickoff_started(&self, id: &str, now: i64) -> Result<(), StoreError>;
    async fn kickoff_started(&self, id: &str) -> Result<Option<i64>, StoreError>;
    async fn set_state(&self, id: &str, state: JobState) -> Result<(), StoreError>;
    async fn set_progress(&self, id: &str, progress: &str) -> Result<(), StoreError>;
    async fn save_plan(&self, id: &str, files: &[JobFile]) -> Result<(), StoreError>;
    async fn files(&self, job_id: &str) -> Result<Vec<JobFile>, StoreError>;
    async fn type_counts(&self, job_id: &str) -> Result<std::collections::BTreeMap<String, i64>, StoreError>;
    async fn file_counts(&self, job_id: &str) -> Result<FileCounts, StoreError>;
    async fn finish_file(&self, job_id: &str, idx: i64, done: &FinishedFile<'_>) -> Result<(), StoreError>;
    async fn complete_job(&self, id: &str, now: i64) -> Result<(), StoreError>;
    async fn fail_pending_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError>;
    async fn fail_job(&self, id: &str, reason: &str, now: i64) -> Result<bool, StoreError>;
    async fn delete_job(&self, id: &str) -> Result<bool, StoreError>;
}

/// Provider registrations.
#[async_trait]
pub trait RegistrationStore: Send + Sync {
    async fn insert_provider(&self, p: &Provider) -> Result<(), StoreError>;
    async fn providers(&self) -> Result<Vec<Provider>, StoreError>;
    async fn provider_any(&self, client_id: &str) -> Result<Option<Provider>, StoreError>;
    async fn revoke_provider(&self, client_id: &str, now: i64) -> Result<bool, StoreError>;
    async fn provider(&self, client_id: &str) -> Result<Option<Provider>, StoreError>;
}

#[async_trait]
impl JobStore for Store {
    async fn insert_job_if_room(&self, job: &Job, caps: JobCaps) -> Result<Admission, StoreError> {
        Store::insert_job_if_room(self, job, caps).await
    }
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        Store::job(self, id).await
    }
    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        Store::unfinished_jobs(self).await
    }
    async fn expired_jobs(&self, finished_before: i64, silent_since: i64) -> Result<Vec<String>, StoreError> {
        Store::expired_jobs(self, finished_before, silent_since).await
    }
    async fn touch(&self, id: &str, now: i64) -> Result<(), StoreError> {
        Store::touch(self, id, now).await
    }
    async fn file_totals(&self, job_id: &str) -> Result<FileTotals, StoreError> {
        Store::file_totals(self, job_id).await
    }
    async fn file_outcomes(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        Store::file_outcomes(self, job_id).await
    }
    async fn set_status_url(&self, id: &str, url: &str) -> Result<(), StoreError> {
        Store::set_status_url(self, id, url).await
    }
    async fn mark_kickoff_started(&self, id: &str, now: i64) -> Result<(), StoreError> {
        Store::mark_kickoff_started(self, id, now).await
    }
    async fn kickoff_started(&self, id: &str) -> Result<Option<i64>, StoreError> {
        Store::kickoff_started(self, id).await
    }
    async fn set_state(&self, id: &str, state: JobState) -> Result<(), StoreError> {
        Store::set_state(self, id, state).await
    }
    async fn set_progress(&self, id: &str, progress: &str) -> Result<(), StoreError> {
        Store::set_progress(self, id, progress).await
    }
    async fn save_plan(&self, id: &str, files: &[JobFile]) -> Result<(), StoreError> {
        Store::save_plan(self, id, files).await
    }
    async fn files(&self, job_id: &str) -> Result<Vec<JobFile>, StoreError> {
        Store::files(self, job_id).await
    }
    async fn type_counts(&self, job_id: &str) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        Store::type_counts(self, job_id).await
    }
    async fn file_counts(&self, job_id: &str) -> Result<FileCounts, StoreError> {
        Store::file_counts(self, job_id).await
    }
    async fn finish_file(&self, job_id: &str, idx: i64, done: &FinishedFile<'_>) -> Result<(), StoreError> {
        Store::finish_file(self, job_id, idx, done).await
    }
    async fn complete_job(&self, id: &str, now: i64) -> Result<(), StoreError> {
        Store::complete_job(self, id, now).await
    }
    async fn fail_pending_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError> {
        Store::fail_pending_files(self, job_id, outcomes).await
    }
    async fn fail_job(&self, id: &str, reason: &str, now: i64) -> Result<bool, StoreError> {
        Store::fail_job(self, id, reason, now).await
    }
    async fn delete_job(&self, id: &str) -> Result<bool, StoreError> {
        Store::delete_job(self, id).await
    }
}

#[async_trait]
impl RegistrationStore for Store {
    async fn insert_provider(&self, p: &Provider) -> Result<(), StoreError> {
        Store::insert_provider(self, p).await
    }
    async fn providers(&self) -> Result<Vec<Provider>, StoreError> {
        Store::providers(self).await
    }
    async fn provider_any(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Store::provider_any(self, client_id).await
    }
    async fn revoke_provider(&self, client_id: &str, now: i64) -> Result<bool, StoreError> {
        Store::revoke_provider(self, client_id, now).await
    }
    async fn provider(&self, client_id: &str) -> Result<Option<Provider>, StoreError> {
        Store::provider(self, client_id).await
    }
}
