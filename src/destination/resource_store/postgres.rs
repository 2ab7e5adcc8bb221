//! The resource store on PostgreSQL (shared by replicas): the resource as jsonb, and a batch as one
//! `INSERT … SELECT FROM UNNEST(…) ON CONFLICT` statement, so a batch costs one round trip.
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{postgres::PgPoolOptions, PgPool};

use super::{
    rows::{Gone, Row},
    Origin, Stored, Tables, TablesError, TypeCount,
};

const MAX_CONNECTIONS: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Replicas starting together create the table once (under this advisory lock).
const SCHEMA: &[&str] = &[
    "SELECT pg_advisory_xact_lock(7201750322)",
    "CREATE TABLE IF NOT EXISTS fhir_resources (
        provider      text NOT NULL,
        resource_type text NOT NULL,
        id            text NOT NULL,
        last_updated  timestamptz,
        version_id    text,
        resource      jsonb NOT NULL,
        job           text NOT NULL,
        file          text NOT NULL,
        stored_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (provider, resource_type, id)
    )",
    "CREATE INDEX IF NOT EXISTS fhir_resources_by_job ON fhir_resources (job, file)",
];

const UPSERT: &str = "
INSERT INTO fhir_resources AS s (provider, resource_type, id, last_updated, version_id, resource, job, file)
SELECT $1, t.resource_type, t.id, t.last_updated::timestamptz, t.version_id, t.resource::jsonb, $2, $3
FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
    AS t(resource_type, id, last_updated, version_id, resource)
ON CONFLICT (provider, resource_type, id) DO UPDATE SET
    last_updated = excluded.last_updated, version_id = excluded.version_id, resource = excluded.resource,
    job = excluded.job, file = excluded.file, stored_at = now()
-- None counts as oldest (the writer's order too).
WHERE s.last_updated IS NULL OR excluded.last_updated >= s.last_updated";

const DELETE: &str = "
DELETE FROM fhir_resources s
USING UNNEST($3::text[], $4::text[], $5::text[]) AS g(resource_type, id, at)
WHERE s.provider = $1 AND s.resource_type = g.resource_type AND s.id = g.id
    AND CASE WHEN g.at IS NULL THEN s.job <> $2
        ELSE (s.last_updated IS NULL OR s.last_updated <= g.at::timestamptz) END";

pub struct PgTables {
    pool: PgPool,
}

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> TablesError {
    move |source| {
        // Class 22 (data exception: `\u0000` in jsonb, NUL in text) and 54000 (a key too long
        // for its index): the data, not the database, is at fault.
        let code = source.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        match code {
            Some(c) if c.starts_with("22") || c == "54000" => TablesError::Refused { what, source },
            _ => TablesError::Sql { what, source },
        }
    }
}

impl PgTables {
    pub async fn open(url: &str) -> Result<Self, TablesError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(sql("cannot connect to the PostgreSQL resource store"))?;
        let what = "cannot create the resource store's table";
        let mut tx = pool.begin().await.map_err(sql(what))?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await.map_err(sql(what))?;
        }
        tx.commit().await.map_err(sql(what))?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Tables for PgTables {
    async fn upsert(&self, from: &Origin, rows: &[Row]) -> Result<(), TablesError> {
        let types: Vec<&str> = rows.iter().map(|r| r.resource_type.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let times: Vec<Option<&str>> = rows.iter().map(|r| r.last_updated.as_deref()).collect();
        let versions: Vec<Option<&str>> = rows.iter().map(|r| r.version_id.as_deref()).collect();
        let json: Vec<&str> = rows.iter().map(|r| r.json.as_str()).collect();
        sqlx::query(UPSERT)
            .bind(&from.provider)
            .bind(&from.job)
            .bind(&from.file)
            .bind(types)
            .bind(ids)
            .bind(times)
            .bind(versions)
            .bind(json)
            .execute(&self.pool)
            .await
            .map_err(sql("storing a batch of resources failed"))?;
        Ok(())
    }

    async fn delete(&self, from: &Origin, gone: &[Gone]) -> Result<u64, TablesError> {
        let types: Vec<&str> = gone.iter().map(|g| g.resource_type.as_str()).collect();
        let ids: Vec<&str> = gone.iter().map(|g| g.id.as_str()).collect();
        let times: Vec<Option<&str>> = gone.iter().map(|g| g.at.as_deref()).collect();
        let r = sqlx::query(DELETE)
            .bind(&from.provider)
            .bind(&from.job)
            .bind(types)
            .bind(ids)
            .bind(times)
            .execute(&self.pool)
            .await
            .map_err(sql("deleting a batch of resources failed"))?;
        Ok(r.rows_affected())
    }

    async fn remove(&self, job: &str, file: Option<&str>) -> Result<u64, TablesError> {
        let r = sqlx::query("DELETE FROM fhir_resources WHERE job = $1 AND ($2::text IS NULL OR file = $2)")
            .bind(job)
            .bind(file)
            .execute(&self.pool)
            .await
            .map_err(sql("removing a job's resources failed"))?;
        Ok(r.rows_affected())
    }

    async fn counts(&self) -> Result<Vec<TypeCount>, TablesError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(super::COUNTS)
            .fetch_all(&self.pool)
            .await
            .map_err(sql("counting stored resources failed"))?;
        Ok(rows.into_iter().map(TypeCount::from_columns).collect())
    }

    async fn get(
        &self,
        provider: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Stored>, TablesError> {
        let row = sqlx::query_as(
            r#"SELECT to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), version_id,
                resource::text, job, file
            FROM fhir_resources WHERE provider = $1 AND resource_type = $2 AND id = $3"#,
        )
        .bind(provider)
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("reading a stored resource failed"))?;
        row.map(Stored::from_columns).transpose()
    }

    fn describe(&self) -> String {
        "PostgreSQL".into()
    }
    fn shared(&self) -> bool {
        true
    }
}
