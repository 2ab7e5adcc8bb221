//! `GET /generator`'s key pairs, made without costing anyone else: one at a time across the
//! server (RSA-4096-class work takes a core for up to seconds), on a thread of its own at the
//! background priority (never an async worker, never ahead of the API), and at most
//! `GENERATOR_PER_MINUTE` per client address. Over either bound the caller is told to wait.
use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::{
    key_pairs::{self, KeyPair, KeyPairError},
    window_budget::WindowBudget,
};

/// Key pairs made at once across the server.
pub const GENERATOR_CONCURRENCY: usize = 1;
/// Longest a request waits for its turn before it is told to come back.
const MAX_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("this address asked for more than {per_minute} key pairs in a minute (GENERATOR_PER_MINUTE); try again in {} s", wait.as_secs().max(1))]
    TooMany { per_minute: u32, wait: Duration },
    #[error("the server is busy making other key pairs; try again in a few seconds")]
    Busy,
    #[error(transparent)]
    KeyPair(#[from] KeyPairError),
    #[error("the key pair thread stopped")]
    Stopped,
}

impl GeneratorError {
    /// How long the caller should wait, when waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GeneratorError::TooMany { wait, .. } => Some((*wait).max(Duration::from_secs(1))),
            GeneratorError::Busy => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

pub struct Generator {
    turns: Arc<Semaphore>,
    per_address: WindowBudget,
    per_minute: u32,
}

impl Generator {
    pub fn new(per_minute: u32) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(GENERATOR_CONCURRENCY)),
            per_address: WindowBudget::new(per_minute),
            per_minute,
        }
    }

    /// A fresh pair for `alg` (see `key_pairs::generate`), asked from `address`.
    pub async fn generate(&self, address: &str, alg: Option<String>) -> Result<KeyPair, GeneratorError> {
        // An unknown alg is refused before it costs a turn or a place in the budget.
        let alg = key_pairs::algorithm(alg.as_deref())?;
        self.per_address
            .take(address)
            .map_err(|wait| GeneratorError::TooMany { per_minute: self.per_minute, wait })?;
        let turn = tokio::time::timeout(MAX_WAIT, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| GeneratorError::Busy)?
            .map_err(|_| GeneratorError::Stopped)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("bulk-import-keygen".into())
            .spawn(move || {
                crate::thread_priority::lower();
                let _ = tx.send(key_pairs::generate(Some(&alg)));
                drop(turn);
            })
            .map_err(|_| GeneratorError::Stopped)?;
        Ok(rx.await.map_err(|_| GeneratorError::Stopped)??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_past_its_budget_waits_and_another_does_not() {
        let generator = Generator::new(2);
        for _ in 0..2 {
            assert_eq!(generator.generate("a", Some("ES256".into())).await.unwrap().alg, "ES256");
        }
        let e = generator.generate("a", None).await.err().unwrap();
        assert!(matches!(e, GeneratorError::TooMany { per_minute: 2, .. }), "{e}");
        assert!(e.retry_after().unwrap() >= Duration::from_secs(1));
        assert!(generator.generate("b", None).await.is_ok());
        let e = generator.generate("c", Some("HS256".into())).await.err().unwrap();
        assert!(matches!(e, GeneratorError::KeyPair(KeyPairError::UnknownAlgorithm)), "{e}");
    }
}
