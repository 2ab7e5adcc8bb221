//! What one provider may cost us per file and per job, beyond the line guard: decoded bytes per
//! file and per job, and a minimum transfer rate (a body trickled at 1 B/s is never
//! silent long enough for the read timeout, yet never ends).
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use crate::config::Limits;
use crate::jobs::disk_room::{share_now, DiskLimits, Low, Reserve};

/// Why a file (or its job) went over a bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("the file is larger than {0} bytes after decoding (MAX_FILE_BYTES)")]
    FileBytes(u64),
    #[error("the export's files add up to more than {0} bytes (MAX_JOB_BYTES)")]
    JobBytes(u64),
    #[error("the download ran slower than {rate} bytes/s over {window_secs} s (MIN_TRANSFER_RATE, MIN_TRANSFER_RATE_WINDOW)")]
    TooSlow { rate: u64, window_secs: u64 },
    #[error("the export's files add up to more than {max} bytes: {percent} % of the {free} bytes free on the disk of {place} when the job began (JOB_DISK_SHARE)")]
    DiskShare { max: u64, percent: u32, free: u64, place: String },
    #[error("the disk of {place} is down to {free} bytes free, under the {reserve} bytes kept free (DISK_RESERVE_BYTES); the job stopped before it filled the disk")]
    DiskLow { free: u64, reserve: u64, place: String },
}

impl Exceeded {
    /// Whether it ends the whole job, not just the file.
    pub fn is_job_bound(&self) -> bool {
        matches!(self, Exceeded::JobBytes(_) | Exceeded::DiskShare { .. } | Exceeded::DiskLow { .. })
    }
}

/// Decoded bytes (and resources) of a whole job, shared by its downloads and read by live
/// progress. A file's share is taken as it arrives and given back if its attempt fails, so
/// retries are not counted twice.
#[derive(Debug)]
pub struct JobBytes {
    used: AtomicU64,
    max: u64,
    /// Why `max` is what it is, when a disk's room set it below `MAX_JOB_BYTES`.
    over_max: Exceeded,
    /// The disks' reserve, looked at as the job grows.
    reserve: Option<Reserve>,
    resources: AtomicU64,
    /// Files downloading now, by plan index: what their current attempt has received.
    in_flight: Mutex<BTreeMap<i64, Arc<FileLive>>>,
}

/// One file's current attempt as it streams, for the job page.
#[derive(Debug, Default)]
struct FileLive {
    bytes: AtomicU64,
    resources: AtomicU64,
    resource_type: std::sync::OnceLock<String>,
    /// Stored: its result is being recorded, and counts as the file's from then on.
    finished: std::sync::atomic::AtomicBool,
}

/// A file downloading now: its plan index, type, and bytes and resources of its current attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub idx: i64,
    /// A data file's manifest entry type (`""`: untyped); `None` for error and deleted files.
    pub resource_type: Option<String>,
    pub bytes: u64,
    pub resources: u64,
    /// Stored already, its result about to be recorded.
    pub finished: bool,
}

impl JobBytes {
    /// `already`: bytes of the job's files finished before (a resumed job).
    pub fn new(max: u64, already: u64) -> Self {
        Self {
            used: AtomicU64::new(already),
            max,
            over_max: Exceeded::JobBytes(max),
            reserve: None,
            resources: AtomicU64::new(0),
            in_flight: Mutex::default(),
        }
    }

    /// Bounded also by the room on the disks its bytes land on (`disk_room`): a share of what is
    /// free now, and the reserve as it grows.
    pub fn on_disks(mut self, limits: &DiskLimits) -> Self {
        // A resumed job's stored bytes are off the free space already: its share is on top.
        let stored = self.used.load(Ordering::Relaxed);
        let share = share_now(limits).map(|(max, free, place)| (stored.saturating_add(max), free, place));
        if let Some((max, free, place)) = share.filter(|(max, _, _)| *max < self.max) {
            self.over_max = Exceeded::DiskShare { max, percent: limits.share_percent, free, place };
            self.max = max;
        }
        self.reserve = Reserve::new(limits);
        self
    }

