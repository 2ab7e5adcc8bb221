//! What the engine works with, independent of protocol, HTTP and storage: providers, jobs, the
//! manifests a job's plan holds, and files. Intakes (ping-and-pull now, Bulk Submit next) create
//! jobs and add manifests; the engine moves their files; stores persist them.
use crate::fhir::{manifest::FileKind, parameters::KickoffParam};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Accepted, not yet talking to the provider.
    Queued,
    /// Dynamic export kicked off (or about to be); polling the provider.
    Exporting,
    /// Manifest stored; files are being imported.
    Importing,
    Completed,
    Failed,
    /// Stopped on request; what it had stored is removed, the record stays until it expires.
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Exporting => "exporting",
            JobState::Importing => "importing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "exporting" => JobState::Exporting,
            "importing" => JobState::Importing,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Queued,
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed | JobState::Cancelled)
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub client_id: String,
    pub export_type: crate::fhir::parameters::ExportType,
    pub export_url: String,
    pub kickoff: Vec<KickoffParam>,
    pub state: JobState,
    pub status_url: Option<String>,
    /// The provider's last `X-Progress`, for people.
    pub progress: Option<String>,
    /// Why the job failed, for people.
    pub failure: Option<String>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    /// More manifests may still be added. A ping's plan closes with its one manifest; a
    /// submission's when the submitter says it is complete. A job completes only once closed.
    pub plan_open: bool,
}

/// Whether `id` can be a job id (hex, as `$import` makes them with `random_hex`), checked before any query.
pub fn is_job_id(id: &str) -> bool {
    id.len() <= 128 && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Pending,
    Done,
    Failed,
    /// Its manifest was withdrawn or replaced: not part of the import, its data removed.
    Withdrawn,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Done => "done",
            FileState::Failed => "failed",
            FileState::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "done" => FileState::Done,
            "failed" => FileState::Failed,
            "withdrawn" => FileState::Withdrawn,
            _ => FileState::Pending,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobFile {
    pub job_id: String,
    /// Unique in the job, in plan order.
    pub idx: i64,
    /// The manifest of the job's plan that listed the file.
    pub manifest_idx: i64,
    pub kind: FileKind,
    pub resource_type: String,
    pub url: String,
    /// Whether the manifest page listing this file said `requiresAccessToken: true`.
    pub requires_token: bool,
    /// Name at the destination.
    pub name: String,
    pub state: FileState,
    pub resources: i64,
    pub bytes: i64,
    /// The OperationOutcome line for this file, once it is done or failed.
    pub outcome: Option<String>,
    /// Error issues the provider reported in this file (an `error[]` file).
    pub provider_errors: i64,
    /// JSON object of resources per type, for an untyped (`organizeOutputBy`) file.
    pub type_counts: Option<String>,
    /// The manifest's `count` for the file, if it gave one.
    pub expected_resources: Option<i64>,
}

/// Resources the manifests announce for these files, if they gave a count for every data file
/// (one without leaves the total unknown; error and deleted files are not data).
pub fn expected_resources<'a>(files: impl IntoIterator<Item = &'a JobFile>) -> Option<u64> {
    let mut data =
        files.into_iter().filter(|f| f.kind == FileKind::Output && f.state != FileState::Withdrawn);
    data.try_fold(0u64, |sum, f| Some(sum.saturating_add(f.expected_resources?.max(0) as u64)))
}

/// Counts for the status endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileCounts {
    pub total: i64,
    pub finished: i64,
}

impl FileCounts {
    /// Percent of listed files finished, to one decimal; a job with no files left to list is
    /// only finishing up (100).
    pub fn percent(&self) -> f64 {
        if self.total > 0 {
            (self.finished * 1000 / self.total) as f64 / 10.0
        } else {
            100.0
        }
    }
}

/// What is recorded when a file finishes.
#[derive(Debug)]
pub struct FinishedFile<'a> {
    pub state: FileState,
    pub resources: i64,
    pub bytes: i64,
    pub outcome: &'a str,
    pub provider_errors: i64,
    pub type_counts: Option<&'a str>,
}

/// Totals over a job's files.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct FileTotals {
    pub files: i64,
    pub failed: i64,
    pub resources: i64,
    /// Files with an outcome line (finished or failed).
    pub outcomes: i64,
    /// Error issues providers reported in `error[]` files.
    pub provider_errors: i64,
}

impl FileTotals {
    /// Failed files or provider-reported errors: the import is partial.
    pub fn has_errors(&self) -> bool {
        self.failed > 0 || self.provider_errors > 0
    }
}

