//! A job's plan: the manifests intakes add (ping-and-pull adds one and closes the plan; a Bulk
//! Submit submission adds any number while it is open), withdrawn or replaced ones, and closing.
//! Each change is stored first, then the running job is told, so it picks up new files and
//! completes once the plan is closed and nothing is pending.
use std::collections::{HashMap, HashSet};

use crate::jobs::context::JobContext;
use crate::{
    destination::{
        file_name::{FileNameTemplate, FileNameVars},
        DestinationError,
    },
    domain::{Appended, FileState, JobFile},
    fhir::manifest::{FileKind, PlannedFile},
    store::StoreError,
    time_util::now_unix,
};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the import takes no more manifests: it has finished, or its plan was closed")]
    Closed,
    #[error("the manifest {0} is part of this import already")]
    Duplicate(String),
    #[error("the import has no manifest {0} (or it was withdrawn already)")]
    UnknownManifest(String),
    #[error("the import would list more than {0} files (MAX_FILES_PER_JOB)")]
    TooManyFiles(usize),
    #[error("the import's plan kept changing while a manifest was added; try again")]
    Busy,
    /// Checked at start (config.rs), so only a bug gets here.
    #[error("DOWNLOAD_FILE_NAME is invalid: {0}")]
    FileNames(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("the data of a withdrawn manifest could not be removed")]
    Destination(#[from] DestinationError),
}

/// Attempts at adding a manifest while other additions to the same plan come first.
const MAX_APPEND_ATTEMPTS: usize = 5;

/// Add a manifest's files to a job's plan (named for the destination, numbered after the files
/// already planned); `close` closes the plan with it. Returns the manifest's number in the plan.
pub async fn append(
    ctx: &JobContext,
    job_id: &str,
    manifest_url: &str,
    planned: Vec<PlannedFile>,
    close: bool,
) -> Result<i64, PlanError> {
    let template = FileNameTemplate::parse(&ctx.config.download_file_name).map_err(PlanError::FileNames)?;
    let max_files = ctx.config.limits.max_files_per_job;
    for _ in 0..MAX_APPEND_ATTEMPTS {
        let existing = ctx.store.files(job_id).await?;
        let listed = existing.iter().filter(|f| f.state != FileState::Withdrawn).count();
        if listed + planned.len() > max_files {
            return Err(PlanError::TooManyFiles(max_files));
        }
        let files = name_files(&template, job_id, &existing, planned.clone());
        match ctx.store.append_manifest(job_id, manifest_url, &files, close, now_unix()).await? {
            Appended::Added(idx) => {
                ctx.jobs.plan_changed(job_id);
                return Ok(idx);
            }
            Appended::Stale => continue,
            Appended::Duplicate => return Err(PlanError::Duplicate(manifest_url.to_string())),
            Appended::Closed => return Err(PlanError::Closed),
        }
    }
    Err(PlanError::Busy)
}

/// Withdraw a manifest: its files are no longer part of the import, and what was stored of them
/// is removed (a file still downloading is removed when it finishes). Returns how many stored
/// files were removed.
pub async fn withdraw(ctx: &JobContext, job_id: &str, manifest_url: &str) -> Result<usize, PlanError> {
    let files = ctx
        .store
        .withdraw_manifest(job_id, manifest_url)
        .await?
        .ok_or_else(|| PlanError::UnknownManifest(manifest_url.to_string()))?;
    ctx.jobs.plan_changed(job_id);
    let mut removed = 0;
    for f in files.iter().filter(|f| has_data(f)) {
        ctx.destination.delete_file(&f.job_id, &f.name).await?;
        removed += 1;
    }
    Ok(removed)
}

/// Withdraw one manifest and add another in its place.
pub async fn replace(
    ctx: &JobContext,
    job_id: &str,
    old_url: &str,
    new_url: &str,
    planned: Vec<PlannedFile>,
) -> Result<i64, PlanError> {
    withdraw(ctx, job_id, old_url).await?;
    append(ctx, job_id, new_url, planned, false).await
}

