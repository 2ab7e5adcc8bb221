//! tmp-fs: `JOBS_PATH/<job>/<name>`, written to `<name>.part`, fsynced, then renamed, so a reader
//! never sees a half-written file and a crash leaves only a `.part` that the next attempt replaces.
//! Each full buffer is handed to the kernel and its write-back started at once, so the disk works
//! while the download goes on and the closing fsync finds little left to write.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::fs;

use super::{file_name::is_safe_component, Destination, DestinationError, FileTarget, FileWriter, Receipt};

/// Write buffer per open file: large enough to batch small network chunks into few syscalls, and
/// the unit in which write-back is started.
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
    /// Lent to a blocking task during each write; `None` after a write that failed.
    file: Option<std::fs::File>,
    buf: Vec<u8>,
    bytes: u64,
}

impl TmpFile {
    /// Write what is buffered, make it durable, and move it into place.
    async fn close(&mut self) -> Result<Receipt, DestinationError> {
        self.drain().await?;
        let file = self.take_file()?;
        let started = std::time::Instant::now();
        fs::File::from_std(file).sync_all().await?;
        tracing::debug!(file = %self.label, took_ms = started.elapsed().as_millis() as u64, "file synced to disk");
        fs::rename(&self.part, &self.target).await?;
        // The rename is durable only once the directory is: the store marks the file done next,
        // and a resume after a power cut must not find it missing.
        if let Some(dir) = self.target.parent() {
            fs::File::open(dir).await?.sync_all().await?;
        }
        Ok(Receipt { location: self.label.clone(), bytes: self.bytes })
    }

    fn take_file(&mut self) -> Result<std::fs::File, DestinationError> {
        self.file.take().ok_or_else(|| std::io::Error::other("an earlier write to this file failed").into())
    }

    /// Write the buffer out on a blocking thread and start its write-back.
    async fn drain(&mut self) -> Result<(), DestinationError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut file = self.take_file()?;
        let buf = std::mem::take(&mut self.buf);
        let offset = self.bytes - buf.len() as u64;
        let (file, mut buf) = tokio::task::spawn_blocking(move || {
            file.write_all(&buf)?;
            start_write_back(&file, offset, buf.len() as u64);
            Ok::<_, std::io::Error>((file, buf))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        buf.clear();
        self.file = Some(file);
        self.buf = buf;
        Ok(())
    }
}

/// Ask the kernel to start writing `len` bytes at `offset` to disk without waiting for it. Without
/// this, dirty pages pile up until the final fsync writes the whole file while the download is idle.
#[cfg(target_os = "linux")]
fn start_write_back(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `file`, which outlives the call; no memory is passed. A
    // failure only loses the head start; the fsync in `finish` still makes the data durable.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(not(target_os = "linux"))]
fn start_write_back(_file: &std::fs::File, _offset: u64, _len: u64) {}

#[async_trait]
impl FileWriter for TmpFile {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        // Drain first rather than let the buffer grow past its capacity (Vec would double it).
        if self.buf.len() + chunk.len() > WRITE_BUFFER_BYTES {
            self.drain().await?;
        }
        self.bytes += chunk.len() as u64;
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(mut self: Box<Self>, _resources: u64) -> Result<Receipt, DestinationError> {
        let result = self.close().await;
        if result.is_err() {
            // `finish` consumes the writer, so no `abort` follows: remove the partial file here.
            drop(self.file.take());
            if let Err(e) = remove_if_exists(&self.part).await {
                tracing::warn!(error = %crate::routes::error::chain(&e), "could not remove a partial file");
            }
        }
        result
    }

    async fn abort(mut self: Box<Self>) -> Result<(), DestinationError> {
        drop(self.file.take());
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
        let file = fs::File::create(&part).await?.into_std().await;
        Ok(Box::new(TmpFile {
            label: format!("{job}/{name}"),
            part,
            target,
            file: Some(file),
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
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
