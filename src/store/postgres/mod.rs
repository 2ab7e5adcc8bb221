//! The PostgreSQL backend, for several replicas on one database: the same traits as SQLite, checked
//! by the same conformance suite. Leases are claimed with `FOR UPDATE SKIP LOCKED` on the
//! database's clock; the replay cache and the secrets no configuration gave are shared here; the
//! reaper runs under an advisory lock.
mod audit;
mod file_leases;
mod jobs;
mod leases;
mod registrations;
mod submissions;
mod sync_states;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{
    job_store::{Exclusive, ExclusiveGuard, ReplayCache, SharedSecrets},
    StoreError,
};

/// Heartbeats, claims and requests share the pool; the reaper holds one for its pass.
const MAX_CONNECTIONS: u32 = 16;
/// How long a query waits for a free connection before it fails (the database is down, say).
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The database's clock, in whole seconds (every replica reads the same one).
const NOW: &str = "FLOOR(EXTRACT(EPOCH FROM clock_timestamp()))::BIGINT";

/// `?N` placeholders as PostgreSQL writes them (`$N`).
pub(super) fn pg(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len());
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect to `url` (`postgres://…`) and bring the schema up to date. Replicas starting at
    /// once are safe: sqlx takes an advisory lock around its migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations-postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    pub(in crate::store) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl ReplayCache for PgStore {
    async fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM used_jti WHERE expires_at < $1").bind(now).execute(self.pool()).await?;
        let r = sqlx::query(
            "INSERT INTO used_jti (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(client_id)
        .bind(jti)
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

#[async_trait]
impl SharedSecrets for PgStore {
    async fn secret_or_insert(
        &self,
        name: &str,
        candidate: &str,
        now: i64,
    ) -> Result<(String, bool), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO shared_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        let value: String = sqlx::query_scalar("SELECT value FROM shared_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(self.pool())
            .await?;
        Ok((value, inserted))
    }
}

#[async_trait]
impl Exclusive for PgStore {
    /// A session-level advisory lock on a connection of its own, closed when the guard drops: a
    /// replica that dies lets go with its connection.
    async fn try_exclusive(&self, name: &str) -> Result<Option<ExclusiveGuard>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            return Ok(None);
        }
        // Not back to the pool with the lock held: closing the connection releases it.
        conn.close_on_drop();
        Ok(Some(ExclusiveGuard::new(conn)))
    }
}
