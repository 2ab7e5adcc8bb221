//! What a status poll shows of a job this process is running, kept in memory beside the store.
//! With imports keeping the disk busy, each database round trip of a poll took 2–4 ms (see
//! docs/benchmark.md); a poll of a running job now reads this instead. The store stays the
//! record: a job not running here (queued, finished, or before a restart resumes it) is answered
//! from there.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    domain::{FileCounts, JobState},
    jobs::file_bounds::{InFlight, JobBytes},
};

/// A running job's state as the status endpoint reports it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: JobState,
    /// The provider's own progress text while exporting.
    pub text: Option<String>,
    pub files: FileCounts,
    /// Resources the manifests announce, when they gave a count for every data file.
    pub expected_resources: Option<u64>,
    /// What has arrived so far, files in progress included, once the job imports.
    pub received: Option<Received>,
}

/// Bytes (decoded) and resources received so far, and the rate since the import began here.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub bytes: u64,
    pub resources: u64,
    pub bytes_per_sec: f64,
    pub resources_per_sec: f64,
    /// The files downloading now.
    pub in_flight: Vec<InFlight>,
}

impl Snapshot {
    /// Seconds until every announced resource is in, at the rate so far; `None` without a count
    /// from the manifests or before anything arrived.
    pub fn eta_secs(&self) -> Option<f64> {
        let (expected, r) = (self.expected_resources?, self.received.as_ref()?);
        (r.resources_per_sec > 0.0).then(|| expected.saturating_sub(r.resources) as f64 / r.resources_per_sec)
    }

    /// Percent done: resources over the announced total where the manifests gave counts (so a
    /// long file moves it), else finished files over listed files. Never 100 before the end.
    pub fn percent(&self) -> f64 {
        percent_done(self.expected_resources, self.received.as_ref().map(|r| r.resources), self.files)
    }
}

/// Percent done of an importing job, alike wherever it is read: resources over the announced
/// total where the manifests gave counts (so a long file moves it), else finished files over
/// listed files. Never 100 before the end.
pub fn percent_done(expected: Option<u64>, resources: Option<u64>, files: FileCounts) -> f64 {
    match (expected, resources) {
        (Some(expected), Some(resources)) if expected > 0 => {
            let p = resources as f64 * 100.0 / expected as f64;
            ((p * 10.0).floor() / 10.0).min(99.9)
        }
        _ => files.percent(),
    }
}

/// The job's live counters and where they stood when the import began here.
#[derive(Debug)]
struct Counters {
    counters: Arc<JobBytes>,
    since: Instant,
    bytes_then: u64,
    resources_then: u64,
}

/// One point of a job's throughput chart: cumulative bytes and resources at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub bytes: u64,
    pub resources: u64,
}

/// Most points a job's chart keeps; when full, every other one goes and the spacing doubles, so
/// a job of any length is drawn over its whole life in bounded memory.
const MAX_SAMPLES: usize = 240;
/// Spacing of the chart's points while a job is young.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Series {
    points: Vec<Sample>,
    /// Current spacing, in milliseconds.
    every_ms: i64,
}

impl Series {
    fn push(&mut self, sample: Sample) {
        if self.every_ms == 0 {
            self.every_ms = SAMPLE_EVERY.as_millis() as i64;
        }
        if let Some(last) = self.points.last() {
            if sample.at_ms - last.at_ms < self.every_ms {
                return;
            }
        }
        self.points.push(sample);
        self.thin();
    }

    fn thin(&mut self) {
        if self.points.len() > MAX_SAMPLES {
            // The first point stays: the chart always starts where the import began.
            let mut n = 0;
            self.points.retain(|_| {
                n += 1;
                n % 2 == 1
            });
            self.every_ms *= 2;
        }
    }
}

/// Updated by the pipeline where it writes the same facts to the store. Polls read the store
/// instead until the job has published its state, and again from the moment it is closed.
#[derive(Debug, Default)]
pub struct Progress(Mutex<Live>, Mutex<Option<Counters>>, Mutex<Series>, std::sync::OnceLock<bool>);

#[derive(Debug, Default)]
enum Live {
    #[default]
    NotYet,
    Known(Snapshot),
    /// The job's last word is in the store (finished, failed, cancelled); later updates are dropped.
    Closed,
}

impl Progress {
    /// The job is a Bulk Submit submission's (its data is its submitter's): known once it runs.
    pub fn set_submission(&self, yes: bool) {
        let _ = self.3.set(yes);
    }