/// Caps on unfinished jobs (`MAX_CONCURRENT_JOBS`, `MAX_JOBS_PER_PROVIDER`).
#[derive(Debug, Clone, Copy)]
pub struct JobCaps {
    pub all: i64,
    pub per_provider: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Every slot is taken.
    Full,
    /// The provider has its share; others may still start jobs.
    ProviderFull,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Provider {
    pub client_id: String,
    /// Our client id at the provider.
    pub consumer_client_id: String,
    /// The provider's FHIR base URL: every URL we fetch for it must lie under it.
    pub aud: String,
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    /// Scope we ask the provider for; `None` means the configured default.
    pub scope: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// JSON array of extra origins that may receive our token.
    pub token_origins: String,
    /// JSON array: when set, the only origins (besides trusted ones) files may come from.
    pub file_origins: Option<String>,
    /// A pinned token endpoint (instead of discovery), exactly as the provider spells it.
    pub token_endpoint: Option<String>,
    /// What people call the provider ("St. Mary's Epic"), shown instead of its URL.
    pub name: Option<String>,
    /// The Bulk Submit submitter it speaks for: `submitter.system` (may be absent) and `.value`.
    pub submitter_system: Option<String>,
    pub submitter_value: Option<String>,
    /// Its sync plan (JSON of `SyncPlan`), for pulls this server starts itself.
    pub sync_plan: Option<String>,
    /// When the plan's next scheduled pull is due (unix seconds); `None` without a schedule.
    pub sync_next_at: Option<i64>,
}

impl Provider {
    /// The registration's sync plan, if it has one.
    pub fn sync(&self) -> Option<SyncPlan> {
        serde_json::from_str(self.sync_plan.as_deref()?).ok()
    }

    /// The `kid`s of an inline JWKS (none for a `jwks_uri` registration).
    pub fn key_ids(&self) -> Vec<String> {
        let keys = self.jwks_value().and_then(|j| j.get("keys").and_then(|k| k.as_array().cloned()));
        keys.unwrap_or_default().iter().filter_map(|k| k.get("kid")?.as_str().map(str::to_string)).collect()
    }

    pub fn jwks_value(&self) -> Option<serde_json::Value> {
        self.jwks.as_deref().and_then(|s| serde_json::from_str(s).ok())
    }

    /// Whether a Bulk Submit request's submitter is the one this registration speaks for.
    pub fn speaks_for(&self, system: Option<&str>, value: &str) -> bool {
        self.submitter_value.as_deref() == Some(value) && self.submitter_system.as_deref() == system
    }

    pub fn token_origin_list(&self) -> Vec<String> {
        serde_json::from_str(&self.token_origins).unwrap_or_default()
    }

    pub fn file_origin_list(&self) -> Option<Vec<String>> {
        self.file_origins.as_deref().and_then(|s| serde_json::from_str(s).ok())
    }
}

/// One manifest of a job's plan: where its file list came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanManifest {
    pub idx: i64,
    pub url: String,
    pub withdrawn: bool,
    pub added_at: i64,
}

/// What adding a manifest to a plan came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Added as the plan's manifest number `.0`.
    Added(i64),
    /// The plan changed since it was read (another addition came first): read it and try again.
    Stale,
    /// The plan already holds this manifest URL (and it was not withdrawn).
    Duplicate,
    /// The plan is closed (or the job finished): nothing more can be added.
    Closed,
}

/// A Bulk Submit submission: the job that imports it, who sent it and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub client_id: String,
    pub submission_id: String,
    pub job_id: String,
    pub submitter_system: Option<String>,
    pub submitter_value: String,
    pub status: crate::fhir::bulk_submit::SubmissionStatus,
    pub fhir_base_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A submission's request naming a manifest (and maybe one it replaces), kept in order until the
/// job has fetched it into its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRequest {
    pub job_id: String,
    pub seq: i64,
    /// `None`: only a withdrawal of `replaces_url`.
    pub manifest_url: Option<String>,
    pub replaces_url: Option<String>,
    pub state: RequestState,
    /// The OperationOutcome (JSON) of a request that failed.
    pub outcome: Option<String>,
    pub added_at: i64,
    /// How its manifest and files are reached.
    pub access: SourceAccess,
}

/// How a submitted manifest and its files are reached, as the request said: headers to send on
/// every GET to their origins, and OAuth metadata to get a token from (for the manifest, and
/// for files whose manifest says `requiresAccessToken`). Kept with the request (JSON) so that a
/// restarted job reaches them the same way.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceAccess {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<crate::fhir::bulk_submit::RequestHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth_metadata_urls: Vec<String>,
    /// The `fileEncryptionKey` its manifest and files are JWE-encrypted with (base64url key
    /// bytes): a secret, never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
}

