//! Bulk Submit as every front end sees it: a `$bulk-submit` request taken into its submission
//! (the first one makes the submission and its job), a submission found for its status, and the
//! status manifest once it is done. Nothing here knows HTTP; `routes::bulk_submit` renders it.
use serde_json::{json, Value};

use crate::{
    auth::provider_base::ProviderBase,
    domain::{FileState, JobState, Provider, RequestState, Requested, SourceAccess, Submission},
    fhir::{
        bulk_submit::{SubmissionStatus, SubmitRequest},
        operation_outcome::OperationOutcome,
        parameters::ExportType,
    },
    imports::{ImportError, Imports},
    jobs::{context::JobContext, jwe::ContentKey, pipeline},
    store::StoreError,
    time_util::{instant, now_unix},
};

#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    #[error("this client may not submit for submitter '{0}': its registration names another (or none; register it with 'submitter')")]
    UnknownSubmitter(String),
    #[error("there is no submission '{0}' of this client")]
    NotFound(String),
    #[error("submission '{id}' is {status} already: it takes no more requests")]
    Closed { id: String, status: &'static str },
    #[error("manifest {0} is part of this submission already")]
    Duplicate(String),
    #[error("{0}")]
    NotTheProviders(String),
    #[error("fileEncryptionKey: {0}")]
    BadKey(String),
    /// No room for another job now.
    #[error("{0}")]
    Busy(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("the submission's job could not be stopped")]
    Import(#[from] ImportError),
}

/// What a status poll of a submission comes to.
#[derive(Debug)]
pub enum SubmissionView {
    /// Still working: a percentage and a short text.
    InProgress { percent: f64, text: String },
    /// Done (completed and imported, or stopped): the status manifest.
    Done(Value),
    /// Its job failed as a whole.
    Failed(OperationOutcome),
}

/// Where a status manifest's parts are served: request `seq`'s outcome lines, and page `n`.
pub struct StatusUrls<'a> {
    pub outcome: &'a (dyn Fn(i64) -> String + Sync),
    pub page: &'a (dyn Fn(usize) -> String + Sync),
}

pub struct Submissions<'a> {
    pub jobs: &'a JobContext,
}

