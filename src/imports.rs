//! Imports as every front end sees them (HTTP now, a command line next): starting one from a
//! provider's export, the status of a job, its outcome lines, and removal. Nothing here knows
//! HTTP; `routes::import` and `routes::jobs` render these.
use serde_json::{json, Value};

use crate::{
    auth::{keys::random_hex, provider_base::ProviderBase},
    domain::{is_job_id, Admission, FileCounts, FileTotals, Job, JobCaps, JobState, Provider},
    fhir::operation_outcome::{IssueCode, OperationOutcome, Severity},
    fhir::parameters::ImportRequest,
    jobs::{context::JobContext, pipeline, reaper::remove_job, JobError},
    store::StoreError,
    time_util::instant,
};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot find import job with id \"{0}\"")]
    NotFound(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("the job could not be removed")]
    Job(#[from] JobError),
    /// The export is not the registered provider's.
    #[error("exportUrl is not under the registered provider's base URL: {0}")]
    NotTheProviders(String),
    /// A stored registration that cannot be used (its `aud` is not a URL).
    #[error("the provider's stored registration is unusable: {0}")]
    BadRegistration(String),
    /// No room for another job now (`MAX_CONCURRENT_JOBS`, `MAX_JOBS_PER_PROVIDER`).
    #[error("{0}")]
    Busy(String),
    /// Only an unfinished job can be cancelled.
    #[error("the import job has {0} already; only a running one can be cancelled (DELETE removes it)")]
    Finished(&'static str),
    #[error("the job's files could not be removed")]
    Destination(#[from] crate::destination::DestinationError),
}

/// What a status poll reports.
#[derive(Debug)]
pub enum StatusView {
    /// Still running: a percentage and a short text for people.
    InProgress {
        percent: f64,
        text: String,
    },
    /// The Bulk Data completion body, and a one-line summary ("completed with errors: …").
    Completed {
        body: Value,
        summary: String,
    },
    Failed(OperationOutcome),
    /// Stopped on request; the OperationOutcome says when.
    Cancelled(OperationOutcome),
}

/// The imports service.
pub struct Imports<'a> {
    pub jobs: &'a JobContext,
}

impl Imports<'_> {
    /// Accept an import of `provider`'s export: checked, stored, and started in the background.
    pub async fn start_pull(&self, provider: &Provider, request: ImportRequest) -> Result<Job, ImportError> {
        let ctx = self.jobs;
        let base =
            ProviderBase::parse(&provider.aud).map_err(|e| ImportError::BadRegistration(e.to_string()))?;
        base.under(&request.export_url).map_err(|e| ImportError::NotTheProviders(e.to_string()))?;
        let job = self.admit(provider, request.export_type, request.export_url, request.kickoff).await?;
        pipeline::start(ctx, job.id.clone()).await;
        Ok(job)
    }

    /// Store a new queued job of `provider` if there is room for it (`MAX_CONCURRENT_JOBS`,
    /// `MAX_JOBS_PER_PROVIDER`); the caller starts it.
    pub async fn admit(
        &self,
        provider: &Provider,
        export_type: crate::fhir::parameters::ExportType,
        export_url: String,
        kickoff: Vec<crate::fhir::parameters::KickoffParam>,
    ) -> Result<Job, ImportError> {
        let ctx = self.jobs;
        let job = Job {
            id: random_hex(ctx.config.jobs_id_length),
            client_id: provider.client_id.clone(),
            export_type,
            export_url,
            kickoff,
            state: JobState::Queued,
            status_url: None,
            progress: None,
            failure: None,
            created_at: crate::time_util::now_unix(),
            completed_at: None,
            plan_open: true,
        };
        let limits = &ctx.config.limits;
        let caps = JobCaps {
            all: limits.max_concurrent_jobs as i64,
            per_provider: limits.max_jobs_per_provider as i64,
        };
        match ctx.store.insert_job_if_room(&job, caps).await? {
            Admission::Admitted => Ok(job),
            Admission::Full => Err(ImportError::Busy(format!(
                "{} imports are already running (MAX_CONCURRENT_JOBS); try again later",
                caps.all
            ))),
            Admission::ProviderFull => Err(ImportError::Busy(format!(
                "this provider already has {} imports running (MAX_JOBS_PER_PROVIDER); try again when one has finished",
                caps.per_provider
            ))),
        }
    }

    pub async fn find(&self, id: &str) -> Result<Job, ImportError> {
        let found = if is_job_id(id) { self.jobs.store.job(id).await? } else { None };
        found.ok_or_else(|| ImportError::NotFound(id.to_string()))
    }

    /// The job's status; `outcome_url` is where its outcome lines are served.
    pub async fn status(&self, id: &str, outcome_url: &str) -> Result<StatusView, ImportError> {
        // A job running here answers from memory: no database round trip per poll.
        if let Some(live) = self.jobs.jobs.progress(id) {
            let mut view = in_progress(live.state, live.text.clone(), live.files);
            if let (StatusView::InProgress { text, percent }, Some(r)) = (&mut view, &live.received) {
                if live.state == JobState::Importing {
                    text.push_str(&received_text(r));
                    if let Some(expected) = live.expected_resources {
                        text.push_str(&format!(" of {expected} announced"));
                    }
                    if let Some(eta) = live.eta_secs() {
                        text.push_str(&format!("; about {} left", crate::time_util::duration_text(eta)));
                    }
                    // Moves within a long file where the manifests gave counts.
                    *percent = live.percent();
                }
            }
            return Ok(view);
        }
        let job = self.find(id).await?;
        let store = &self.jobs.store;
        Ok(match job.state {
            JobState::Completed => {
                let totals = store.file_totals(&job.id).await?;
                let count = outcome_count(&job, totals.outcomes);
                let body = json!({
                    "transactionTime": instant(job.created_at),
                    "requiresAccessToken": false,
                    "outcome": [{ "type": "OperationOutcome", "url": outcome_url, "count": count }],
                    "extension": {
                        "result": if totals.has_errors() { "completed-with-errors" } else { "completed" },
                        "files": totals.files,
                        "failedFiles": totals.failed,
                        "providerErrors": totals.provider_errors,
                        "resources": totals.resources,
                        "resourcesByType": store.type_counts(&job.id).await?,
                        "completedAt": job.completed_at.map(instant),
                        // When the reaper removes the job and its files (JOBS_MAX_AGE).
                        "filesKeptUntil": job.completed_at.map(|at| crate::time_util::kept_until(at, self.jobs.config.jobs_max_age)),
                    }
                });
                StatusView::Completed { body, summary: completion_text(&totals) }
            }
            JobState::Failed => {
                let reason = job.failure.clone().unwrap_or_else(|| "the import failed".into());
                let mut oo =
                    OperationOutcome::error(IssueCode::Exception, format!("import failed: {reason}"));
                oo.issue
                    .extend(OperationOutcome::information(format!("per-file outcomes: {outcome_url}")).issue);
                StatusView::Failed(oo)
            }
            JobState::Cancelled => {
                let when = job.completed_at.map(instant).unwrap_or_default();
                // A submission its provider stopped lost all it stored (`submissions`), resource
                // store rows too; an operator's cancel removes what any cancel does.
                let stopped = match job.export_type {
                    crate::fhir::parameters::ExportType::Submit => {
                        let s = self.jobs.submissions.submission_of_job(&job.id).await?;
                        s.is_some_and(|s| s.status == crate::fhir::bulk_submit::SubmissionStatus::Stopped)
                    }
                    _ => false,
                };
                let text = match stopped {
                    true => format!(
                        "the submission was stopped by its provider at {when}: everything it stored was removed"
                    ),
                    false => format!(
                        "the import was cancelled on request at {when}: {}",
                        self.jobs.config.destination.what_a_stop_does()
                    ),
                };
                StatusView::Cancelled(OperationOutcome::single(
                    Severity::Information,
                    IssueCode::Processing,
                    text,
                ))
            }
            JobState::Queued | JobState::Exporting | JobState::Importing => {
                let files = if job.state == JobState::Importing {
                    store.file_counts(&job.id).await?
                } else {
                    FileCounts::default()
                };
                let mut view = in_progress(job.state, job.progress, files);
                // Running on another replica: what its owner last wrote of it, so a long file
                // moves here too.
                let live = match job.state {
                    JobState::Importing => store.live(&job.id).await?,
                    _ => None,
                };
                if let (StatusView::InProgress { text, percent }, Some(live)) = (&mut view, live) {
                    let (totals, _) = store.type_totals(&job.id).await?;
                    let expected = totals
                        .iter()
                        .all(|t| t.announced)
                        .then(|| totals.iter().map(|t| t.expected.max(0) as u64).sum::<u64>());
                    text.push_str(&format!(
                        "; {:.1} MB and {} resources received so far",
                        live.bytes as f64 / 1_000_000.0,
                        live.resources
                    ));
                    if let Some(expected) = expected {
                        text.push_str(&format!(" of {expected} announced"));
                    }
                    *percent = crate::jobs::progress::percent_done(
                        expected,
                        Some(live.resources.max(0) as u64),
                        files,
                    );
                }
                view
            }
        })
    }

    /// One OperationOutcome per finished file, plus the job's failure; never empty once finished.
    pub async fn outcome_lines(&self, id: &str) -> Result<Vec<String>, ImportError> {
        let job = self.find(id).await?;
        let mut lines = self.jobs.store.file_outcomes(&job.id).await?;
        if job.state == JobState::Cancelled {
            let oo = OperationOutcome::error(IssueCode::Processing, "the import was cancelled on request");
            lines.push(serde_json::to_string(&oo).unwrap_or_default());
        }
        if let Some(reason) = &job.failure {
            let oo = OperationOutcome::error(IssueCode::Exception, format!("import failed: {reason}"));
            lines.push(serde_json::to_string(&oo).unwrap_or_default());
        }
        if lines.is_empty() && job.state == JobState::Completed {
            let oo = OperationOutcome::information("the export listed no files; nothing was imported");
            lines.push(serde_json::to_string(&oo).unwrap_or_default());
        }
        // What became of its notice (NOTIFY_URL), once it was sent.
        if let Some(notice) = self.jobs.store.notice(&job.id).await? {
            let oo = if notice.starts_with(crate::notify::DELIVERED) {
                OperationOutcome::information(notice)
            } else {
                OperationOutcome::single(Severity::Warning, IssueCode::Transient, notice)
            };
            lines.push(serde_json::to_string(&oo).unwrap_or_default());
        }
        Ok(lines)
    }

    /// Stop an unfinished job and keep it as cancelled (until `JOBS_MAX_AGE`): what it stored
    /// is removed, files not yet imported say why, and the provider's export is released.
    pub async fn cancel(&self, id: &str) -> Result<Job, ImportError> {
        self.stop(id, None).await
    }

    /// Cancel a running job and remove what it stored as `removal` says, its done files' outcomes
    /// then saying `why`; `None`: as a cancel does.
    pub async fn stop(
        &self,
        id: &str,
        removal: Option<(crate::destination::Removal, String)>,
    ) -> Result<Job, ImportError> {
        let ctx = self.jobs;
        let job = self.find(id).await?;
        if job.state.is_finished() {
            return Err(ImportError::Finished(job.state.as_str()));
        }
        crate::jobs::reaper::stop_job(ctx, &job.id).await?;
        if !ctx.store.cancel_job(&job.id, crate::time_util::now_unix()).await? {
            // It finished while it was being stopped: it stays as it finished.
            let now = self.find(id).await?;
            return Err(ImportError::Finished(now.state.as_str()));
        }
        // Cancelled: incomplete, like a failed job (unless the caller removes more).
        let (removal, why) = match removal {
            Some(stopped) => stopped,
            None => (
                crate::destination::Removal::Failed,
                format!("the import was cancelled: {}", ctx.config.destination.what_a_stop_does()),
            ),
        };
        ctx.destination.delete_job(&job.id, removal).await?;
        let files = ctx.store.files(&job.id).await?;
        ctx.store.restate_done_files(&job.id, &crate::jobs::removed_note::restated(&files, &why)).await?;
        let pending: Vec<(i64, String)> = files
            .iter()
            .filter(|f| f.state == crate::domain::FileState::Pending)
            .map(|f| {
                let oo = OperationOutcome::error(
                    IssueCode::Incomplete,
                    format!(
                        "file {}: not imported: the import was cancelled",
                        crate::jobs::download::describe(f)
                    ),
                );
                (f.idx, serde_json::to_string(&oo).unwrap_or_default())
            })
            .collect();
        ctx.store.fail_pending_files(&job.id, &pending).await?;
        tracing::info!(job = %crate::telemetry::shown_id(&job.id), "import job cancelled on request");
        Ok(job)
    }

    /// Cancel the job if it runs, and remove it and everything it stored.
    pub async fn remove(&self, id: &str) -> Result<Job, ImportError> {
        let job = self.find(id).await?;
        remove_job(self.jobs, &job.id).await?;
        tracing::info!(job = %crate::telemetry::shown_id(&job.id), "import job removed on request");
        Ok(job)
    }
}

