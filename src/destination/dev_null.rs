//! dev-null: validates and counts, stores nothing. Useful to test a provider end to end.
use async_trait::async_trait;
use bytes::Bytes;

use super::{Destination, DestinationError, FileTarget, FileWriter, Receipt};

pub struct DevNull;

struct Counter(u64);

#[async_trait]
impl FileWriter for Counter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        self.0 += chunk.len() as u64;
        Ok(())
    }
    async fn finish(self: Box<Self>, _resources: u64) -> Result<Receipt, DestinationError> {
        Ok(Receipt { location: "dev-null".into(), bytes: self.0 })
    }
    async fn abort(self: Box<Self>) -> Result<(), DestinationError> {
        Ok(())
    }
}

#[async_trait]
impl Destination for DevNull {
    async fn open(&self, _file: FileTarget<'_>) -> Result<Box<dyn FileWriter>, DestinationError> {
        Ok(Box::new(Counter(0)))
    }
    async fn delete_file(&self, _file: crate::destination::FileTarget<'_>) -> Result<(), DestinationError> {
        Ok(())
    }
    async fn delete_job(&self, _job: &str) -> Result<(), DestinationError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "dev-null (files are validated and counted, then discarded)".into()
    }
}
