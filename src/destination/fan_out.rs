//! Several destinations at once (`DESTINATION_TYPE=s3,resource-store`): every file goes to each,
//! and is done when each has committed it. A failure names the destination it came from. A file
//! broken off here starts over (the destinations' durable points need not meet), so a fan-out
//! reports none of its own; each still cuts where it must (S3 parts, store batches).
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

use super::{Destination, DestinationError, FileTarget, FileWriter, LineEnd, Receipt, Removal};

pub struct FanOut {
    all: Vec<(String, Arc<dyn Destination>)>,
}

impl FanOut {
    pub fn new(all: Vec<(String, Arc<dyn Destination>)>) -> Self {
        Self { all }
    }
}

fn named(name: &str) -> impl FnOnce(DestinationError) -> DestinationError + '_ {
    move |e| DestinationError::OneOf { name: name.to_string(), source: Box::new(e) }
}

struct Writers {
    each: Vec<(String, Box<dyn FileWriter>)>,
}

impl Writers {
    /// Abort every writer (after one failed), keeping the first error.
    async fn abort_all(self, first: DestinationError) -> DestinationError {
        for (name, w) in self.each {
            if let Err(e) = w.abort().await {
                tracing::warn!(destination = %name, error = %crate::error_text::chain(&e), "could not abort a file");
            }
        }
        first
    }
}

#[async_trait]
impl FileWriter for Writers {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        for (name, w) in &mut self.each {
            w.write(chunk.clone()).await.map_err(named(name))?;
        }
        Ok(())
    }
    async fn line_end(&mut self, at: u64) -> Result<LineEnd, DestinationError> {
        for (name, w) in &mut self.each {
            w.line_end(at).await.map_err(named(name))?;
        }
        Ok(LineEnd::default())
    }
    async fn finish(mut self: Box<Self>, resources: u64) -> Result<Receipt, DestinationError> {
        let mut locations = Vec::new();
        let mut bytes = 0;
        while !self.each.is_empty() {
            let (name, w) = self.each.remove(0);
            match w.finish(resources).await {
                Ok(r) => {
                    locations.push(r.location);
                    bytes = r.bytes;
                }
                // Those committed already stay committed (each is whole); the rest are aborted.
                Err(e) => return Err(self.abort_all(named(&name)(e)).await),
            }
        }
        Ok(Receipt { location: locations.join(" + "), bytes })
    }
    async fn abort(self: Box<Self>) -> Result<(), DestinationError> {
        let mut first = None;
        for (name, w) in self.each {
            if let Err(e) = w.abort().await {
                first.get_or_insert(named(&name)(e));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Destination for FanOut {
    async fn open(&self, file: FileTarget<'_>) -> Result<Box<dyn FileWriter>, DestinationError> {
        let mut writers = Writers { each: Vec::with_capacity(self.all.len()) };
        for (name, d) in &self.all {
            match d.open(file).await {
                Ok(w) => writers.each.push((name.clone(), w)),
                Err(e) => return Err(writers.abort_all(named(name)(e)).await),
            }
        }
        Ok(Box::new(writers))
    }
    async fn delete_file(&self, job: &str, name: &str) -> Result<(), DestinationError> {
        let mut first = None;
        for (which, d) in &self.all {
            if let Err(e) = d.delete_file(job, name).await {
                first.get_or_insert(named(which)(e));
            }
        }
        first.map_or(Ok(()), Err)
    }
    async fn delete_job(&self, job: &str, why: Removal) -> Result<(), DestinationError> {
        let mut first = None;
        for (which, d) in &self.all {
            if let Err(e) = d.delete_job(job, why).await {
                first.get_or_insert(named(which)(e));
            }
        }
        first.map_or(Ok(()), Err)
    }
    fn describe(&self) -> String {
        self.all.iter().map(|(_, d)| d.describe()).collect::<Vec<_>>().join(" and ")
    }
    fn shared(&self) -> bool {
        self.all.iter().all(|(_, d)| d.shared())
    }
}
