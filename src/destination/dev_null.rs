//! dev-null: validates and counts, stores nothing. Useful to test a provider end to end. Having
//! stored nothing, it can go on from any line end: a file taken over continues where it was.
use async_trait::async_trait;
use bytes::Bytes;

use super::{Destination, DestinationError, FileTarget, FileWriter, LineEnd, Receipt, Removal, Saved};

pub struct DevNull {
    /// Bytes between durable points.
    pub save_every: u64,
}

struct Counter {
    bytes: u64,
    saved: u64,
    save_every: u64,
}

#[async_trait]
impl FileWriter for Counter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        self.bytes += chunk.len() as u64;
        Ok(())
    }
    async fn line_end(&mut self, at: u64) -> Result<LineEnd, DestinationError> {
        if at < self.saved + self.save_every {
            return Ok(LineEnd::default());
        }
        self.saved = at;
        Ok(LineEnd { taken: true, saved: Some(Saved { bytes: at, state: String::new() }) })
    }
    async fn finish(self: Box<Self>, _resources: u64) -> Result<Receipt, DestinationError> {
        Ok(Receipt { location: "dev-null".into(), bytes: self.bytes })
    }
    async fn abort(self: Box<Self>) -> Result<(), DestinationError> {
        Ok(())
    }
}

#[async_trait]
impl Destination for DevNull {
    async fn open(&self, _file: FileTarget<'_>) -> Result<Box<dyn FileWriter>, DestinationError> {
        Ok(Box::new(Counter { bytes: 0, saved: 0, save_every: self.save_every }))
    }
    async fn reopen(
        &self,
        _file: FileTarget<'_>,
        saved: &Saved,
    ) -> Result<Option<Box<dyn FileWriter>>, DestinationError> {
        Ok(Some(Box::new(Counter { bytes: saved.bytes, saved: saved.bytes, save_every: self.save_every })))
    }
    async fn delete_file(&self, _job: &str, _name: &str) -> Result<(), DestinationError> {
        Ok(())
    }
    async fn delete_job(&self, _job: &str, _why: Removal) -> Result<(), DestinationError> {
        Ok(())
    }
    /// Nothing is kept anywhere, so it is the same everywhere.
    fn shared(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        "dev-null (files are validated and counted, then discarded)".into()
    }
}