    /// The files downloading now, in plan order.
    pub fn in_flight(&self) -> Vec<InFlight> {
        self.files()
            .iter()
            .map(|(idx, f)| InFlight {
                idx: *idx,
                resource_type: f.resource_type.get().cloned(),
                bytes: f.bytes.load(Ordering::Relaxed),
                resources: f.resources.load(Ordering::Relaxed),
                finished: f.finished.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The file's result is in the store: it is no longer downloading.
    pub fn recorded(&self, idx: i64) {
        self.files().remove(&idx);
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Arc<FileLive>>> {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resources of files finished before (a resumed job).
    pub fn with_resources(self, already: u64) -> Self {
        self.resources.store(already, Ordering::Relaxed);
        self
    }

    /// Bytes received so far (decoded), files in progress included.
    pub fn bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Resources validated so far, files in progress included.
    pub fn resources(&self) -> u64 {
        self.resources.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> Result<(), Exceeded> {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before + n > self.max {
            self.give_back(n);
            return Err(self.over_max.clone());
        }
        if let Some(Err(Low { free, reserve, place })) = self.reserve.as_ref().map(|r| r.check(before + n)) {
            self.give_back(n);
            return Err(Exceeded::DiskLow { free, reserve, place });
        }
        Ok(())
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One attempt at one file, counted as it streams.
pub struct FileMeter<'a> {
    job: &'a JobBytes,
    idx: i64,
    live: Arc<FileLive>,
    /// Bytes of this attempt counted against the job.
    taken: u64,
    /// Resources of this attempt counted in the job's progress.
    counted: u64,
    bytes: u64,
    max_bytes: u64,
    min_rate: u64,
    window: Duration,
    window_start: Instant,
    window_bytes: u64,
    kept: bool,
    /// Whether this file's resources count toward the job's (data files do; the lines of error
    /// and deleted files are not the export's resources).
    counts_for_job: bool,
}

impl<'a> FileMeter<'a> {
    /// `idx`: the file's index in its job's plan.
    pub fn new(job: &'a JobBytes, limits: &Limits, idx: i64) -> Self {
        let live = Arc::new(FileLive::default());
        job.files().insert(idx, live.clone());
        Self {
            job,
            idx,
            live,
            taken: 0,
            counted: 0,
            bytes: 0,
            max_bytes: limits.max_file_bytes,
            min_rate: limits.min_transfer_rate,
            window: limits.min_transfer_rate_window,
            window_start: Instant::now(),
            window_bytes: 0,
            kept: false,
            counts_for_job: true,
        }
    }

    /// An error or deleted file: its lines show on its own row only, not in the job's resources.
    pub fn not_data(mut self) -> Self {
        self.counts_for_job = false;
        self
    }

    /// The body begins now: time spent before (retries, waits, the provider's time to answer)
    /// is not transfer time.
    pub fn body_started(&mut self) {
        self.window_start = Instant::now();
        self.window_bytes = 0;
    }

    /// Time spent on our side (the destination's write) is not the provider's: the window
    /// moves on by that much.
    pub fn paused(&mut self, took: Duration) {
        self.window_start += took;
    }

    /// A download continued from a durable point: what it held counts as received, outside any
    /// transfer-rate window.
    pub fn resumed(&mut self, bytes: u64, resources: u64) -> Result<(), Exceeded> {
        self.bytes += bytes;
        if self.bytes > self.max_bytes {
            return Err(Exceeded::FileBytes(self.max_bytes));
        }
        self.job.take(bytes)?;
        self.taken += bytes;
        self.live.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.resources(resources);
        Ok(())
    }

    /// Count a decoded chunk that just arrived.
    pub fn chunk(&mut self, n: u64) -> Result<(), Exceeded> {
        self.bytes += n;
        if self.bytes > self.max_bytes {
            return Err(Exceeded::FileBytes(self.max_bytes));
        }
        self.job.take(n)?;
        self.taken += n;
        self.live.bytes.fetch_add(n, Ordering::Relaxed);
        self.window_bytes += n;
        let elapsed = Instant::now().saturating_duration_since(self.window_start);
        if elapsed >= self.window {
            if (self.window_bytes as f64) < self.min_rate as f64 * elapsed.as_secs_f64() {
                return Err(Exceeded::TooSlow { rate: self.min_rate, window_secs: self.window.as_secs() });
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(())
    }

    /// Count resources validated in this attempt (for live progress).
    pub fn resources(&mut self, n: u64) {
        if n > 0 {
            if self.counts_for_job {
                self.job.resources.fetch_add(n, Ordering::Relaxed);
                self.counted += n;
            }
            self.live.resources.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A data file's manifest entry type, for the job page's per-type counts.
    pub fn of_type(self, resource_type: &str) -> Self {
        let _ = self.live.resource_type.set(resource_type.to_string());
        self
    }

    /// The file was stored: its bytes stay counted against the job.
    pub fn keep(mut self) {
        self.live.finished.store(true, Ordering::Relaxed);
        self.kept = true;
    }
}

impl Drop for FileMeter<'_> {
    fn drop(&mut self) {
        // A stored file stays listed until the engine has recorded it (`recorded`), so a poll
        // in between never shows it back at nothing. A later attempt at the same file may have
        // registered already.
        if !self.kept {
            let mut files = self.job.files();
            if files.get(&self.idx).is_some_and(|f| Arc::ptr_eq(f, &self.live)) {
                files.remove(&self.idx);
            }
        }
        if !self.kept {
            self.job.give_back(self.taken);
            self.job.resources.fetch_sub(self.counted, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let mut l = crate::config::Config::defaults().limits;
        l.max_file_bytes = 100;
        l.min_transfer_rate = 1;
        l.min_transfer_rate_window = Duration::from_secs(3600);
        l
    }

    #[test]
    fn a_file_over_its_size_fails_and_a_failed_attempt_gives_its_bytes_back() {
        let job = JobBytes::new(1000, 0);
        let mut m = FileMeter::new(&job, &limits(), 0);
        assert_eq!(m.chunk(60), Ok(()));
        assert_eq!(m.chunk(60), Err(Exceeded::FileBytes(100)));
        drop(m);
        assert_eq!(job.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_job_total_spans_files_and_only_stored_files_keep_their_share() {
        let job = JobBytes::new(150, 20);
        let mut a = FileMeter::new(&job, &limits(), 0);
        a.chunk(90).unwrap();
        a.keep();
        let mut b = FileMeter::new(&job, &limits(), 1);
        assert_eq!(b.chunk(50), Err(Exceeded::JobBytes(150)));
        drop(b);
        assert_eq!(job.used.load(Ordering::Relaxed), 110);
    }

    #[test]
    fn files_downloading_now_are_listed_until_their_attempt_ends() {
        let job = JobBytes::new(1000, 0);
        let mut a = FileMeter::new(&job, &limits(), 3);
        let mut b = FileMeter::new(&job, &limits(), 1);
        a.chunk(40).unwrap();
        a.resources(2);
        b.chunk(5).unwrap();
        let listed = job.in_flight();
        assert_eq!(
            listed,
            vec![
                InFlight { idx: 1, resource_type: None, bytes: 5, resources: 0, finished: false },
                InFlight { idx: 3, resource_type: None, bytes: 40, resources: 2, finished: false }
            ]
        );
        a.keep();
        drop(b);
        assert_eq!(job.in_flight().len(), 1, "a failed attempt is gone, a stored one stays until recorded");
        job.recorded(3);
        assert!(job.in_flight().is_empty());
        assert_eq!((job.bytes(), job.resources()), (40, 2));
    }

    #[test]
    fn lines_of_error_and_deleted_files_are_not_the_jobs_resources() {
        let job = JobBytes::new(1000, 0);
        let mut deleted = FileMeter::new(&job, &limits(), 0).not_data();
        deleted.resources(4);
        assert_eq!(job.resources(), 0);
        assert_eq!(job.in_flight()[0].resources, 4, "its own row still shows them");
    }

    #[test]
    fn a_slow_window_fails_and_a_fast_one_starts_the_next() {
        let job = JobBytes::new(u64::MAX, 0);
        let mut l = limits();
        l.max_file_bytes = u64::MAX;
        // Windows of 200 ms and sleeps of 250 ms: a check that must pass has 200 ms of slack.
        l.min_transfer_rate = 1_000_000;
        l.min_transfer_rate_window = Duration::from_millis(200);
        let mut m = FileMeter::new(&job, &l, 0);
        std::thread::sleep(Duration::from_millis(250));
        assert!(matches!(m.chunk(10), Err(Exceeded::TooSlow { .. })));
        let mut fast = FileMeter::new(&job, &l, 0);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(fast.chunk(1_000_000), Ok(()));
        // The next window starts afresh: a slow one after a fast one still fails.
        std::thread::sleep(Duration::from_millis(250));
        assert!(matches!(fast.chunk(10), Err(Exceeded::TooSlow { .. })));
        // Waiting before the body, or on our own writes, is not counted.
        let mut waited = FileMeter::new(&job, &l, 0);
        std::thread::sleep(Duration::from_millis(250));
        waited.body_started();
        assert_eq!(waited.chunk(10), Ok(()));
        let writing = Instant::now();
        std::thread::sleep(Duration::from_millis(250));
        waited.paused(writing.elapsed());
        assert_eq!(waited.chunk(10), Ok(()));
    }
}
