//! Bulk Submit submissions in SQLite; `postgres::submissions` runs the same statements (written
//! here once, with `?N` placeholders) on PostgreSQL. Times come from the caller: no statement
//! here compares against the database's clock.
use super::{Store, StoreError};
use crate::{
    domain::{ManifestRequest, RequestState, Requested, SourceAccess, Submission},
    fhir::bulk_submit::SubmissionStatus,
};

/// The statements, shared by both stores.
pub(super) mod sql {
    pub const INSERT: &str = "INSERT INTO submissions (client_id, submission_id, job_id, submitter_system,
            submitter_value, status, fhir_base_url, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING";
    pub const BY_ID: &str = "SELECT * FROM submissions WHERE client_id = ?1 AND submission_id = ?2";
    pub const BY_JOB: &str = "SELECT * FROM submissions WHERE job_id = ?1";
    pub const OF_CLIENT: &str =
        "SELECT * FROM submissions WHERE client_id = ?1 ORDER BY created_at DESC, submission_id";
    pub const RECENT: &str =
        "SELECT * FROM submissions ORDER BY created_at DESC, client_id, submission_id LIMIT ?1";
    pub const CLOSE: &str = "UPDATE submissions SET status = ?1, updated_at = ?2
         WHERE job_id = ?3 AND status = 'in-progress'";
    /// One statement: numbered after the last request, refused once the submission is closed or
    /// when it named this manifest already.
    /// (Casts, so PostgreSQL knows the parameters' types in a SELECT list.)
    pub const REQUEST: &str =
        "INSERT INTO submission_manifests (job_id, seq, manifest_url, replaces_url, added_at, access)
         SELECT CAST(?1 AS TEXT),
                COALESCE((SELECT MAX(seq) FROM submission_manifests WHERE job_id = ?1), -1) + 1,
                CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS BIGINT), CAST(?5 AS TEXT)
         WHERE EXISTS (SELECT 1 FROM submissions WHERE job_id = ?1 AND status = 'in-progress')
           AND (CAST(?2 AS TEXT) IS NULL
                OR NOT EXISTS (SELECT 1 FROM submission_manifests WHERE job_id = ?1 AND manifest_url = ?2))
         RETURNING seq";
    pub const NAMED: &str =
        "SELECT EXISTS (SELECT 1 FROM submission_manifests WHERE job_id = ?1 AND manifest_url = ?2)";
    pub const REQUESTS: &str = "SELECT * FROM submission_manifests WHERE job_id = ?1 ORDER BY seq";
    pub const FINISH: &str = "UPDATE submission_manifests SET state = ?1, outcome = ?2
         WHERE job_id = ?3 AND seq = ?4 AND state = 'pending'";
}

#[derive(sqlx::FromRow)]
pub(super) struct SubmissionRow {
    client_id: String,
    submission_id: String,
    job_id: String,
    submitter_system: Option<String>,
    submitter_value: String,
    status: String,
    fhir_base_url: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<SubmissionRow> for Submission {
    fn from(r: SubmissionRow) -> Self {
        Submission {
            client_id: r.client_id,
            submission_id: r.submission_id,
            job_id: r.job_id,
            submitter_system: r.submitter_system,
            submitter_value: r.submitter_value,
            // Only this module writes the column.
            status: SubmissionStatus::parse(&r.status).unwrap_or(SubmissionStatus::InProgress),
            fhir_base_url: r.fhir_base_url,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct RequestRow {
    job_id: String,
    seq: i64,
    manifest_url: Option<String>,
    replaces_url: Option<String>,
    state: String,
    outcome: Option<String>,
    added_at: i64,
    access: Option<String>,
}

impl From<RequestRow> for ManifestRequest {
    fn from(r: RequestRow) -> Self {
        ManifestRequest {
            job_id: r.job_id,
            seq: r.seq,
            manifest_url: r.manifest_url,
            replaces_url: r.replaces_url,
            state: RequestState::parse(&r.state),
            outcome: r.outcome,
            added_at: r.added_at,
            access: SourceAccess::from_json(r.access.as_deref()),
        }
    }
}

/// What a refused request ran into: a manifest named before, else a closed submission.
pub(super) fn refusal(named_before: bool) -> Requested {
    if named_before {
        Requested::Duplicate
    } else {
        Requested::Closed
    }
}

impl Store {
    pub async fn insert_submission(&self, s: &Submission) -> Result<bool, StoreError> {
        let r = sqlx::query(sql::INSERT)
            .bind(&s.client_id)
            .bind(&s.submission_id)
            .bind(&s.job_id)
            .bind(&s.submitter_system)
            .bind(&s.submitter_value)
            .bind(s.status.as_str())
            .bind(&s.fhir_base_url)
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn submission(
        &self,
        client_id: &str,
        submission_id: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let row: Option<SubmissionRow> = sqlx::query_as(sql::BY_ID)
            .bind(client_id)
            .bind(submission_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(Submission::from))
    }

    pub async fn submission_of_job(&self, job_id: &str) -> Result<Option<Submission>, StoreError> {
        let row: Option<SubmissionRow> =
            sqlx::query_as(sql::BY_JOB).bind(job_id).fetch_optional(self.pool()).await?;
        Ok(row.map(Submission::from))
    }

    pub async fn submissions(&self, client_id: &str) -> Result<Vec<Submission>, StoreError> {
        let rows: Vec<SubmissionRow> =
            sqlx::query_as(sql::OF_CLIENT).bind(client_id).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Submission::from).collect())
    }

    pub async fn recent_submissions(&self, limit: i64) -> Result<Vec<Submission>, StoreError> {
        let rows: Vec<SubmissionRow> = sqlx::query_as(sql::RECENT).bind(limit).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Submission::from).collect())
    }

    pub async fn close_submission(
        &self,
        job_id: &str,
        status: SubmissionStatus,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r =
            sqlx::query(sql::CLOSE).bind(status.as_str()).bind(now).bind(job_id).execute(self.pool()).await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn request_manifest(
        &self,
        job_id: &str,
        manifest_url: Option<&str>,
        replaces_url: Option<&str>,
        access: &SourceAccess,
        now: i64,
    ) -> Result<Requested, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar(sql::REQUEST)
            .bind(job_id)
            .bind(manifest_url)
            .bind(replaces_url)
            .bind(now)
            .bind(access.to_json())
            .fetch_optional(self.pool())
            .await?;
        if let Some(seq) = seq {
            return Ok(Requested::Added(seq));
        }
        let named: bool = match manifest_url {
            Some(url) => sqlx::query_scalar(sql::NAMED).bind(job_id).bind(url).fetch_one(self.pool()).await?,
            None => false,
        };
        Ok(refusal(named))
    }

    pub async fn manifest_requests(&self, job_id: &str) -> Result<Vec<ManifestRequest>, StoreError> {
        let rows: Vec<RequestRow> = sqlx::query_as(sql::REQUESTS).bind(job_id).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(ManifestRequest::from).collect())
    }

    pub async fn finish_manifest_request(
        &self,
        job_id: &str,
        seq: i64,
        state: RequestState,
        outcome: Option<&str>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(sql::FINISH)
            .bind(state.as_str())
            .bind(outcome)
            .bind(job_id)
            .bind(seq)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
