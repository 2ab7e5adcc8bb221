//! Job-layer errors. A job failure is stored on the job and reported in its status and outcome.
use crate::{auth::AuthError, destination::DestinationError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The provider or its data made the job impossible; the text tells a person what happened.
    #[error("{0}")]
    Provider(String),
    #[error("authorization at the provider failed: {0}")]
    Auth(#[from] AuthError),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("destination failed")]
    Destination(#[from] DestinationError),
    /// Deleted by a user or stopped by shutdown; not a failure.
    #[error("cancelled")]
    Cancelled,
}
