//! Opening the configured database (`DATABASE_URL`) as the narrow handles each part of the server
//! takes: SQLite for one machine, PostgreSQL for several replicas sharing jobs, leases,
//! registrations, the replay cache and secrets.
use std::sync::Arc;

use super::{
    job_store::{
        AuditLog, Exclusive, JobStore, RegistrationStore, ReplayCache, SharedSecrets, SubmissionStore,
        SyncStore,
    },
    postgres::PgStore,
    Store, StoreError,
};
use crate::config::DatabaseUrl;

#[derive(Clone)]
pub struct Stores {
    pub jobs: Arc<dyn JobStore>,
    pub registrations: Arc<dyn RegistrationStore>,
    pub audit: Arc<dyn AuditLog>,
    pub replay: Arc<dyn ReplayCache>,
    pub exclusive: Arc<dyn Exclusive>,
    pub submissions: Arc<dyn SubmissionStore>,
    pub sync: Arc<dyn SyncStore>,
    /// Where keys and secrets no configuration gave are kept, when not in files under `DATA_DIR`
    /// (a shared database: every replica must read the same ones).
    pub secrets: Option<Arc<dyn SharedSecrets>>,
}

impl Stores {
    pub async fn open(database: &DatabaseUrl) -> Result<Self, StoreError> {
        match database {
            DatabaseUrl::Sqlite(path) => {
                // Owner-only whatever the umask: the database holds export and file URLs. SQLite
                // gives its -wal and -shm files the database file's mode.
                crate::owner_only::file(path)
                    .map_err(|source| StoreError::File { path: path.clone(), source })?;
                let store = Store::open(path).await?;
                Ok(Self::of(store, None))
            }
            DatabaseUrl::Postgres(url) => {
                use secrecy::ExposeSecret;
                let store = PgStore::open(url.expose_secret()).await?;
                let secrets: Arc<dyn SharedSecrets> = Arc::new(store.clone());
                Ok(Self::of(store, Some(secrets)))
            }
        }
    }

    fn of<S>(store: S, secrets: Option<Arc<dyn SharedSecrets>>) -> Self
    where
        S: JobStore
            + RegistrationStore
            + AuditLog
            + ReplayCache
            + Exclusive
            + SubmissionStore
            + SyncStore
            + Clone
            + 'static,
    {
        Self {
            jobs: Arc::new(store.clone()),
            registrations: Arc::new(store.clone()),
            audit: Arc::new(store.clone()),
            replay: Arc::new(store.clone()),
            exclusive: Arc::new(store.clone()),
            submissions: Arc::new(store.clone()),
            sync: Arc::new(store),
            secrets,
        }
    }
}