impl Submissions<'_> {
    /// Take one `$bulk-submit` request from `provider`; the submission it went into.
    pub async fn submit(&self, provider: &Provider, r: SubmitRequest) -> Result<Submission, SubmissionError> {
        let ctx = self.jobs;
        if !provider.speaks_for(r.submitter.system.as_deref(), &r.submitter.value) {
            return Err(SubmissionError::UnknownSubmitter(r.submitter.value.clone()));
        }
        let encryption_key = match &r.encryption_key {
            Some(raw) => Some(ContentKey::parse(raw).map_err(SubmissionError::BadKey)?.encoded()),
            None => None,
        };
        let base = ProviderBase::parse(&provider.aud)
            .map_err(|e| SubmissionError::NotTheProviders(format!("the registration is unusable: {e}")))?
            .with_origins(&provider.token_origin_list(), provider.file_origin_list());
        let named = [("manifestUrl", &r.manifest_url), ("replacesManifestUrl", &r.replaces_manifest_url)];
        let named = named.into_iter().filter_map(|(name, raw)| Some((name, raw.as_ref()?)));
        // Our token is asked for only where the registration allows.
        let metadata = r.oauth_metadata_urls.iter().map(|raw| ("oauthMetadataUrl", raw));
        for (name, raw) in named.chain(metadata) {
            let trusted = url::Url::parse(raw).is_ok_and(|u| base.is_trusted(&u));
            if !trusted {
                return Err(SubmissionError::NotTheProviders(format!(
                    "{name} {raw} is not on {}; list its origin in the registration's token_origins if it belongs to the provider",
                    base.trusted_list()
                )));
            }
        }
        let submission = match ctx.submissions.submission(&provider.client_id, &r.submission_id).await? {
            Some(s) => s,
            None if r.manifest_url.is_none() && r.status != Some(SubmissionStatus::InProgress) => {
                return Err(SubmissionError::NotFound(r.submission_id.clone()))
            }
            None => {
                let opened = self.open(provider, &r).await?;
                ctx.metrics.submission_request("opened");
                opened
            }
        };
        if submission.status != SubmissionStatus::InProgress {
            return Err(closed(&submission));
        }
        let job_id = submission.job_id.clone();
        if r.manifest_url.is_some() || r.replaces_manifest_url.is_some() {
            let asked = ctx
                .submissions
                .request_manifest(
                    &job_id,
                    r.manifest_url.as_deref(),
                    r.replaces_manifest_url.as_deref(),
                    &SourceAccess {
                        headers: r.headers,
                        oauth_metadata_urls: r.oauth_metadata_urls,
                        encryption_key,
                    },
                    now_unix(),
                )
                .await?;
            match asked {
                Requested::Added(seq) => {
                    let kind = match (r.manifest_url.is_some(), r.replaces_manifest_url.is_some()) {
                        (true, false) => "manifest",
                        (true, true) => "replace",
                        _ => "withdraw",
                    };
                    ctx.metrics.submission_request(kind);
                    tracing::info!(request = seq, kind, "manifest request taken");
                }
                Requested::Duplicate => {
                    return Err(SubmissionError::Duplicate(r.manifest_url.clone().unwrap_or_default()))
                }
                Requested::Closed => return Err(closed(&submission)),
            }
        }
        if let Some(status @ (SubmissionStatus::Completed | SubmissionStatus::Stopped)) = r.status {
            if !ctx.submissions.close_submission(&job_id, status, now_unix()).await? {
                return Err(closed(&submission));
            }
            if status == SubmissionStatus::Stopped {
                // Everything stops and what was stored goes, resource-store rows included.
                let why = "the provider stopped the submission: everything it stored was removed".to_string();
                let withdrawn = crate::destination::Removal::Withdrawn;
                match (Imports { jobs: ctx }).stop(&job_id, Some((withdrawn, why.clone()))).await {
                    Ok(_) => {}
                    Err(ImportError::Finished(_)) => {
                        ctx.destination.delete_job(&job_id, withdrawn).await.map_err(ImportError::from)?;
                        let files = ctx.store.files(&job_id).await?;
                        let restated = crate::jobs::removed_note::restated(&files, &why);
                        ctx.store.restate_done_files(&job_id, &restated).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            ctx.metrics.submission_request(status.as_str());
            tracing::info!(status = status.as_str(), "submission closed by its provider");
        }
        ctx.jobs.plan_changed(&job_id);
        Ok(ctx.submissions.submission_of_job(&job_id).await?.unwrap_or(submission))
    }

    /// A new submission and its job, started at once (its intake waits for requests).
    async fn open(&self, provider: &Provider, r: &SubmitRequest) -> Result<Submission, SubmissionError> {
        let ctx = self.jobs;
        let export_url = r
            .fhir_base_url
            .clone()
            .or_else(|| r.manifest_url.clone())
            .unwrap_or_else(|| provider.aud.clone());
        let job = match (Imports { jobs: ctx }).admit(provider, ExportType::Submit, export_url, vec![]).await
        {
            Ok(job) => job,
            Err(ImportError::Busy(message)) => return Err(SubmissionError::Busy(message)),
            Err(e) => return Err(e.into()),
        };
        let now = job.created_at;
        let submission = Submission {
            client_id: provider.client_id.clone(),
            submission_id: r.submission_id.clone(),
            job_id: job.id.clone(),
            submitter_system: r.submitter.system.clone(),
            submitter_value: r.submitter.value.clone(),
            status: SubmissionStatus::InProgress,
            fhir_base_url: r.fhir_base_url.clone(),
            created_at: now,
            updated_at: now,
        };
        if !ctx.submissions.insert_submission(&submission).await? {
            // Another request made it first: that one is the submission.
            ctx.store.delete_job(&job.id).await?;
            return ctx
                .submissions
                .submission(&provider.client_id, &r.submission_id)
                .await?
                .ok_or_else(|| SubmissionError::NotFound(r.submission_id.clone()));
        }
        tracing::info!(job = %crate::telemetry::shown_id(&job.id), client_id = %provider.client_id, "submission opened");
        pipeline::start(ctx, job.id.clone()).await;
        Ok(submission)
    }

    /// The caller's submission of that id, named for that submitter.
    pub async fn find(
        &self,
        provider: &Provider,
        submitter: (Option<&str>, &str),
        submission_id: &str,
    ) -> Result<Submission, SubmissionError> {
        if !provider.speaks_for(submitter.0, submitter.1) {
            return Err(SubmissionError::UnknownSubmitter(submitter.1.to_string()));
        }
        self.jobs
            .submissions
            .submission(&provider.client_id, submission_id)
            .await?
            .ok_or_else(|| SubmissionError::NotFound(submission_id.to_string()))
    }

    /// The caller's submission behind a status URL.
    pub async fn of_job(&self, provider: &Provider, job_id: &str) -> Result<Submission, SubmissionError> {
        let found = self.jobs.submissions.submission_of_job(job_id).await?;
        found
            .filter(|s| s.client_id == provider.client_id)
            .ok_or_else(|| SubmissionError::NotFound(crate::telemetry::shown_id(job_id)))
    }

    /// Where a submission is; `urls` say where request `seq`'s outcome lines are served and
    /// where page `n` of the status manifest is.
    pub async fn status(
        &self,
        s: &Submission,
        page: usize,
        urls: &StatusUrls<'_>,
    ) -> Result<SubmissionView, SubmissionError> {
        let ctx = self.jobs;
        let job = ctx
            .store
            .job(&s.job_id)
            .await?
            .ok_or_else(|| SubmissionError::NotFound(s.submission_id.clone()))?;
        if job.state == JobState::Failed {
            let why = job.failure.unwrap_or_else(|| "the submission's import failed".into());
            return Ok(SubmissionView::Failed(OperationOutcome::error(
                crate::fhir::operation_outcome::IssueCode::Exception,
                why,
            )));
        }
        let done = match s.status {
            SubmissionStatus::Stopped => true,
            SubmissionStatus::Completed => job.state == JobState::Completed,
            SubmissionStatus::InProgress => false,
        };
        if !done {
            let counts = ctx.store.file_counts(&s.job_id).await?;
            let percent = if counts.total == 0 { 0.0 } else { counts.percent() };
            let text =
                format!("{}: {} of {} files imported", s.status.as_str(), counts.finished, counts.total);
            return Ok(SubmissionView::InProgress { percent, text });
        }
        let requests = ctx.submissions.manifest_requests(&s.job_id).await?;
        let manifests = ctx.store.manifests(&s.job_id).await?;
        let files = ctx.store.files(&s.job_id).await?;
        let size = ctx.config.limits.submit_status_page_size.max(1);
        let named: Vec<_> = requests.iter().filter(|r| r.manifest_url.is_some()).collect();
        let from = page.checked_mul(size).filter(|from| page == 0 || *from < named.len());
        let Some(from) = from else {
            return Err(SubmissionError::NotFound(format!(
                "page {page} of submission '{}'",
                s.submission_id
            )));
        };
        let mut outcome = Vec::new();
        for request in named.iter().skip(from).take(size) {
            let url = request.manifest_url.as_deref().unwrap_or_default();
            let lines = request_outcomes(request, &requests, &manifests, &files, afterwards(s));
            let mut counts = std::collections::BTreeMap::<String, i64>::new();
            for line in &lines {
                for issue in line.get("issue").and_then(Value::as_array).into_iter().flatten() {
                    let severity = issue.get("severity").and_then(Value::as_str).unwrap_or("information");
                    *counts.entry(severity.to_string()).or_default() += 1;
                }
            }
            let count_severity: Vec<Value> =
                counts.into_iter().map(|(code, count)| json!({"code": code, "count": count})).collect();
            outcome.push(json!({
                "type": "OperationOutcome",
                "url": (urls.outcome)(request.seq),
                "manifestUrl": url,
                "countSeverity": count_severity,
            }));
        }
        let when = job.completed_at.unwrap_or(s.updated_at);
        // Large ones in pages (Bulk Data manifests' `link` next), every page a whole manifest.
        let link: Vec<Value> = if from + size < named.len() {
            vec![json!({"relation": "next", "url": (urls.page)(page + 1)})]
        } else {
            vec![]
        };
        Ok(SubmissionView::Done(json!({
            "transactionTime": instant(when),
            "requiresAccessToken": true,
            "submissionId": s.submission_id,
            "submissionStatus": s.status.as_str(),
            "extension": {"submissionId": s.submission_id},
            "output": [],
            "deleted": [],
            "outcome": outcome,
            // For readers written against the earlier drafts (the SMART provider reads `error`).
            "error": outcome,
            "link": link,
        })))
    }

    /// The outcome lines of one of a submission's requests.
    pub async fn request_outcome(&self, s: &Submission, seq: i64) -> Result<Vec<Value>, SubmissionError> {
        let ctx = self.jobs;
        let requests = ctx.submissions.manifest_requests(&s.job_id).await?;
        let request = requests
            .iter()
            .find(|r| r.seq == seq)
            .ok_or_else(|| SubmissionError::NotFound(format!("{}/{seq}", s.submission_id)))?;
        let manifests = ctx.store.manifests(&s.job_id).await?;
        let files = ctx.store.files(&s.job_id).await?;
        Ok(request_outcomes(request, &requests, &manifests, &files, afterwards(s)))
    }
}

fn afterwards(s: &Submission) -> Afterwards {
    match s.status {
        SubmissionStatus::Stopped => Afterwards::Stopped,
        _ => Afterwards::Kept,
    }
}

fn closed(s: &Submission) -> SubmissionError {
    SubmissionError::Closed { id: s.submission_id.clone(), status: s.status.as_str() }
}

/// What became of a request's data after it was imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Afterwards {
    Kept,
    /// The provider stopped (aborted) the submission: everything it stored was removed.
    Stopped,
}

/// A request's outcome lines: its own failure, else the outcome of each file its manifest listed.
/// A file still pending says so; one whose data is gone (its manifest withdrawn or replaced by a
/// later request, or the submission stopped) says that and what was removed, never "imported".
fn request_outcomes(
    request: &crate::domain::ManifestRequest,
    requests: &[crate::domain::ManifestRequest],
    manifests: &[crate::domain::PlanManifest],
    files: &[crate::domain::JobFile],
    afterwards: Afterwards,
) -> Vec<Value> {
    if request.state == RequestState::Failed {
        let stored = request.outcome.as_deref().and_then(|o| serde_json::from_str(o).ok());
        return vec![stored.unwrap_or_else(|| json!({"resourceType": "OperationOutcome", "issue": []}))];
    }
    let url = request.manifest_url.as_deref().unwrap_or_default();
    let Some(manifest) = manifests.iter().rev().find(|m| m.url == url) else { return vec![] };
    // Who withdrew it: the first later request naming it as replaced.
    let withdrawn_by =
        requests.iter().find(|r| r.seq > request.seq && r.replaces_url.as_deref() == Some(url));
    let how = match withdrawn_by.and_then(|r| r.manifest_url.as_deref()) {
        Some(by) => {
            let shown = url::Url::parse(by)
                .map_or_else(|_| by.to_string(), |u| crate::auth::provider_base::redact(&u));
            format!("its manifest was replaced by {shown}")
        }
        None => "its manifest was withdrawn by the provider".to_string(),
    };
    let line =
        |text: String| serde_json::to_value(OperationOutcome::information(text)).unwrap_or(Value::Null);
    let removed = |f: &crate::domain::JobFile| match f.resources > 0 || f.bytes > 0 {
        true => format!("the {} resources ({} bytes) it had imported were removed", f.resources, f.bytes),
        false => "nothing of it had been stored".to_string(),
    };
    files
        .iter()
        .filter(|f| f.manifest_idx == manifest.idx)
        .map(|f| match (&f.outcome, f.state) {
            (_, FileState::Withdrawn) => line(format!("file {}: withdrawn: {how}; {}", f.url, removed(f))),
            (Some(_), FileState::Done) if afterwards == Afterwards::Stopped => {
                line(format!("file {}: the provider stopped the submission; {}", f.url, removed(f)))
            }
            (Some(o), _) => serde_json::from_str(o).unwrap_or(Value::Null),
            (None, _) if afterwards == Afterwards::Stopped => {
                line(format!("file {}: not imported: the provider stopped the submission", f.url))
            }
            (None, _) => line(format!("file {}: not imported yet", f.url)),
        })
        .collect()
}