impl std::fmt::Debug for SourceAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceAccess")
            .field("headers", &self.headers)
            .field("oauth_metadata_urls", &self.oauth_metadata_urls)
            .field("encryption_key", &self.encryption_key.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl SourceAccess {
    pub fn is_plain(&self) -> bool {
        self.headers.is_empty() && self.oauth_metadata_urls.is_empty() && self.encryption_key.is_none()
    }

    /// The stored form (`None` for plain access).
    pub fn to_json(&self) -> Option<String> {
        (!self.is_plain()).then(|| serde_json::to_string(self).unwrap_or_default())
    }

    /// From the stored form; unreadable reads as plain (only this server writes it).
    pub fn from_json(raw: Option<&str>) -> Self {
        raw.and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default()
    }
}

/// Where a manifest request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Done,
    Failed,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "done" => RequestState::Done,
            "failed" => RequestState::Failed,
            _ => RequestState::Pending,
        }
    }
}

/// What asking for a manifest in a submission came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// Kept as request number `.0`.
    Added(i64),
    /// The submission named this manifest already.
    Duplicate,
    /// The submission is completed or stopped: nothing more can be asked.
    Closed,
}

/// One entry of the audit trail (`audit.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: i64,
    pub action: String,
    pub actor: String,
    pub subject: Option<String>,
    pub detail: Option<String>,
}

/// Which audit events a reader asks for: refused pings come in floods, so they can be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditClass {
    #[default]
    All,
    RefusedPings,
    AllButRefusedPings,
}

impl AuditClass {
    /// The stored `refusal` flag the class selects; `None` for every event.
    pub fn refusal(self) -> Option<bool> {
        match self {
            AuditClass::All => None,
            AuditClass::RefusedPings => Some(true),
            AuditClass::AllButRefusedPings => Some(false),
        }
    }
}

/// The action of a ping refused (unauthenticated callers can cause as many as they like).
pub const PING_REFUSED: &str = "ping refused";

impl AuditEvent {
    /// Refused pings are kept apart, so their number never pushes other events out.
    pub fn is_refusal(&self) -> bool {
        self.action == PING_REFUSED
    }
}

/// What one export of one provider (a source: its URL with `_type` and `_typeFilter`) came to
/// last, kept beyond its jobs: where an incremental pull of it may start (`since`), and how its
/// last job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    pub client_id: String,
    /// The source's key: export URL, `_type` and `_typeFilter`, as `SyncSource::key` spells it.
    pub source: String,
    pub export_url: String,
    /// `_type` values, sorted and comma-joined.
    pub types: Option<String>,
    pub type_filters: Option<String>,
    /// The `transactionTime` of its last export that completed with every file imported.
    pub since: Option<String>,
    pub last_success_at: Option<i64>,
    pub last_job_id: String,
    /// `completed`, `completed-with-errors` or `failed`.
    pub last_result: String,
    pub last_at: i64,
    pub files: i64,
    pub failed_files: i64,
    pub resources: i64,
}

/// One export of a provider, as a sync state is keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSource {
    pub export_url: String,
    pub types: Option<String>,
    pub type_filters: Option<String>,
}

impl SyncSource {
    /// The source of a job's export: `_type` values sorted (their order asks for nothing
    /// different), `_typeFilter` values in the order given.
    pub fn of(export_url: &str, kickoff: &[KickoffParam]) -> Self {
        let values =
            |name: &'static str| kickoff.iter().filter(move |p| p.name == name).map(|p| p.value.trim());
        // A `_type` list is a set; a `_typeFilter` is a query whose commas are its own.
        let mut types: Vec<String> = values("_type")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        types.sort();
        types.dedup();
        let filters: Vec<String> =
            values("_typeFilter").filter(|v| !v.is_empty()).map(str::to_string).collect();
        let joined = |v: Vec<String>| (!v.is_empty()).then(|| v.join(","));
        Self { export_url: export_url.to_string(), types: joined(types), type_filters: joined(filters) }
    }

    pub fn key(&self) -> String {
        format!(
            "{} _type={} _typeFilter={}",
            self.export_url,
            self.types.as_deref().unwrap_or(""),
            self.type_filters.as_deref().unwrap_or("")
        )
    }
}

/// Pulls this server starts itself for a registration: one export (URL, `_type`, `_typeFilter`),
/// every `every_secs` when scheduled (else only when asked), each from where the last whole
/// import of that export ended (`_since`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncPlan {
    pub export_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_filters: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<i64>,
}

impl SyncPlan {
    /// The kick-off parameters of its next pull.
    pub fn kickoff(&self, since: Option<&str>) -> Vec<KickoffParam> {
        let param = |name: &str, value: &str| KickoffParam { name: name.into(), value: value.into() };
        let mut out = Vec::new();
        if let Some(t) = &self.types {
            out.push(param("_type", t));
        }
        if let Some(f) = &self.type_filters {
            out.push(param("_typeFilter", f));
        }
        if let Some(at) = since {
            out.push(param("_since", at));
        }
        out
    }

    /// The source its pulls keep the state of.
    pub fn source(&self) -> SyncSource {
        SyncSource::of(&self.export_url, &self.kickoff(None))
    }
}
