//! What the engine needs of a store, as traits: SQLite (one machine) and PostgreSQL (several
//! replicas) implement them, and both pass the store conformance suite
//! (`tests/api/store_conformance.rs`).
use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;

use super::{
    dashboard::JobSummary,
    job_pages::{ManifestFiles, TypeTotals},
    leases::{Claim, Renewal},
    live_progress::LiveCounters,
    Store, StoreError,
};
use crate::domain::{
    Admission, Appended, AuditClass, AuditEvent, FileCounts, FileTotals, FinishedFile, Job, JobCaps, JobFile,
    JobState, ManifestRequest, PlanManifest, Provider, RequestState, Requested, SourceAccess, Submission,
    SyncState,
};
use crate::fhir::bulk_submit::SubmissionStatus;

/// Jobs: their plans, files and leases.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// One round trip to the database, for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;
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
    /// The `transactionTime` its export's manifest gave.
    async fn set_transaction_time(&self, id: &str, at: &str) -> Result<(), StoreError>;
    async fn transaction_time(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// What became of the job's notice (`NOTIFY_URL`).
    async fn set_notice(&self, id: &str, text: &str) -> Result<(), StoreError>;
    async fn notice(&self, id: &str) -> Result<Option<String>, StoreError>;
    async fn set_state(&self, id: &str, state: JobState) -> Result<(), StoreError>;
    async fn set_progress(&self, id: &str, progress: &str) -> Result<(), StoreError>;
    /// The job's throughput chart (JSON), kept for the job page once the job ends.
    async fn set_throughput(&self, id: &str, series: &str) -> Result<(), StoreError>;
    async fn throughput(&self, id: &str) -> Result<Option<String>, StoreError>;
    async fn append_manifest(
        &self,
        job_id: &str,
        url: &str,
        files: &[JobFile],
        close: bool,
        now: i64,
    ) -> Result<Appended, StoreError>;
    async fn withdraw_manifest(&self, job_id: &str, url: &str) -> Result<Option<Vec<JobFile>>, StoreError>;
    async fn manifests(&self, job_id: &str) -> Result<Vec<PlanManifest>, StoreError>;
    async fn close_plan(&self, job_id: &str) -> Result<bool, StoreError>;
    async fn files(&self, job_id: &str) -> Result<Vec<JobFile>, StoreError>;
    async fn type_counts(&self, job_id: &str) -> Result<BTreeMap<String, i64>, StoreError>;
    async fn file_counts(&self, job_id: &str) -> Result<FileCounts, StoreError>;
    /// Record a file's end (its durable point goes); false when it was not pending or `fence` is
    /// stale.
    async fn finish_file(
        &self,
        job_id: &str,
        idx: i64,
        done: &FinishedFile<'_>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError>;
    /// The durable point (JSON) a pending file's download reached, if one was kept.
    async fn file_checkpoint(&self, job_id: &str, idx: i64) -> Result<Option<String>, StoreError>;
    /// Keep (or with `None` forget) a pending file's durable point; false when the file is no
    /// longer pending or `fence` is stale.
    async fn save_checkpoint(
        &self,
        job_id: &str,
        idx: i64,
        checkpoint: Option<&str>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError>;
    /// `fence`: the lease token the caller holds, if it runs the job; a stale one changes nothing.
    async fn complete_job(&self, id: &str, now: i64, fence: Option<i64>) -> Result<bool, StoreError>;
    async fn fail_pending_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError>;
    /// Say again what became of done files (their data removed by a cancel or a failure).
    async fn restate_done_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError>;
    async fn fail_job(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        fence: Option<i64>,
    ) -> Result<bool, StoreError>;
    async fn delete_job(&self, id: &str) -> Result<bool, StoreError>;
    async fn cancel_job(&self, id: &str, now: i64) -> Result<bool, StoreError>;
    async fn claim_job(&self, id: &str, owner: &str, lease: Duration) -> Result<Option<Claim>, StoreError>;
    /// The oldest free job, claimed; one silent since before `silent_since` is the reaper's.
    async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
        silent_since: i64,
    ) -> Result<Option<(Job, Claim)>, StoreError>;
    async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<Renewal, StoreError>;
    async fn release_lease(&self, id: &str, owner: &str, token: i64) -> Result<bool, StoreError>;
    /// Who holds a live lease on the job (a process running it), if anyone.
    async fn lease_holder(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Whether a process other than `me` holds a live lease on the job or one of its pending
    /// files (running it, or downloading a file of it).
    async fn held_by_others(&self, id: &str, me: &str) -> Result<bool, StoreError>;
    /// Claim a pending file for `owner`; `None` while another process holds it.
    async fn claim_file(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError>;
    /// The first pending file nobody holds of an importing job another live process runs.
    async fn claim_next_file(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(JobFile, Claim)>, StoreError>;
    /// Extend every pending file lease `owner` holds in a job (the job owner's heartbeat).
    async fn renew_file_leases(&self, job_id: &str, owner: &str, lease: Duration) -> Result<(), StoreError>;
    /// Extend one file lease; false when it is lost, the file ended or its job is stopping.
    async fn renew_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError>;
    async fn release_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
    ) -> Result<bool, StoreError>;
    async fn request_cancel(&self, id: &str) -> Result<bool, StoreError>;
    async fn job_summaries(&self) -> Result<Vec<JobSummary>, StoreError>;
    async fn job_state_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
    async fn job_summary(&self, id: &str) -> Result<Option<JobSummary>, StoreError>;
    /// Files `offset..offset + limit` of a job (at most `MAX_FILES_PAGE`), in plan order.
    async fn files_page(&self, job_id: &str, offset: i64, limit: i64) -> Result<Vec<JobFile>, StoreError>;
    /// A job's data files per type, and the resources its done untyped files held per type.
    async fn type_totals(&self, job_id: &str)
        -> Result<(Vec<TypeTotals>, BTreeMap<String, i64>), StoreError>;
    /// A job's files counted by state, per manifest of its plan.
    async fn manifest_files(&self, job_id: &str) -> Result<Vec<ManifestFiles>, StoreError>;
    /// Write a running job's live counters (its owner, every couple of seconds).
    async fn publish_live(&self, job_id: &str, live: &LiveCounters) -> Result<(), StoreError>;
    /// A job's live counters as last written.
    async fn live(&self, job_id: &str) -> Result<Option<LiveCounters>, StoreError>;
    /// The job no longer imports.
    async fn clear_live(&self, job_id: &str) -> Result<(), StoreError>;
}

/// The audit trail, newest events kept.
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn record_audit(&self, event: &AuditEvent, keep: i64) -> Result<(), StoreError>;
    async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError>;
    async fn audit_events_of(&self, class: AuditClass, limit: i64) -> Result<Vec<AuditEvent>, StoreError>;
}

#[async_trait]
impl AuditLog for Store {
    async fn record_audit(&self, event: &AuditEvent, keep: i64) -> Result<(), StoreError> {
        Store::record_audit(self, event, keep).await
    }
    async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        Store::audit_events(self, limit).await
    }
    async fn audit_events_of(&self, class: AuditClass, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        Store::audit_events_of(self, class, limit).await
    }
}

/// Client-assertion ids seen, shared by every process on the database: a replay is refused
/// whichever replica it reaches.
#[async_trait]
pub trait ReplayCache: Send + Sync {
    /// Record an id (insert-once); false when it was used already and has not expired.
    async fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
impl ReplayCache for Store {
    async fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        Store::remember_jti(self, client_id, jti, expires_at, now).await
    }
}

/// Secrets no configuration gave, kept where every replica reads the same (the first to start
/// writes them). SQLite keeps them in files under `DATA_DIR` instead (`auth::keys`).
#[async_trait]
pub trait SharedSecrets: Send + Sync {
    /// The stored value of `name`, storing `candidate` first when there is none; `true` with it
    /// when `candidate` was stored.
    async fn secret_or_insert(
        &self,
        name: &str,
        candidate: &str,
        now: i64,
    ) -> Result<(String, bool), StoreError>;
}

/// Held while one process alone does some work (the reaper's pass); dropping it lets go.
pub struct ExclusiveGuard(#[allow(dead_code)] Box<dyn Send>);

impl ExclusiveGuard {
    pub fn new(hold: impl Send + 'static) -> Self {
        Self(Box::new(hold))
    }
}

/// Work one process at a time does, across every process on the database.
#[async_trait]
pub trait Exclusive: Send + Sync {
    /// `None` when another process holds `name` now.
    async fn try_exclusive(&self, name: &str) -> Result<Option<ExclusiveGuard>, StoreError>;
}

/// One SQLite file belongs to one machine and one server: nothing to share the work with.
#[async_trait]
impl Exclusive for Store {
    async fn try_exclusive(&self, _name: &str) -> Result<Option<ExclusiveGuard>, StoreError> {
        Ok(Some(ExclusiveGuard::new(())))
    }
}

/// Sync states: what each export of each provider came to last (`jobs::sync_record` writes
/// them as jobs end; the sync views read them).
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// Keep how a job of this source ended: the last job's result and counts always (unless a
    /// later one was kept already), `since` only from a job that imported every file.
    async fn record_sync(&self, state: &SyncState) -> Result<(), StoreError>;
    async fn sync_states(&self) -> Result<Vec<SyncState>, StoreError>;
    async fn sync_state(&self, client_id: &str, source: &str) -> Result<Option<SyncState>, StoreError>;
}

/// Bulk Submit submissions and the manifest requests of each.
#[async_trait]
pub trait SubmissionStore: Send + Sync {
    /// False when the client has a submission of that id already.
    async fn insert_submission(&self, s: &Submission) -> Result<bool, StoreError>;
    async fn submission(
        &self,
        client_id: &str,
        submission_id: &str,
    ) -> Result<Option<Submission>, StoreError>;
    async fn submission_of_job(&self, job_id: &str) -> Result<Option<Submission>, StoreError>;
    async fn submissions(&self, client_id: &str) -> Result<Vec<Submission>, StoreError>;
    /// Every client's submissions, newest first, at most `limit`.
    async fn recent_submissions(&self, limit: i64) -> Result<Vec<Submission>, StoreError>;
    /// Move a submission on from `in-progress`; false when it was not in progress any more.
    async fn close_submission(
        &self,
        job_id: &str,
        status: SubmissionStatus,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Keep a request for a manifest (and the one it replaces), after the ones before it.
    async fn request_manifest(
        &self,
        job_id: &str,
        manifest_url: Option<&str>,
        replaces_url: Option<&str>,
        access: &SourceAccess,
        now: i64,
    ) -> Result<Requested, StoreError>;
    async fn manifest_requests(&self, job_id: &str) -> Result<Vec<ManifestRequest>, StoreError>;
    /// Record how a pending request ended; false when it was not pending.
    async fn finish_manifest_request(
        &self,
        job_id: &str,
        seq: i64,
        state: RequestState,
        outcome: Option<&str>,
    ) -> Result<bool, StoreError>;
}

/// Provider registrations.
#[async_trait]
pub trait RegistrationStore: Send + Sync {
    async fn insert_provider(&self, p: &Provider) -> Result<(), StoreError>;
    async fn providers(&self) -> Result<Vec<Provider>, StoreError>;
    async fn provider_any(&self, client_id: &str) -> Result<Option<Provider>, StoreError>;
    async fn revoke_provider(&self, client_id: &str, now: i64) -> Result<bool, StoreError>;
    async fn provider(&self, client_id: &str) -> Result<Option<Provider>, StoreError>;
    /// Active registrations whose sync plan's next pull is due by `now`.
    async fn due_syncs(&self, now: i64) -> Result<Vec<Provider>, StoreError>;
    /// Take the pull due at `was` by moving the next one to `next`; false when another process
    /// took it first (or the plan changed).
    async fn claim_sync(&self, client_id: &str, was: i64, next: i64) -> Result<bool, StoreError>;
}

#[async_trait]
impl JobStore for Store {
    async fn ping(&self) -> Result<(), StoreError> {
        Store::ping(self).await
    }
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
    async fn set_transaction_time(&self, id: &str, at: &str) -> Result<(), StoreError> {
        Store::set_transaction_time(self, id, at).await
    }
    async fn transaction_time(&self, id: &str) -> Result<Option<String>, StoreError> {
        Store::transaction_time(self, id).await
    }
    async fn set_notice(&self, id: &str, text: &str) -> Result<(), StoreError> {
        Store::set_notice(self, id, text).await
    }
    async fn notice(&self, id: &str) -> Result<Option<String>, StoreError> {
        Store::notice(self, id).await
    }
    async fn set_state(&self, id: &str, state: JobState) -> Result<(), StoreError> {
        Store::set_state(self, id, state).await
    }
    async fn set_progress(&self, id: &str, progress: &str) -> Result<(), StoreError> {
        Store::set_progress(self, id, progress).await
    }
    async fn set_throughput(&self, id: &str, series: &str) -> Result<(), StoreError> {
        Store::set_throughput(self, id, series).await
    }
    async fn throughput(&self, id: &str) -> Result<Option<String>, StoreError> {
        Store::throughput(self, id).await
    }
    async fn append_manifest(
        &self,
        job_id: &str,
        url: &str,
        files: &[JobFile],
        close: bool,
        now: i64,
    ) -> Result<Appended, StoreError> {
        Store::append_manifest(self, job_id, url, files, close, now).await
    }
    async fn withdraw_manifest(&self, job_id: &str, url: &str) -> Result<Option<Vec<JobFile>>, StoreError> {
        Store::withdraw_manifest(self, job_id, url).await
    }
    async fn manifests(&self, job_id: &str) -> Result<Vec<PlanManifest>, StoreError> {
        Store::manifests(self, job_id).await
    }
    async fn close_plan(&self, job_id: &str) -> Result<bool, StoreError> {
        Store::close_plan(self, job_id).await
    }
    async fn files(&self, job_id: &str) -> Result<Vec<JobFile>, StoreError> {
        Store::files(self, job_id).await
    }
    async fn type_counts(&self, job_id: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        Store::type_counts(self, job_id).await
    }
    async fn file_counts(&self, job_id: &str) -> Result<FileCounts, StoreError> {
        Store::file_counts(self, job_id).await
    }
    async fn finish_file(
        &self,
        job_id: &str,
        idx: i64,
        done: &FinishedFile<'_>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        Store::finish_file(self, job_id, idx, done, fence).await
    }
    async fn file_checkpoint(&self, job_id: &str, idx: i64) -> Result<Option<String>, StoreError> {
        Store::file_checkpoint(self, job_id, idx).await
    }
    async fn save_checkpoint(
        &self,
        job_id: &str,
        idx: i64,
        checkpoint: Option<&str>,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        Store::save_checkpoint(self, job_id, idx, checkpoint, fence).await
    }
    async fn complete_job(&self, id: &str, now: i64, fence: Option<i64>) -> Result<bool, StoreError> {
        Store::complete_job(self, id, now, fence).await
    }
    async fn restate_done_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError> {
        Store::restate_done_files(self, job_id, outcomes).await
    }
    async fn fail_pending_files(&self, job_id: &str, outcomes: &[(i64, String)]) -> Result<(), StoreError> {
        Store::fail_pending_files(self, job_id, outcomes).await
    }
    async fn fail_job(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        Store::fail_job(self, id, reason, now, fence).await
    }
    async fn delete_job(&self, id: &str) -> Result<bool, StoreError> {
        Store::delete_job(self, id).await
    }
    async fn cancel_job(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        Store::cancel_job(self, id, now).await
    }
    async fn claim_job(&self, id: &str, owner: &str, lease: Duration) -> Result<Option<Claim>, StoreError> {
        Store::claim_job(self, id, owner, lease).await
    }
    async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
        silent_since: i64,
    ) -> Result<Option<(Job, Claim)>, StoreError> {
        Store::claim_next(self, owner, lease, silent_since).await
    }
    async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<Renewal, StoreError> {
        Store::renew_lease(self, id, owner, token, lease).await
    }
    async fn release_lease(&self, id: &str, owner: &str, token: i64) -> Result<bool, StoreError> {
        Store::release_lease(self, id, owner, token).await
    }
    async fn lease_holder(&self, id: &str) -> Result<Option<String>, StoreError> {
        Store::lease_holder(self, id).await
    }
    async fn held_by_others(&self, id: &str, me: &str) -> Result<bool, StoreError> {
        Store::held_by_others(self, id, me).await
    }
    async fn claim_file(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        Store::claim_file(self, job_id, idx, owner, lease).await
    }
    async fn claim_next_file(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(JobFile, Claim)>, StoreError> {
        Store::claim_next_file(self, owner, lease).await
    }
    async fn renew_file_leases(&self, job_id: &str, owner: &str, lease: Duration) -> Result<(), StoreError> {
        Store::renew_file_leases(self, job_id, owner, lease).await
    }
    async fn renew_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        Store::renew_file_lease(self, job_id, idx, owner, token, lease).await
    }
    async fn release_file_lease(
        &self,
        job_id: &str,
        idx: i64,
        owner: &str,
        token: i64,
    ) -> Result<bool, StoreError> {
        Store::release_file_lease(self, job_id, idx, owner, token).await
    }
    async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        Store::request_cancel(self, id).await
    }
    async fn job_summaries(&self) -> Result<Vec<JobSummary>, StoreError> {
        Store::job_summaries(self).await
    }
    async fn job_state_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Store::job_state_counts(self).await
    }
    async fn job_summary(&self, id: &str) -> Result<Option<JobSummary>, StoreError> {
        Store::job_summary(self, id).await
    }
    async fn files_page(&self, job_id: &str, offset: i64, limit: i64) -> Result<Vec<JobFile>, StoreError> {
        Store::files_page(self, job_id, offset, limit).await
    }
    async fn type_totals(
        &self,
        job_id: &str,
    ) -> Result<(Vec<TypeTotals>, BTreeMap<String, i64>), StoreError> {
        Store::type_totals(self, job_id).await
    }
    async fn manifest_files(&self, job_id: &str) -> Result<Vec<ManifestFiles>, StoreError> {
        Store::manifest_files(self, job_id).await
    }
    async fn publish_live(&self, job_id: &str, live: &LiveCounters) -> Result<(), StoreError> {
        Store::publish_live(self, job_id, live).await
    }
    async fn live(&self, job_id: &str) -> Result<Option<LiveCounters>, StoreError> {
        Store::live(self, job_id).await
    }
    async fn clear_live(&self, job_id: &str) -> Result<(), StoreError> {
        Store::clear_live(self, job_id).await
    }
}

