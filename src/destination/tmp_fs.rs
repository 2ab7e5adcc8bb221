//! tmp-fs: `JOBS_PATH/<job>/<name>`, written to `<name>.part`, fsynced, then renamed, so a reader
//! never sees a half-written file and a crash leaves only a `.part` that the next attempt replaces.
//! Files are written with `O_DIRECT` where the filesystem allows it: copying every byte into the
//! page cache cost about 1 CPU-second per GB (and its write-back stalled the final fsync), which
//! the direct path does not pay. Elsewhere they are written through the page cache, with the
//! write-back of each buffer started at once. Files are 0600 and job directories 0700 whatever the
//! umask: they hold health data.
use std::{
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::fs;

use super::{
    file_name::is_safe_component, Destination, DestinationError, FileTarget, FileWriter, LineEnd, Receipt,
    Removal, Saved,
};
use crate::owner_only::{DIR_MODE, FILE_MODE};

/// Write buffer per open file: large enough to batch small network chunks into few syscalls, and
/// the unit of each direct write (or of write-back started).
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Alignment of direct writes: buffer address, file offset and length. 4096 covers every logical
/// block size Linux filesystems use.
const DIRECT_ALIGN: usize = 4096;

pub struct TmpFs {
    root: PathBuf,
    /// Bytes between durable points.
    save_every: u64,
}

impl TmpFs {
    pub fn new(root: PathBuf, save_every: u64) -> Self {
        Self { root, save_every }
    }

    fn job_dir(&self, job: &str) -> Result<PathBuf, DestinationError> {
        if !is_safe_component(job) {
            return Err(DestinationError::UnsafeName(job.into()));
        }
        Ok(self.root.join(job))
    }
}

/// A fixed-size buffer whose first byte is aligned for direct writes. It is never resized, so
/// moving it to a blocking thread and back keeps the alignment.
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let mem = vec![0u8; WRITE_BUFFER_BYTES + DIRECT_ALIGN];
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN);
        Self { mem, start, len: 0 }
    }

    fn space(&self) -> usize {
        WRITE_BUFFER_BYTES - self.len
    }

    fn push(&mut self, data: &[u8]) {
        let at = self.start + self.len;
        self.mem[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    fn filled(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// Keep only the bytes from `from` on, moved to the aligned start.
    fn keep_from(&mut self, from: usize) {
        let (start, end) = (self.start + from, self.start + self.len);
        self.mem.copy_within(start..end, self.start);
        self.len -= from;
    }
}

/// An open `.part` file and how it is written.
struct Output {
    file: std::fs::File,
    direct: bool,
}

impl Output {
    fn create(path: &Path) -> std::io::Result<Self> {
        let open = |extra: i32| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .custom_flags(extra)
                .open(path)
        };
        if DIRECT_FLAG != 0 {
            // Some filesystems (older tmpfs, some network ones) refuse O_DIRECT at open.
            if let Ok(file) = open(DIRECT_FLAG) {
                return Ok(Self { file, direct: true });
            }
        }
        Ok(Self { file: open(0)?, direct: false })
    }

    /// Write `buf` out at `offset` (where the buffer starts in the file); in direct mode only its
    /// whole aligned blocks unless `last`, keeping the rest in the buffer. Positioned writes make a
    /// repeat after a refused direct write harmless.
    fn write_from(&mut self, buf: &mut AlignedBuf, offset: u64, last: bool) -> std::io::Result<()> {
        if !self.direct {
            self.file.write_all_at(buf.filled(), offset)?;
            start_write_back(&self.file, offset, buf.len as u64);
            buf.len = 0;
            return Ok(());
        }
        let whole = buf.len - buf.len % DIRECT_ALIGN;
        match self.file.write_all_at(&buf.filled()[..whole], offset) {
            // Some filesystems (FUSE, a few network ones) accept the flag and refuse the write.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.stop_direct()?;
                return self.write_from(buf, offset, last);
            }
            other => other?,
        }
        buf.keep_from(whole);
        if last && buf.len > 0 {
            // The tail is shorter than a block: it goes through the page cache.
            self.stop_direct()?;
            self.file.write_all_at(buf.filled(), offset + whole as u64)?;
            buf.len = 0;
        }
        Ok(())
    }

    fn stop_direct(&mut self) -> std::io::Result<()> {
        set_direct(&self.file, false)?;
        self.direct = false;
        Ok(())
    }

    /// Make every byte written so far durable, the buffered ones too (a durable point). In
    /// direct mode a tail shorter than a block goes through the page cache and stays buffered:
    /// the next direct write rewrites its block whole.
    fn make_durable(&mut self, buf: &mut AlignedBuf, offset: u64) -> std::io::Result<()> {
        let before = buf.len;
        self.write_from(buf, offset, false)?;
        if buf.len > 0 {
            let at = offset + (before - buf.len) as u64;
            set_direct(&self.file, false)?;
            self.file.write_all_at(buf.filled(), at)?;
            // Back to direct writes; a refusal only costs speed.
            self.direct = set_direct(&self.file, true).is_ok();
            if !self.direct {
                buf.len = 0;
            }
        }
        self.file.sync_data()
    }

    /// Open a `.part` an earlier writer left, to go on from its first `at` bytes (the rest is
    /// cut off). The block the end falls in is read back into `buf`, so direct writes stay
    /// aligned. `None` when the file is missing or shorter than that.
    fn reopen(path: &Path, at: u64) -> std::io::Result<Option<(Self, AlignedBuf)>> {
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() < at {
            return Ok(None);
        }
        file.set_len(at)?;
        let start = at - at % DIRECT_ALIGN as u64;
        let mut buf = AlignedBuf::new();
        let head = (at - start) as usize;
        file.read_exact_at(&mut buf.mem[buf.start..buf.start + head], start)?;
        buf.len = head;
        let direct = DIRECT_FLAG != 0 && set_direct(&file, true).is_ok();
        Ok(Some((Self { file, direct }, buf)))
    }
}

