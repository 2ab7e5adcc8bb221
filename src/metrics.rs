//! What `/metrics` reports, in the Prometheus text format: counters the engine and the HTTP side
//! increment as things happen, and gauges (jobs by state, running, waiting) read at each scrape.
//! Labels are small fixed sets (states, outcomes, issue codes, methods, route templates, status
//! codes): never a job id, a URL or a provider name.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    /// `done` or `failed`.
    pub outcome: String,
    /// The file's OperationOutcome issue code (`informational`, `invalid`, `not-found`, …).
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderRequestLabels {
    pub method: String,
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route template with `:name` parameters (`/job/:id`), or `ui` for everything else.
    pub route: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub jobs: Family<StateLabel, Gauge>,
    pub jobs_running: Gauge,
    pub jobs_waiting: Gauge,
    pub jobs_finished: Family<StateLabel, Counter>,
    pub files: Family<FileLabels, Counter>,
    pub bytes: Counter,
    pub resources: Counter,
    pub provider_requests: Family<ProviderRequestLabels, Counter>,
    pub provider_request_seconds: Family<MethodLabel, Histogram>,
    pub http_requests: Family<RouteLabels, Counter>,
    pub http_request_seconds: Family<RouteLabels, Histogram>,
    pub submission_requests: Family<KindLabel, Counter>,
    /// Resource store rows: written (upserted, stored unless older), deleted (deleted[]),
    /// removed (a withdrawn manifest or stopped submission).
    pub store_rows: Family<KindLabel, Counter>,
    pub store_batch_seconds: Histogram,
}

/// 1 ms to about 65 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulk_import");
        let metrics = Metrics {
            jobs: Family::default(),
            jobs_running: Gauge::default(),
            jobs_waiting: Gauge::default(),
            jobs_finished: Family::default(),
            files: Family::default(),
            bytes: Counter::default(),
            resources: Counter::default(),
            provider_requests: Family::default(),
            provider_request_seconds: Family::new_with_constructor(latency),
            http_requests: Family::default(),
            http_request_seconds: Family::new_with_constructor(latency),
            submission_requests: Family::default(),
            store_rows: Family::default(),
            store_batch_seconds: latency(),
            registry: Registry::default(),
        };
        registry.register("jobs", "Jobs in the store, by state", metrics.jobs.clone());
        registry.register("jobs_running", "Jobs running in this process", metrics.jobs_running.clone());
        registry.register(
            "jobs_waiting",
            "Jobs of this process waiting for a slot (MAX_CONCURRENT_JOBS)",
            metrics.jobs_waiting.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs this process finished, by result (completed, completed-with-errors, failed)",
            metrics.jobs_finished.clone(),
        );
        registry.register("files", "Files finished, by outcome and issue code", metrics.files.clone());
        registry.register("stored_bytes", "Bytes stored at the destination", metrics.bytes.clone());
        registry.register("resources", "Resources validated and stored", metrics.resources.clone());
        registry.register(
            "provider_requests",
            "Requests to providers (kick-off, status, manifest, files, release), by method and status",
            metrics.provider_requests.clone(),
        );
        registry.register(
            "provider_request_seconds",
            "Time to a provider's response headers",
            metrics.provider_request_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "Requests served, by route and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "Time to serve a request (status polls are route /job/:id)",
            metrics.http_request_seconds.clone(),
        );
        registry.register(
            "submission_requests",
            "Bulk Submit requests taken, by kind (opened, manifest, replace, withdraw, completed, stopped)",
            metrics.submission_requests.clone(),
        );
        registry.register(
            "resource_store_rows",
            "Resource store rows written, deleted (deleted[] Bundles) and removed (withdrawn data)",
            metrics.store_rows.clone(),
        );
        registry.register(
            "resource_store_batch_seconds",
            "Time to commit one batch to the resource store",
            metrics.store_batch_seconds.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// The text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A `$bulk-submit` request taken (a submission opened, a manifest, a replacement, …).
    pub fn submission_request(&self, kind: &str) {
        self.submission_requests.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    /// Rows the resource store wrote, deleted or removed.
    pub fn store_rows(&self, kind: &str, rows: u64) {
        self.store_rows.get_or_create(&KindLabel { kind: kind.into() }).inc_by(rows);
    }

    /// A provider's answer (or its absence) after `seconds`.
    pub fn provider_request(&self, method: &str, status: Option<u16>, seconds: f64) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.provider_requests.get_or_create(&ProviderRequestLabels { method: method.into(), status }).inc();
        self.provider_request_seconds.get_or_create(&MethodLabel { method: method.into() }).observe(seconds);
    }
}