#[async_trait]
impl SyncStore for Store {
    async fn record_sync(&self, state: &SyncState) -> Result<(), StoreError> {
        Store::record_sync(self, state).await
    }
    async fn sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
        Store::sync_states(self).await
    }
    async fn sync_state(&self, client_id: &str, source: &str) -> Result<Option<SyncState>, StoreError> {
        Store::sync_state(self, client_id, source).await
    }
}

#[async_trait]
impl SubmissionStore for Store {
    async fn insert_submission(&self, s: &Submission) -> Result<bool, StoreError> {
        Store::insert_submission(self, s).await
    }
    async fn submission(
        &self,
        client_id: &str,
        submission_id: &str,
    ) -> Result<Option<Submission>, StoreError> {
        Store::submission(self, client_id, submission_id).await
    }
    async fn submission_of_job(&self, job_id: &str) -> Result<Option<Submission>, StoreError> {
        Store::submission_of_job(self, job_id).await
    }
    async fn submissions(&self, client_id: &str) -> Result<Vec<Submission>, StoreError> {
        Store::submissions(self, client_id).await
    }
    async fn recent_submissions(&self, limit: i64) -> Result<Vec<Submission>, StoreError> {
        Store::recent_submissions(self, limit).await
    }
    async fn close_submission(
        &self,
        job_id: &str,
        status: SubmissionStatus,
        now: i64,
    ) -> Result<bool, StoreError> {
        Store::close_submission(self, job_id, status, now).await
    }
    async fn request_manifest(
        &self,
        job_id: &str,
        manifest_url: Option<&str>,
        replaces_url: Option<&str>,
        access: &SourceAccess,
        now: i64,
    ) -> Result<Requested, StoreError> {
        Store::request_manifest(self, job_id, manifest_url, replaces_url, access, now).await
    }
    async fn manifest_requests(&self, job_id: &str) -> Result<Vec<ManifestRequest>, StoreError> {
        Store::manifest_requests(self, job_id).await
    }
    async fn finish_manifest_request(
        &self,
        job_id: &str,
        seq: i64,
        state: RequestState,
        outcome: Option<&str>,
    ) -> Result<bool, StoreError> {
        Store::finish_manifest_request(self, job_id, seq, state, outcome).await
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
    async fn due_syncs(&self, now: i64) -> Result<Vec<Provider>, StoreError> {
        Store::due_syncs(self, now).await
    }
    async fn claim_sync(&self, client_id: &str, was: i64, next: i64) -> Result<bool, StoreError> {
        Store::claim_sync(self, client_id, was, next).await
    }
}