/// Close the plan: the job completes once its pending files are done. False if it was closed.
pub async fn close(ctx: &JobContext, job_id: &str) -> Result<bool, PlanError> {
    let closed = ctx.store.close_plan(job_id).await?;
    ctx.jobs.plan_changed(job_id);
    Ok(closed)
}

/// Whether a file was stored at the destination (data files done; `error[]` files never are).
pub fn has_data(f: &JobFile) -> bool {
    f.state == FileState::Done && f.kind != FileKind::Error
}

/// `{resourceType}` in destination names of untyped (`organizeOutputBy`) files.
const UNTYPED_NAME: &str = "Mixed";

/// Destination names: the template, with error/deleted files prefixed, numbered per type after
/// the files already planned, and never the name of another file of the job (a withdrawn one's
/// included, so removing it can never remove a newer file).
fn name_files(
    template: &FileNameTemplate,
    job_id: &str,
    existing: &[JobFile],
    planned: Vec<PlannedFile>,
) -> Vec<JobFile> {
    let mut per_type: HashMap<(FileKind, String), usize> = HashMap::new();
    for f in existing {
        *per_type.entry((f.kind, f.resource_type.clone())).or_default() += 1;
    }
    let mut used: HashSet<String> = existing.iter().map(|f| f.name.clone()).collect();
    let first = existing.iter().map(|f| f.idx + 1).max().unwrap_or(0);
    planned
        .into_iter()
        .enumerate()
        .map(|(n, f)| {
            let idx = first + n as i64;
            let count = per_type.entry((f.kind, f.resource_type.clone())).or_default();
            *count += 1;
            let mut name = template.render(&FileNameVars {
                job_id,
                resource_type: if f.resource_type.is_empty() { UNTYPED_NAME } else { &f.resource_type },
                file_number: *count,
                url: &f.url,
            });
            if f.kind != FileKind::Output && !template.keeps_original_names() {
                name = format!("{}-{name}", f.kind.as_str());
            }
            let original = name.clone();
            let mut prefix = idx;
            // Ends: each pass tries a number not tried before.
            while !used.insert(name.clone()) {
                name = format!("{prefix}-{original}");
                prefix += 1;
            }
            JobFile {
                job_id: job_id.to_string(),
                idx,
                manifest_idx: 0,
                kind: f.kind,
                resource_type: f.resource_type,
                url: f.url,
                requires_token: f.requires_token,
                name,
                state: FileState::Pending,
                resources: 0,
                bytes: 0,
                outcome: None,
                provider_errors: 0,
                type_counts: None,
                expected_resources: f.expected_resources,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(urls: &[&str]) -> Vec<PlannedFile> {
        urls.iter()
            .map(|u| PlannedFile {
                kind: FileKind::Output,
                resource_type: "Patient".into(),
                url: u.to_string(),
                requires_token: true,
                expected_resources: None,
            })
            .collect()
    }

    #[test]
    fn destination_names_never_collide() {
        let template = FileNameTemplate::parse("{originalName}").unwrap();
        let urls =
            ["http://p/2-a.ndjson", "http://p/x/a.ndjson", "http://p/y/a.ndjson", "http://p/z/a.ndjson"];
        let names: Vec<String> =
            name_files(&template, "job", &[], planned(&urls)).into_iter().map(|f| f.name).collect();
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn a_second_manifest_continues_the_numbering_and_reuses_no_name() {
        let template = FileNameTemplate::parse("{resourceType}.{fileNumber}.ndjson").unwrap();
        let mut first = name_files(&template, "job", &[], planned(&["http://p/a", "http://p/b"]));
        first[1].state = FileState::Withdrawn;
        let second = name_files(&template, "job", &first, planned(&["http://p/c"]));
        assert_eq!(second[0].idx, 2);
        assert_eq!(second[0].name, "Patient.3.ndjson");
        assert!(first.iter().all(|f| f.name != second[0].name));
    }
}