/// The same view from memory or from the store alike.
fn in_progress(state: JobState, provider_text: Option<String>, files: FileCounts) -> StatusView {
    if state == JobState::Importing {
        let text = if files.total > 0 {
            format!("importing: {} of {} files done", files.finished, files.total)
        } else {
            "finishing".to_string()
        };
        return StatusView::InProgress { percent: files.percent(), text };
    }
    let text = provider_text.unwrap_or_else(|| "waiting for the provider's export".into());
    StatusView::InProgress { percent: 0.0, text }
}

/// "; 12.3 MB and 4567 resources received so far (2.1 MB/s)": what arrived, files in progress
/// included, so a poll sees a long file move before it ends.
fn received_text(r: &crate::jobs::progress::Received) -> String {
    let mb = |b: f64| b / 1_000_000.0;
    format!(
        "; {:.1} MB and {} resources received so far ({:.1} MB/s)",
        mb(r.bytes as f64),
        r.resources,
        mb(r.bytes_per_sec)
    )
}

/// "completed", or "completed with errors: …" saying what went wrong, for `X-Status` and people.
pub fn completion_text(totals: &FileTotals) -> String {
    if !totals.has_errors() {
        return "completed".into();
    }
    let mut parts = Vec::new();
    if totals.failed > 0 {
        parts.push(format!("{} of {} files failed", totals.failed, totals.files));
    }
    if totals.provider_errors > 0 {
        parts.push(format!("the provider reported {} error(s)", totals.provider_errors));
    }
    format!("completed with errors: {}", parts.join("; "))
}

/// How many lines `outcome_lines` gives, from counts alone (no outcome text is read).
fn outcome_count(job: &Job, file_outcomes: i64) -> i64 {
    let lines = file_outcomes + i64::from(job.failure.is_some());
    if lines == 0 && job.state == JobState::Completed {
        1
    } else {
        lines
    }
}