    pub fn is_submission(&self) -> Option<bool> {
        self.3.get().copied()
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        let mut snapshot = match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Live::Known(s) => s.clone(),
            Live::NotYet | Live::Closed => return None,
        };
        if let Some(live) = &*self.1.lock().unwrap_or_else(PoisonError::into_inner) {
            let (bytes, resources) = (live.counters.bytes(), live.counters.resources());
            let secs = live.since.elapsed().as_secs_f64();
            let rate =
                |now: u64, then: u64| if secs > 0.0 { now.saturating_sub(then) as f64 / secs } else { 0.0 };
            snapshot.received = Some(Received {
                bytes,
                resources,
                bytes_per_sec: rate(bytes, live.bytes_then),
                resources_per_sec: rate(resources, live.resources_then),
                in_flight: live.counters.in_flight(),
            });
        }
        Some(snapshot)
    }

    /// Read the job's counters from now on (the import begins or resumes here).
    pub fn watch(&self, counters: Arc<JobBytes>) {
        let (bytes_then, resources_then) = (counters.bytes(), counters.resources());
        *self.1.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Counters { counters, since: Instant::now(), bytes_then, resources_then });
        self.sample();
    }

    /// Start the chart from the points an earlier run of the job kept.
    pub fn resume_chart(&self, points: Vec<Sample>) {
        let mut series = self.2.lock().unwrap_or_else(PoisonError::into_inner);
        for p in points {
            series.push(p);
        }
    }

    /// Add a point to the throughput chart (no more often than its spacing).
    pub fn sample(&self) {
        if let Some(sample) = self.current() {
            self.2.lock().unwrap_or_else(PoisonError::into_inner).push(sample);
        }
    }

    /// Where the counters stand now; `None` before the import began here.
    fn current(&self) -> Option<Sample> {
        let counters = self.1.lock().unwrap_or_else(PoisonError::into_inner);
        let c = counters.as_ref()?;
        Some(Sample {
            at_ms: crate::time_util::now_unix_ms(),
            bytes: c.counters.bytes(),
            resources: c.counters.resources(),
        })
    }

    /// The chart as stored with the job when it ends, a last point included.
    pub fn throughput_json(&self) -> String {
        self.sample_now();
        serde_json::to_string(&self.throughput()).unwrap_or_else(|_| "[]".into())
    }

    /// A point now, whatever the spacing (the job's last).
    fn sample_now(&self) {
        let Some(sample) = self.current() else { return };
        let mut series = self.2.lock().unwrap_or_else(PoisonError::into_inner);
        match series.points.last() {
            Some(last) if series.points.len() > 1 && sample.at_ms - last.at_ms < series.every_ms => {
                *series.points.last_mut().expect("not empty") = sample;
            }
            _ => {
                series.points.push(sample);
                series.thin();
            }
        }
    }

    /// Sample every [`SAMPLE_EVERY`] until dropped (run beside the import it charts).
    pub async fn keep_sampling(&self) -> std::convert::Infallible {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Ends when the import it runs beside ends and drops it.
        loop {
            tick.tick().await;
            self.sample();
        }
    }

    /// The chart's points so far, oldest first.
    pub fn throughput(&self) -> Vec<Sample> {
        self.2.lock().unwrap_or_else(PoisonError::into_inner).points.clone()
    }

    /// Call right after the job's final store write, so no poll reports it running after that.
    pub fn close(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Live::Closed;
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut live = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Live::NotYet = *live {
            *live = Live::Known(Snapshot {
                state: JobState::Queued,
                text: None,
                files: FileCounts::default(),
                expected_resources: None,
                received: None,
            });
        }
        if let Live::Known(snapshot) = &mut *live {
            f(snapshot);
        }
    }

    pub fn set_state(&self, state: JobState, text: Option<String>) {
        self.update(|s| {
            s.state = state;
            s.text = text;
        });
    }

    pub fn set_text(&self, text: String) {
        self.update(|s| s.text = Some(text));
    }

    /// The plan is stored: from now on the job counts files. `expected_resources`: what the
    /// manifests announce, if they gave a count for every data file.
    pub fn importing(&self, files: FileCounts, expected_resources: Option<u64>) {
        self.update(|s| {
            s.state = JobState::Importing;
            s.files = files;
            s.expected_resources = expected_resources;
        });
    }

    pub fn file_finished(&self) {
        self.update(|s| s.files.finished += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_series_thins_out_and_keeps_its_start() {
        let mut series = Series::default();
        for i in 0..1000i64 {
            series.push(Sample { at_ms: i * 1000, bytes: i as u64, resources: 0 });
        }
        assert!(series.points.len() <= MAX_SAMPLES, "{}", series.points.len());
        assert!(series.points.len() > MAX_SAMPLES / 4, "{}", series.points.len());
        assert_eq!(series.points[0].at_ms, 0, "the chart starts where the import began");
        assert!(series.points.last().unwrap().at_ms >= 990_000, "and reaches the present");
        assert!(series.points.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    }

    #[test]
    fn points_closer_than_the_spacing_are_skipped() {
        let mut series = Series::default();
        for at_ms in [0, 300, 999, 1000, 1500, 2100] {
            series.push(Sample { at_ms, bytes: 0, resources: 0 });
        }
        assert_eq!(series.points.iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![0, 1000, 2100]);
    }

    fn snapshot(expected: Option<u64>, resources: u64, per_sec: f64) -> Snapshot {
        Snapshot {
            state: JobState::Importing,
            text: None,
            files: FileCounts { total: 4, finished: 1 },
            expected_resources: expected,
            received: Some(Received {
                bytes: 0,
                resources,
                bytes_per_sec: 0.0,
                resources_per_sec: per_sec,
                in_flight: vec![],
            }),
        }
    }

    #[test]
    fn announced_counts_give_a_percentage_that_moves_within_a_file_and_an_eta() {
        let s = snapshot(Some(1000), 250, 50.0);
        assert_eq!(s.percent(), 25.0);
        assert_eq!(s.eta_secs(), Some(15.0));
        assert_eq!(snapshot(Some(1000), 1000, 50.0).percent(), 99.9, "100 only once completed");
        assert_eq!(snapshot(Some(10), 20, 1.0).eta_secs(), Some(0.0), "a provider's low count");
        let unannounced = snapshot(None, 250, 50.0);
        assert_eq!((unannounced.percent(), unannounced.eta_secs()), (25.0, None), "files then");
        assert_eq!(snapshot(Some(1000), 0, 0.0).eta_secs(), None, "nothing arrived yet");
    }
}
