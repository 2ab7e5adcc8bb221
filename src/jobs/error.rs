//! Job-layer errors. A job failure is stored on the job and reported in its status and outcome.
use crate::{auth::provider_token::ProviderTokenError, destination::DestinationError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The provider or its data made the job impossible; the text tells a person what happened.
    #[error("{0}")]
    Provider(String),
    /// The export manifest could not be read as one.
    #[error(transparent)]
    Manifest(#[from] crate::fhir::manifest::ManifestError),
    /// The registration behind the job was revoked while it ran.
    #[error("the provider's registration was revoked; the job cannot continue")]
    Revoked,
    /// Another process runs the job and has not let it go yet (a cancel or DELETE waits for it).
    #[error("the job is still stopping where it runs (another replica); try again in a few seconds")]
    StillStopping,
    /// Our own fault (a bug, a task that stopped, a client that could not be built).
    #[error("the import stopped on an internal error ({0})")]
    Internal(String),
    /// The message comes from the source (see `chain`), so it is not repeated here.
    /// A URL or address we do not fetch (origin binding, SSRF guard, `file_origins`, redirects).
    #[error("{0}")]
    Refused(String),
    /// A URL that is not the provider's (or not a URL at all).
    #[error(transparent)]
    Url(#[from] crate::auth::provider_base::UrlRefusal),
    #[error("authorization at the provider failed")]
    Auth(#[from] ProviderTokenError),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("destination failed")]
    Destination(#[from] DestinationError),
    /// An encrypted file's plaintext could not be held while its tag is checked (`jobs::spool`).
    #[error("an encrypted file could not be held under DATA_DIR/spool while its authentication tag was checked (free space there, or set DATA_DIR to a larger disk)")]
    Spool(#[source] std::io::Error),
    /// The plan could not take the manifest (too many files, say).
    #[error(transparent)]
    Plan(#[from] crate::jobs::plan::PlanError),
    /// A bound on the whole job (`MAX_JOB_BYTES`).
    #[error(transparent)]
    Bound(#[from] crate::jobs::file_bounds::Exceeded),
    /// The job ran past `MAX_JOB_DURATION`, counted from its ping.
    #[error("the import ran longer than {} minutes (MAX_JOB_DURATION) and was stopped", .0.as_secs() / 60)]
    TimeLimit(std::time::Duration),
    /// Another process took the job over (this one's lease lapsed); it goes on there.
    #[error("the job's lease was lost to another process")]
    LeaseLost,
    /// Deleted by a user or stopped by shutdown; not a failure.
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    /// Whether trying the same request again may help (token endpoint trouble that may pass).
    pub fn is_permanent(&self) -> bool {
        matches!(self, JobError::Auth(e) if e.is_permanent())
    }
}
