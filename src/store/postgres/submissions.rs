//! Bulk Submit submissions in PostgreSQL: the SQLite store's statements (`store::submissions`),
//! their placeholders renumbered.
use async_trait::async_trait;

use super::{pg, PgStore};
use crate::{
    domain::{ManifestRequest, RequestState, Requested, SourceAccess, Submission},
    fhir::bulk_submit::SubmissionStatus,
    store::{
        job_store::SubmissionStore,
        submissions::{refusal, sql, RequestRow, SubmissionRow},
        StoreError,
    },
};

#[async_trait]
impl SubmissionStore for PgStore {
    async fn insert_submission(&self, s: &Submission) -> Result<bool, StoreError> {
        let r = sqlx::query(&pg(sql::INSERT))
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

    async fn submission(
        &self,
        client_id: &str,
        submission_id: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let row: Option<SubmissionRow> = sqlx::query_as(&pg(sql::BY_ID))
            .bind(client_id)
            .bind(submission_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(Submission::from))
    }

    async fn submission_of_job(&self, job_id: &str) -> Result<Option<Submission>, StoreError> {
        let row: Option<SubmissionRow> =
            sqlx::query_as(&pg(sql::BY_JOB)).bind(job_id).fetch_optional(self.pool()).await?;
        Ok(row.map(Submission::from))
    }

    async fn submissions(&self, client_id: &str) -> Result<Vec<Submission>, StoreError> {
        let rows: Vec<SubmissionRow> =
            sqlx::query_as(&pg(sql::OF_CLIENT)).bind(client_id).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Submission::from).collect())
    }

    async fn recent_submissions(&self, limit: i64) -> Result<Vec<Submission>, StoreError> {
        let rows: Vec<SubmissionRow> =
            sqlx::query_as(&pg(sql::RECENT)).bind(limit).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Submission::from).collect())
    }

    async fn close_submission(
        &self,
        job_id: &str,
        status: SubmissionStatus,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&pg(sql::CLOSE))
            .bind(status.as_str())
            .bind(now)
            .bind(job_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn request_manifest(
        &self,
        job_id: &str,
        manifest_url: Option<&str>,
        replaces_url: Option<&str>,
        access: &SourceAccess,
        now: i64,
    ) -> Result<Requested, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar(&pg(sql::REQUEST))
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
            Some(url) => {
                sqlx::query_scalar(&pg(sql::NAMED)).bind(job_id).bind(url).fetch_one(self.pool()).await?
            }
            None => false,
        };
        Ok(refusal(named))
    }

    async fn manifest_requests(&self, job_id: &str) -> Result<Vec<ManifestRequest>, StoreError> {
        let rows: Vec<RequestRow> =
            sqlx::query_as(&pg(sql::REQUESTS)).bind(job_id).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(ManifestRequest::from).collect())
    }

    async fn finish_manifest_request(
        &self,
        job_id: &str,
        seq: i64,
        state: RequestState,
        outcome: Option<&str>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&pg(sql::FINISH))
            .bind(state.as_str())
            .bind(outcome)
            .bind(job_id)
            .bind(seq)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_renumbered_and_nothing_else_changes() {
        assert_eq!(
            super::pg("a = ?1 AND b = ?12 AND c = '?' AND d ?"),
            "a = $1 AND b = $12 AND c = '?' AND d ?"
        );
    }
}
