//! Running jobs: each on a `TaskTracker`, with its own `CancellationToken` (a child of shutdown),
//! at most `MAX_CONCURRENT_JOBS` at once. Runtime handles only; job state lives in the store, and
//! what a job does is the caller's (`pipeline::start`), so the runner knows nothing of it.
//!
//! Jobs run on their own tokio runtime whose threads have a lower OS priority, so while imports
//! keep every core busy validating lines, the API (status polls above all) still answers at once.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::jobs::download_slots::DownloadSlots;
use crate::jobs::progress::{Progress, Snapshot};

/// How long a DELETE waits for a cancelled job to let go of its files.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// A job this process runs: how to stop it, how to learn it stopped, and what polls show of it.
#[derive(Clone)]
struct Running {
    cancel: CancellationToken,
    done: watch::Receiver<()>,
    progress: Arc<Progress>,
    plan_changed: Arc<Notify>,
}

/// What a running job is handed: its stop signal, its progress for polls, and the notice that its
/// plan changed (a manifest added or withdrawn).
pub struct JobHandles {
    pub cancel: CancellationToken,
    pub progress: Arc<Progress>,
    pub plan_changed: Arc<Notify>,
}

pub struct Runner {
    /// This process as a lease holder (`instance_id`).
    pub owner: String,
    pub tracker: TaskTracker,
    runtime: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    pub shutdown: CancellationToken,
    /// Never held across an await, so a plain mutex, which a drop guard can also take.
    running: Mutex<HashMap<String, Running>>,
    slots: Arc<Semaphore>,
    max_jobs: usize,
    /// Download slots shared by every job (`MAX_TOTAL_DOWNLOADS`, `MAX_DOWNLOADS_PER_PROVIDER`).
    pub download_slots: DownloadSlots,
}

impl Runner {
    pub fn new(
        owner: String,
        shutdown: CancellationToken,
        max_concurrent_jobs: usize,
        (max_total_downloads, max_downloads_per_provider): (usize, usize),
    ) -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bulk-import-jobs")
            .on_thread_start(crate::thread_priority::lower)
            .enable_all()
            .build()?;
        Ok(Self {
            owner,
            handle: runtime.handle().clone(),
            runtime: std::sync::Mutex::new(Some(runtime)),
            tracker: TaskTracker::new(),
            shutdown,
            running: Mutex::default(),
            slots: Arc::new(Semaphore::new(max_concurrent_jobs)),
            max_jobs: max_concurrent_jobs,
            download_slots: DownloadSlots::new(max_total_downloads, max_downloads_per_provider),
        })
    }

    /// Run `work` for job `id` in the background once a job slot is free (at once if cancelled
    /// first: `work` is then never called).
    pub fn spawn<F, Fut>(self: &Arc<Self>, id: String, work: F)
    where
        F: FnOnce(JobHandles) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.spawn_in(id, None, work)
    }

    /// A job slot now, if one is free and nobody waits for one (for work claimed only once it
    /// can start: a claimed lease must not wait unrenewed for a slot).
    pub fn try_slot(&self) -> Option<JobSlot> {
        if self.waiting_count() > 0 {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok().map(JobSlot)
    }

    /// Run `work` for job `id` in the slot already taken.
    pub fn spawn_in_slot<F, Fut>(self: &Arc<Self>, id: String, slot: JobSlot, work: F)
    where
        F: FnOnce(JobHandles) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.spawn_in(id, Some(slot), work)
    }

    fn spawn_in<F, Fut>(self: &Arc<Self>, id: String, slot: Option<JobSlot>, work: F)
    where
        F: FnOnce(JobHandles) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.shutdown.child_token();
        let (done_tx, done) = watch::channel(());
        let progress = Arc::new(Progress::default());
        let plan_changed = Arc::new(Notify::new());
        let running = Running {
            cancel: cancel.clone(),
            done,
            progress: progress.clone(),
            plan_changed: plan_changed.clone(),
        };
        self.running_jobs().insert(id.clone(), running);
        let slots = self.slots.clone();
        let runner = self.clone();
        self.tracker.spawn_on(
            async move {
                // However the task ends (a panic included), the job leaves the map.
                let _deregister = Deregister { runner, id, _done: done_tx };
                let permit = match slot {
                    Some(JobSlot(permit)) => Some(permit),
                    None => tokio::select! {
                        biased;
                        _ = cancel.cancelled() => None,
                        p = slots.acquire_owned() => p.ok(),
                    },
                };
                if permit.is_some() {
                    work(JobHandles { cancel, progress, plan_changed }).await;
                }
            },
            &self.handle,
        );
    }

    /// Tell a job running here that its plan changed; a job not running here reads its plan when it starts.
    /// Run work that is not a job (a file downloaded for another process's job) on the job
    /// runtime, tracked so a shutdown waits for it.
    pub fn spawn_task(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tracker.spawn_on(work, &self.handle);
    }

    pub fn plan_changed(&self, id: &str) {
        if let Some(running) = self.running_jobs().get(id) {
            running.plan_changed.notify_one();
        }
    }

    fn running_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cancel a job if it runs, and wait until it has stopped touching its files.
    pub async fn cancel_and_wait(&self, id: &str) {
        let entry = self.running_jobs().get(id).cloned();
        if let Some(Running { cancel, mut done, progress, .. }) = entry {
            cancel.cancel();
            // Polls go to the store from now on, even if the job takes longer than we wait.
            progress.close();
            let _ = tokio::time::timeout(CANCEL_WAIT, done.changed()).await;
        }
    }

    /// What a poll shows of a job running here; `None` sends the poll to the store.
    pub fn progress(&self, id: &str) -> Option<Snapshot> {
        self.running_jobs().get(id)?.progress.snapshot()
    }

    /// Whether a job running here is a Bulk Submit submission's; `None` when it is not running
    /// here (or has not read its record yet), and the store must tell.
    pub fn is_submission(&self, id: &str) -> Option<bool> {
        self.running_jobs().get(id)?.progress.is_submission()
    }

    /// The throughput chart of a job running here, so far.
    pub fn throughput(&self, id: &str) -> Option<Vec<crate::jobs::progress::Sample>> {
        Some(self.running_jobs().get(id)?.progress.throughput())
    }

    /// Jobs this process holds: running, or waiting for a slot.
    pub fn running_count(&self) -> usize {
        self.running_jobs().len()
    }

    /// Whether job `id` is this process's (running, or waiting for a slot).
    pub fn holds(&self, id: &str) -> bool {
        self.running_jobs().contains_key(id)
    }

    /// Jobs running now (holding a slot).
    pub fn active_count(&self) -> usize {
        self.max_jobs - self.slots.available_permits()
    }

    /// Jobs waiting for a slot (`MAX_CONCURRENT_JOBS`).
    pub fn waiting_count(&self) -> usize {
        self.running_count().saturating_sub(self.active_count())
    }
}

/// A job slot held (`MAX_CONCURRENT_JOBS`), given back when dropped.
pub struct JobSlot(tokio::sync::OwnedSemaphorePermit);

/// Removes a job from the running map when its task ends, and so tells `cancel_and_wait`.
struct Deregister {
    runner: Arc<Runner>,
    id: String,
    _done: watch::Sender<()>,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.runner.running_jobs().remove(&self.id);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Never blocks, so it is safe wherever the last reference goes (even inside a runtime).
        if let Some(runtime) = self.runtime.lock().ok().and_then(|mut r| r.take()) {
            runtime.shutdown_background();
        }
    }
}
