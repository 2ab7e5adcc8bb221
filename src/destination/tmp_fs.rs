//! tmp-fs: `JOBS_PATH/<job>/<name>`, written to `<name>.part`, fsynced, then renamed, so a reader
//! never sees a half-written file and a crash leaves only a `.part` that the next attempt replaces.
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::{fs, io::AsyncWriteExt};

use super::{file_name::is_safe_component, Destination, DestinationError, FileTarget, FileWriter, Receipt};

/// Write buffer per open file: large enough to batch small network chunks into few syscalls.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

pub struct TmpFs {
    root: PathBuf,
}

impl TmpFs {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn job_dir(&self, job: &str) -> Result<PathBuf, DestinationError> {
        if !is_safe_component(job) {
            return Err(DestinationError::UnsafeName(job.into()));
        }
        Ok(self.root.join(job))
    }
}

struct TmpFile {
    /// `<job>/<name>`, for outcomes: the server's own paths stay private.
    label: String,
    part: PathBuf,
    target: PathBuf,
    out: tokio::io::BufWriter<fs::File>,
    bytes: u64,
}

#[async_trait]
impl FileWriter for TmpFile {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        self.bytes += chunk.len() as u64;
        self.out.write_all(&chunk).await?;
        Ok(())
    }

    async fn finish(mut self: Box<Self>, _resources: u64) -> Result<Receipt, DestinationError> {
        self.out.flush().await?;
        self.out.get_ref().sync_all().await?;
        fs::rename(&self.part, &self.target).await?;
        Ok(Receipt { location: self.label.clone(), bytes: self.bytes })
    }

    async fn abort(self: Box<Self>) -> Result<(), DestinationError> {
        drop(self.out);
        remove_if_exists(&self.part).await
    }
}

async fn remove_if_exists(path: &Path) -> Result<(), DestinationError> {
    match fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[async_trait]
impl Destination for TmpFs {
    async fn open(&self, file: FileTarget<'_>) -> Result<Box<dyn FileWriter>, DestinationError> {
        let (job, name) = (file.job, file.name);
        if !is_safe_component(name) {
            return Err(DestinationError::UnsafeName(name.into()));
        }
        let dir = self.job_dir(job)?;
        fs::create_dir_all(&dir).await?;
        let target = dir.join(name);
        let part = dir.join(format!("{name}.part"));
        let file = fs::File::create(&part).await?;
        Ok(Box::new(TmpFile {
            label: format!("{job}/{name}"),
            part,
            target,
            out: tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            bytes: 0,
        }))
    }

    async fn delete_job(&self, job: &str) -> Result<(), DestinationError> {
        let dir = self.job_dir(job)?;
        match fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("tmp-fs: files under {}/{{job_id}}/", self.root.display())
    }
}