/// Turn `O_DIRECT` on or off for an open file.
#[cfg(target_os = "linux")]
fn set_direct(file: &std::fs::File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor `file` owns; no memory is passed.
    let changed = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let wanted = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, wanted) == 0
    };
    if !changed {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &std::fs::File, on: bool) -> std::io::Result<()> {
    if on {
        return Err(std::io::Error::other("no direct writes here"));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
const DIRECT_FLAG: i32 = libc::O_DIRECT;
#[cfg(not(target_os = "linux"))]
const DIRECT_FLAG: i32 = 0;

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

struct TmpFile {
    /// `<job>/<name>`, for outcomes: the server's own paths stay private.
    label: String,
    part: PathBuf,
    target: PathBuf,
    /// Lent to a blocking task with the buffer during each write; `None` after a write that failed.
    out: Option<(Output, AlignedBuf)>,
    /// Bytes accepted so far, buffered ones included.
    bytes: u64,
    /// The last durable point: bytes stored whole and synced.
    saved: u64,
    save_every: u64,
}

impl TmpFile {
    /// Write what is buffered, make it durable, and move it into place.
    async fn close(&mut self) -> Result<Receipt, DestinationError> {
        self.drain(true).await?;
        let (out, _) = self.take_out()?;
        let started = std::time::Instant::now();
        fs::File::from_std(out.file).sync_all().await?;
        tracing::debug!(file = %self.label, took_ms = started.elapsed().as_millis() as u64, "file synced to disk");
        fs::rename(&self.part, &self.target).await?;
        // The rename is durable only once the directory is: the store marks the file done next,
        // and a resume after a power cut must not find it missing.
        if let Some(dir) = self.target.parent() {
            fs::File::open(dir).await?.sync_all().await?;
        }
        Ok(Receipt { location: self.label.clone(), bytes: self.bytes })
    }

    fn take_out(&mut self) -> Result<(Output, AlignedBuf), DestinationError> {
        self.out.take().ok_or_else(|| std::io::Error::other("an earlier write to this file failed").into())
    }

    /// Write the buffer out on a blocking thread (all of it when `last`).
    async fn drain(&mut self, last: bool) -> Result<(), DestinationError> {
        let (mut out, mut buf) = self.take_out()?;
        let offset = self.bytes - buf.len as u64;
        let done = tokio::task::spawn_blocking(move || {
            out.write_from(&mut buf, offset, last)?;
            Ok::<_, std::io::Error>((out, buf))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.out = Some(done);
        Ok(())
    }

    /// Make every byte accepted so far durable (a durable point).
    async fn make_durable(&mut self) -> Result<(), DestinationError> {
        let (mut out, mut buf) = self.take_out()?;
        let offset = self.bytes - buf.len as u64;
        let done = tokio::task::spawn_blocking(move || {
            out.make_durable(&mut buf, offset)?;
            Ok::<_, std::io::Error>((out, buf))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.out = Some(done);
        Ok(())
    }

    fn space(&self) -> usize {
        self.out.as_ref().map_or(0, |(_, buf)| buf.space())
    }
}

#[async_trait]
impl FileWriter for TmpFile {
    async fn write(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if self.space() == 0 {
                self.drain(false).await?;
            }
            let Some((_, buf)) = self.out.as_mut() else {
                return Err(std::io::Error::other("an earlier write to this file failed").into());
            };
            let take = rest.len().min(buf.space());
            buf.push(&rest[..take]);
            self.bytes += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    async fn line_end(&mut self, at: u64) -> Result<LineEnd, DestinationError> {
        if at < self.saved + self.save_every {
            return Ok(LineEnd::default());
        }
        // Everything written is synced, the partial line after `at` too: a later writer cuts
        // the file back to `at`.
        self.make_durable().await?;
        self.saved = at;
        Ok(LineEnd { taken: true, saved: Some(Saved { bytes: at, state: String::new() }) })
    }

    async fn finish(mut self: Box<Self>, _resources: u64) -> Result<Receipt, DestinationError> {
        let result = self.close().await;
        if result.is_err() {
            // `finish` consumes the writer, so no `abort` follows: remove the partial file here.
            drop(self.out.take());
            if let Err(e) = remove_if_exists(&self.part).await {
                tracing::warn!(error = %crate::error_text::chain(&e), "could not remove a partial file");
            }
        }
        result
    }

    async fn abort(mut self: Box<Self>) -> Result<(), DestinationError> {
        drop(self.out.take());
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
        let target = dir.join(name);
        let part = dir.join(format!("{name}.part"));
        let (out, part) = tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&dir)?;
            Ok::<_, std::io::Error>((Output::create(&part)?, part))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(Box::new(TmpFile {
            label: format!("{job}/{name}"),
            part,
            target,
            out: Some((out, AlignedBuf::new())),
            bytes: 0,
            saved: 0,
            save_every: self.save_every,
        }))
    }

    async fn reopen(
        &self,
        file: FileTarget<'_>,
        saved: &Saved,
    ) -> Result<Option<Box<dyn FileWriter>>, DestinationError> {
        let (job, name) = (file.job, file.name);
        if !is_safe_component(name) {
            return Err(DestinationError::UnsafeName(name.into()));
        }
        let dir = self.job_dir(job)?;
        let part = dir.join(format!("{name}.part"));
        let at = saved.bytes;
        let opened = {
            let part = part.clone();
            tokio::task::spawn_blocking(move || Output::reopen(&part, at))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??
        };
        Ok(opened.map(|out| {
            Box::new(TmpFile {
                label: format!("{job}/{name}"),
                part,
                target: dir.join(name),
                out: Some(out),
                bytes: at,
                saved: at,
                save_every: self.save_every,
            }) as Box<dyn FileWriter>
        }))
    }

    async fn delete_file(&self, job: &str, name: &str) -> Result<(), DestinationError> {
        if !is_safe_component(name) {
            return Err(DestinationError::UnsafeName(name.into()));
        }
        match fs::remove_file(self.job_dir(job)?.join(name)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn delete_job(&self, job: &str, _why: Removal) -> Result<(), DestinationError> {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::destination::FileKind;

    /// Bytes whose every position is distinguishable, so a misplaced block shows.
    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ (i / 4093) as u8).collect()
    }

    async fn write_in(dest: &TmpFs, name: &str, data: &[u8], piece: usize) -> Receipt {
        let target =
            FileTarget { job: "job", name, resource_type: "Patient", provider: "p", kind: FileKind::Output };
        let mut w = dest.open(target).await.unwrap();
        for c in data.chunks(piece) {
            w.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        w.finish(0).await.unwrap()
    }

    #[tokio::test]
    async fn files_are_byte_exact_at_any_length_and_chunking() {
        let dir = tempfile::tempdir().unwrap();
        let dest = TmpFs::new(dir.path().to_path_buf(), u64::MAX);
        let lengths = [
            0,
            1,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            WRITE_BUFFER_BYTES,
            WRITE_BUFFER_BYTES + 1,
            3 * WRITE_BUFFER_BYTES + 777,
        ];
        for (i, len) in lengths.into_iter().enumerate() {
            for piece in [1000, 65_536, 5 * WRITE_BUFFER_BYTES] {
                if len > 100_000 && piece == 1000 {
                    continue;
                }
                let data = sample(len);
                let name = format!("f{i}-{piece}");
                let receipt = write_in(&dest, &name, &data, piece).await;
                assert_eq!(receipt.bytes, len as u64);
                let read = std::fs::read(dir.path().join("job").join(&name)).unwrap();
                assert!(read == data, "length {len}, pieces of {piece}: content differs");
            }
        }
    }

    #[test]
    fn files_on_a_filesystem_that_allows_it_are_written_direct() {
        // The temporary directory the other tests write to is on ext4 here and in CI, which takes
        // O_DIRECT: the direct path must be the one they exercise, not a silent fallback.
        let dir = tempfile::tempdir().unwrap();
        let out = Output::create(&dir.path().join("probe.part")).unwrap();
        if cfg!(target_os = "linux") {
            assert!(out.direct, "O_DIRECT was refused on {}", dir.path().display());
        }
    }

    #[tokio::test]
    async fn files_and_job_directories_are_owner_only_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let dest = TmpFs::new(dir.path().to_path_buf(), u64::MAX);
        // SAFETY: umask only changes this process's default modes; the test restores it.
        let old = unsafe { libc::umask(0o000) };
        write_in(&dest, "open.ndjson", b"{}\n", 10).await;
        unsafe { libc::umask(old) };
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path().join("job")), DIR_MODE);
        assert_eq!(mode(dir.path().join("job/open.ndjson")), FILE_MODE);
    }
}
