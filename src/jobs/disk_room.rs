//! Room on the local disks where a job's bytes land (tmp-fs's `JOBS_PATH`, a SQLite resource
//! store, encrypted files' spool under `DATA_DIR`). A body with no end and no `Content-Length`
//! would otherwise run until `MAX_JOB_BYTES` (1 TiB) or a full disk: a job may take at most
//! `JOB_DISK_SHARE` percent of what was free when it began, and stops once any of those disks is
//! down to `DISK_RESERVE_BYTES` (other jobs and other programs fill it too), looked at every
//! `CHECK_EVERY` bytes it grows. Room is what statvfs says an unprivileged writer may use.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Bytes a job grows between looks at the disks' room.
const CHECK_EVERY: u64 = 16 * 1024 * 1024;

/// Where a job's bytes land on local disks, and how much of them it may take.
#[derive(Debug, Clone, Default)]
pub struct DiskLimits {
    pub places: Vec<PathBuf>,
    /// Percent of the free space at the job's start; 0: no share bound.
    pub share_percent: u32,
    /// Bytes kept free on each disk; 0: none.
    pub reserve: u64,
}

impl DiskLimits {
    /// Where a job's bytes land on local disks as `config` sets them up, and how much room it
    /// may take there.
    pub fn of(config: &crate::config::Config) -> Self {
        let mut places = config.destination.local_places(&config.jobs_path);
        // The job database and encrypted files' spool.
        places.push(config.data_dir.clone());
        Self {
            places,
            share_percent: config.limits.job_disk_share,
            reserve: config.limits.disk_reserve_bytes,
        }
    }
}

/// Bytes free for an unprivileged writer on the disk holding `path` (or its nearest existing
/// ancestor, for a directory not made yet).
pub fn available(path: &Path) -> std::io::Result<u64> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(existing)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The share bound now: `(max bytes, free bytes, place)` of the least free place.
pub fn share_now(limits: &DiskLimits) -> Option<(u64, u64, String)> {
    if limits.share_percent == 0 {
        return None;
    }
    let (free, place) = least_free(&limits.places)?;
    Some((free / 100 * u64::from(limits.share_percent), free, place))
}

fn least_free(places: &[PathBuf]) -> Option<(u64, String)> {
    places
        .iter()
        .filter_map(|p| available(p).ok().map(|free| (free, p.display().to_string())))
        .min_by_key(|(free, _)| *free)
}

/// A disk down to its reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Low {
    pub free: u64,
    pub reserve: u64,
    pub place: String,
}

/// The reserve, looked at as the job grows.
#[derive(Debug)]
pub struct Reserve {
    places: Vec<PathBuf>,
    reserve: u64,
    next_look: AtomicU64,
}

impl Reserve {
    pub fn new(limits: &DiskLimits) -> Option<Self> {
        (limits.reserve > 0 && !limits.places.is_empty()).then(|| Self {
            places: limits.places.clone(),
            reserve: limits.reserve,
            next_look: AtomicU64::new(0),
        })
    }

    /// The job has grown to `used` bytes: past the next look, are the disks above the reserve?
    pub fn check(&self, used: u64) -> Result<(), Low> {
        let due = self.next_look.load(Ordering::Relaxed);
        if used < due
            || self
                .next_look
                .compare_exchange(due, used + CHECK_EVERY, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        match least_free(&self.places) {
            Some((free, place)) if free < self.reserve => Err(Low { free, reserve: self.reserve, place }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_of_the_least_free_place_and_the_reserve_binds_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let free = available(dir.path()).unwrap();
        assert!(free > 0);
        let not_yet = dir.path().join("a/b/c");
        assert_eq!(available(&not_yet).unwrap() / 1_000_000, free / 1_000_000, "an ancestor's disk");
        let limits = DiskLimits { places: vec![dir.path().into()], share_percent: 50, reserve: 0 };
        let (max, seen, place) = share_now(&limits).unwrap();
        assert!(max <= seen / 2 + 100 && max + 100_000_000 >= seen / 2, "{max} of {seen}");
        assert_eq!(place, dir.path().display().to_string());
        assert!(share_now(&DiskLimits { share_percent: 0, ..limits.clone() }).is_none());
        // A reserve above what is free binds at the first look, then only every CHECK_EVERY.
        let reserve = Reserve::new(&DiskLimits { reserve: u64::MAX, ..limits }).unwrap();
        assert!(matches!(reserve.check(1), Err(Low { reserve: u64::MAX, .. })));
        assert!(reserve.check(2).is_ok(), "not looked at again so soon");
        assert!(reserve.check(CHECK_EVERY + 2).is_err());
    }
}
