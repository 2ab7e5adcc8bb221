//! Configuration: every variable of the reference consumer plus our bounds, read from the
//! environment (and `.env`), with defaults as named constants and one message per bad value.
use std::{path::PathBuf, time::Duration};

use secrecy::SecretString;
use url::Url;

use crate::{
    address_guard::{AddressClass, Allowed, Overrides},
    destination::{resource_store::StoreUrl, s3::S3Config, DestinationKind},
    http_server::ServerLimits,
};

pub const DEFAULT_PORT: u16 = 3001;
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_JOBS_PATH: &str = "jobs";
pub const DEFAULT_DATA_DIR: &str = "data";
/// Bytes of randomness in a job id: 16 bytes = 128 bits, the floor for an id that is a capability.
pub const DEFAULT_JOBS_ID_LENGTH: usize = 16;
pub const MIN_JOBS_ID_LENGTH: usize = 16;
pub const MAX_JOBS_ID_LENGTH: usize = 64;
/// Minutes a finished job (and its files) is kept.
pub const DEFAULT_JOBS_MAX_AGE_MINUTES: f64 = 1440.0;
pub const DEFAULT_REAPER_INTERVAL_SECS: f64 = 60.0;
/// Seconds a job's lease lasts without a heartbeat (renewed every third of it): how long a
/// crashed replica's jobs wait before another takes them over.
pub const DEFAULT_LEASE_SECS: u64 = 30;
/// Bytes between a file's checkpoints on tmp-fs and dev-null (S3 keeps one per part): at most
/// this much is fetched again when another process (or a restart) continues a file.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// `$bulk-submit` requests per client per minute: far more than a provider submitting manifests
/// as its exports finish sends, far fewer than a runaway loop does.
pub const DEFAULT_SUBMIT_REQUESTS_PER_MINUTE: u32 = 120;
/// Manifest and link-page requests of pushed submissions per provider origin in a minute: a
/// provider pushing many manifests expects them read promptly, yet not all at once.
pub const DEFAULT_SUBMIT_MANIFESTS_PER_MINUTE: u32 = 600;
/// Key pairs one address may have `GET /generator` make in a minute (a person needs one or two).
pub const DEFAULT_GENERATOR_PER_MINUTE: u32 = 10;
/// Seconds before a failed job notice is sent again (then 2×, 4×, 8×: five attempts).
pub const DEFAULT_NOTIFY_FIRST_RETRY_SECS: f64 = 1.0;
/// Seconds between looks for due sync pulls (a pull starts at most this late).
pub const DEFAULT_SYNC_CHECK_INTERVAL_SECS: f64 = 30.0;
/// `outcome` entries (one per submitted manifest) on one page of a Bulk Submit status manifest.
pub const DEFAULT_SUBMIT_STATUS_PAGE_SIZE: usize = 500;
/// The shortest lease: the database's clock counts whole seconds, and three heartbeats must fit.
pub const MIN_LEASE_SECS: u64 = 3;
/// Time past a lapsed lease for another replica to claim the job (a heartbeat period, the
/// database clock's rounding, the just-started grace).
const TAKEOVER_MARGIN: Duration = Duration::from_secs(5);
pub const DEFAULT_JSON_CONTENT_TYPES: &str = "application/json,application/fhir+json,application/json+fhir";
/// Minutes an access token we issue stays valid.
pub const DEFAULT_ACCESS_TOKEN_EXPIRE_MINUTES: f64 = 5.0;
/// 10 MiB: above bulk-data-client's 10,000,000 (raised from 1 MB after real exports broke it) and
/// Google's 10 MB per-resource cap, small enough that a few parallel downloads stay in bounded memory.
pub const DEFAULT_MAX_LINE_BYTES: usize = 10 * 1024 * 1024;
/// Files keep the names the provider gave them (the last segment of each file URL).
pub const DEFAULT_DOWNLOAD_FILE_NAME: &str = "{originalName}";
pub const DEFAULT_PROVIDER_SCOPE: &str = "system/*.read";
pub const DEFAULT_PARALLEL_DOWNLOADS: usize = 4;
pub const DEFAULT_MAX_CONCURRENT_JOBS: usize = 16;
/// A quarter of all job slots: one provider's slow exports cannot starve the others.
pub const DEFAULT_MAX_JOBS_PER_PROVIDER: usize = 4;
/// Downloads across all jobs: enough to fill the cores and the network, few enough that memory
/// (a carried line and buffers per download) stays bounded when many jobs run.
pub const DEFAULT_MAX_TOTAL_DOWNLOADS: usize = 16;
/// Unset: three quarters of `MAX_TOTAL_DOWNLOADS` (12 of 16), so another provider always has room.
pub fn default_max_downloads_per_provider(total: usize) -> usize {
    (total * 3 / 4).max(1)
}
/// Largest export manifest we read (one page).
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_MAX_MANIFEST_PAGES: usize = 1000;
pub const DEFAULT_MAX_FILES_PER_JOB: usize = 50_000;
/// 100 GiB: far above real export files (providers split at a few GB), low enough to stop a
/// gzip bomb before it fills a disk.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024 * 1024;
/// 1 TiB: the decoded bytes of one job's files together.
pub const DEFAULT_MAX_JOB_BYTES: u64 = 1024 * 1024 * 1024 * 1024;
/// Percent of the free space on the disks a job writes to (when it begins) the job may take, so
/// one endless or oversized export cannot fill them (`jobs::disk_room`); 0 turns it off.
pub const DEFAULT_JOB_DISK_SHARE: u32 = 50;
/// Bytes kept free on those disks while jobs grow (for the job database and everything else).
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 256 * 1024 * 1024;
/// Real NDJSON compresses 5–20 : 1 (the reference server: 17 : 1); 200 : 1 is a bomb.
pub const DEFAULT_MAX_GZIP_RATIO: u64 = 200;
/// Blank lines are legal but carry nothing; a few are normal (a trailing one), thousands are not.
pub const DEFAULT_MAX_BLANK_LINES: u64 = 1000;
/// 1 KiB/s over a minute: far below any real transfer, far above a drip.
pub const DEFAULT_MIN_TRANSFER_RATE: u64 = 1024;
pub const DEFAULT_MIN_TRANSFER_RATE_WINDOW_SECS: f64 = 60.0;
/// Largest request body on `/$import` and `/auth/*`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest wait we honour from a provider's `Retry-After` (Cerner has sent hours).
pub const DEFAULT_MAX_RETRY_AFTER_SECS: f64 = 120.0;
/// First wait between status polls when the provider names none; it doubles up to the cap.
pub const DEFAULT_POLL_INTERVAL_SECS: f64 = 1.0;
/// Longest wait between two status polls of a running export that we choose ourselves (the
/// provider's `Retry-After` may ask for longer): the spec asks for exponential backoff, and the
/// SMART reference server's `Retry-After: 1` would otherwise have us poll 60 times a minute.
pub const DEFAULT_MAX_POLL_INTERVAL_SECS: f64 = 60.0;
/// Kick-off and status requests per minute to one provider origin, across all jobs: half the
/// SMART reference server's 60/min per-client limit, so concurrent jobs never trip it.
pub const DEFAULT_PROVIDER_REQUESTS_PER_MINUTE: u32 = 30;
/// Internal address classes files and token endpoints off the provider's origin may be on:
/// `provider` means the classes the provider itself is on.
pub const DEFAULT_ALLOW_INTERNAL_ADDRESSES: &str = "provider";
/// Attempts for one request that fails transiently (5xx, 429, connection) before giving up.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
pub const DEFAULT_EXPORT_TIMEOUT_SECS: f64 = 6.0 * 3600.0;
/// A whole job, from its ping: the export's 6 hours plus a day's downloading is generous; a
/// provider that keeps a job alive longer is holding a slot, not sending data.
pub const DEFAULT_MAX_JOB_DURATION_MINUTES: f64 = 30.0 * 60.0;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 10.0;
/// Longest silence on a response body before the download counts as stalled.
pub const DEFAULT_READ_TIMEOUT_SECS: f64 = 60.0;
/// Shortest `JWT_SECRET`/`ADMIN_TOKEN` we accept.
pub const MIN_SECRET_CHARS: usize = 32;
pub const DEFAULT_JWKS_FETCH_TIMEOUT_SECS: f64 = 10.0;
/// 15 minutes of consecutive status errors (retried with backoff) before a job fails: outages of
/// a few minutes are common, and cumulus-etl retries status 5xx for about as long.
pub const DEFAULT_STATUS_ERROR_BUDGET_SECS: f64 = 900.0;
/// Least time between two fetches of one registered JWKS URL (whatever its cache headers say).
pub const DEFAULT_JWKS_MIN_REFETCH_SECS: f64 = 5.0;
/// Failed credentials per minute from one client id or address before it is refused unchecked.
pub const DEFAULT_MAX_AUTH_FAILURES: u32 = 20;
/// Largest JWKS we fetch from a registered `jwks_uri`.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// A client's whole header block within 10 s: real clients send it at once, slowloris never does.
pub const DEFAULT_SERVER_HEADER_TIMEOUT_SECS: f64 = 10.0;
pub const DEFAULT_SERVER_IDLE_TIMEOUT_SECS: f64 = 60.0;
/// Our handlers answer in milliseconds; the longest (a cancel) waits a few seconds.
pub const DEFAULT_SERVER_REQUEST_TIMEOUT_SECS: f64 = 30.0;
/// Well under the usual 1024 open files, with room for jobs (lowered at start to fit the limit).
pub const DEFAULT_SERVER_MAX_CONNECTIONS: usize = 512;
/// Enough for a provider's pings and polls and a few browser tabs; one address cannot take all.
pub const DEFAULT_SERVER_MAX_CONNECTIONS_PER_ADDRESS: usize = 128;
/// Headers of real requests are a few KiB (a bearer token included); hyper's default is ~400 KB.
pub const DEFAULT_SERVER_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Bounds on work, sizes and time; each one named, each one configurable.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_line_bytes: usize,
    pub parallel_downloads: usize,
    /// Downloads at once across all jobs.
    pub max_total_downloads: usize,
    /// Downloads at once of one provider's files, across its jobs (`jobs::download_slots`).
    pub max_downloads_per_provider: usize,
    pub max_concurrent_jobs: usize,
    /// Unfinished jobs of one provider at once.
    pub max_jobs_per_provider: usize,
    pub max_manifest_bytes: usize,
    pub max_manifest_pages: usize,
    pub max_files_per_job: usize,
    /// Largest file we accept, counted after gzip decoding (so a gzip bomb is cut off).
    pub max_file_bytes: u64,
    pub max_job_bytes: u64,
    /// `JOB_DISK_SHARE`: percent of the free local disk a job may take; 0: no such bound.
    pub job_disk_share: u32,
    /// `DISK_RESERVE_BYTES`: bytes kept free on the disks jobs write to; 0: none.
    pub disk_reserve_bytes: u64,
    /// Decoded bytes per byte on the wire a gzip body may reach (checked past the first MiBs).
    pub max_gzip_ratio: u64,
    pub max_blank_lines: u64,
    /// Bytes per second a file body must keep up over each window.
    pub min_transfer_rate: u64,
    pub min_transfer_rate_window: Duration,
    pub max_body_bytes: usize,
    pub max_retry_after: Duration,
    pub poll_interval: Duration,
    pub max_poll_interval: Duration,
    pub provider_requests_per_minute: u32,
    /// `PROVIDER_REQUEST_BURST`: of those, how many may go at once (0: half of them).
    pub provider_request_burst: u32,
    /// `SUBMIT_REQUESTS_PER_MINUTE`: `$bulk-submit` requests one client may send in a minute.
    pub submit_requests_per_minute: u32,
    /// `SUBMIT_MANIFESTS_PER_MINUTE`: manifest requests of pushed submissions per origin a minute.
    pub submit_manifests_per_minute: u32,
    /// `GENERATOR_PER_MINUTE`: key pairs one address may have `GET /generator` make in a minute.
    pub generator_per_minute: u32,
    /// `SUBMIT_STATUS_PAGE_SIZE`: manifests per page of a status manifest (more go on `link` next).
    pub submit_status_page_size: usize,
    pub max_retries: u32,
    pub export_timeout: Duration,
    pub max_job_duration: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long a provider's export status URL may keep failing before the job fails.
    pub status_error_budget: Duration,
    /// Longest wait for a registered provider's JWKS URL.
    pub jwks_fetch_timeout: Duration,
    pub jwks_min_refetch: Duration,
    /// Failed client assertions or admin tokens per minute per client id or address.
    pub max_auth_failures: u32,
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Our externally visible base URL; when unset it is taken from each request's `Host`.
    pub public_url: Option<Url>,
    /// Serve the browser UI from this directory instead of the copy built into the binary.
    pub ui_dir: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: SQLite under `DATA_DIR` unless set.
    pub database: DatabaseUrl,
    /// `LEASE_SECONDS`: how long a job's lease lasts between heartbeats.
    pub lease: Duration,
    /// `CHECKPOINT_BYTES`: how often a file's download stores where it has got to (tmp-fs,
    /// dev-null); each costs a database write and a disk sync.
    pub checkpoint_bytes: u64,
    pub jobs_path: PathBuf,
    pub jobs_id_length: usize,
    pub jobs_max_age: Duration,
    pub reaper_interval: Duration,
    /// `SYNC_CHECK_INTERVAL`: how often registrations' sync plans are looked at for due pulls.
    pub sync_check_interval: Duration,
    pub json_content_types: Vec<String>,
    pub jwt_secret: Option<SecretString>,
    /// `NOTIFY_URL`: where a signed notice goes after each job ends (none: no notices).
    pub notify_url: Option<Url>,
    /// `NOTIFY_SECRET`: the notices' HMAC-SHA256 key (generated and kept when unset).
    pub notify_secret: Option<SecretString>,
    /// `NOTIFY_FIRST_RETRY`: the wait before a failed notice is sent again (doubling after).
    pub notify_first_retry: Duration,
    /// Bearer credential for `/auth/register` and registration management.
    pub admin_token: Option<SecretString>,
    pub access_token_lifetime: Duration,
    pub private_key: Option<SecretString>,
    pub public_key: Option<String>,
    /// Public keys we used before a rotation, still published at `/jwks` (a JWKS or a JWK array).
    pub previous_public_keys: Option<String>,
    pub destination: DestinationKind,
    pub download_file_name: String,
    pub provider_scope: String,
    pub internal_addresses: InternalAddresses,
    /// Fixed DNS answers, checked by the SSRF guard like any other (no variable: tests set it).
    pub dns_overrides: Overrides,
    pub limits: Limits,
    /// Bounds of our own listener.
    pub server: ServerLimits,
}

/// Where state lives: one SQLite file (one machine), or a PostgreSQL database several replicas share.
#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// The URL may hold a password: never logged.
    Postgres(SecretString),
}

impl DatabaseUrl {
    /// `None` for the default (SQLite under `data_dir`); `sqlite:PATH`, `postgres://…`.
    fn parse(raw: Option<&str>, data_dir: &std::path::Path) -> Result<Self, String> {
        let Some(raw) = raw else { return Ok(Self::Sqlite(data_dir.join(SQLITE_FILE))) };
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(SecretString::from(raw.to_string())));
        }
        match raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")) {
            Some(path) if !path.is_empty() => Ok(Self::Sqlite(PathBuf::from(path))),
            _ => {
                Err("must be sqlite:PATH or postgres://USER@HOST/DATABASE (unset: SQLite under DATA_DIR)"
                    .into())
            }
        }
    }

    /// Several processes may share it (and so must share leases, keys and the replay cache).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// For logs: the file, or only that it is PostgreSQL (the URL may hold a password).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("SQLite {}", path.display()),
            Self::Postgres(_) => "PostgreSQL (DATABASE_URL)".into(),
        }
    }
}

const SQLITE_FILE: &str = "bulk-import.sqlite";
/// The resource store's own SQLite file under `DATA_DIR`, when it has no `RESOURCE_STORE_URL`.
const RESOURCE_STORE_FILE: &str = "resources.sqlite";

/// `ALLOW_INTERNAL_ADDRESSES`: which internal address classes a URL off the provider's own
/// origins may reach (file hosts, redirects, a discovered token endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalAddresses {
    /// Whatever classes the provider's own host is on (an intranet provider's file server).
    pub same_as_provider: bool,
    pub always: Allowed,
}

impl InternalAddresses {
    fn parse(raw: &str) -> Result<Self, String> {
        let mut out = InternalAddresses { same_as_provider: false, always: Allowed::NONE };
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "provider" => out.same_as_provider = true,
                "none" => {}
                other => match AddressClass::parse_allowable(other) {
                    Some(c) => out.always = out.always.with(c),
                    None => {
                        return Err(format!(
                            "'{other}' is not one of provider, none, loopback, private, link-local, shared"
                        ))
                    }
                },
            }
        }
        Ok(out)
    }
}

/// Every bad variable, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

impl Config {
    /// Read from the process environment (after `.env` was loaded by the binary).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read from any lookup; tests pass a map.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader { get: &get, problems: Vec::new() };
        let max_total_downloads = r.num("MAX_TOTAL_DOWNLOADS", DEFAULT_MAX_TOTAL_DOWNLOADS, 1, 1024);
        let limits = Limits {
            max_line_bytes: r.num("NDJSON_MAX_LINE_LENGTH", DEFAULT_MAX_LINE_BYTES, 1, usize::MAX),
            parallel_downloads: r.num("PARALLEL_DOWNLOADS", DEFAULT_PARALLEL_DOWNLOADS, 1, 64),
            max_total_downloads,
            max_downloads_per_provider: r.num(
                "MAX_DOWNLOADS_PER_PROVIDER",
                default_max_downloads_per_provider(max_total_downloads),
                1,
                max_total_downloads,
            ),
            max_concurrent_jobs: r.num("MAX_CONCURRENT_JOBS", DEFAULT_MAX_CONCURRENT_JOBS, 1, 10_000),
            max_jobs_per_provider: r.num("MAX_JOBS_PER_PROVIDER", DEFAULT_MAX_JOBS_PER_PROVIDER, 1, 10_000),
            max_manifest_bytes: r.num("MAX_MANIFEST_BYTES", DEFAULT_MAX_MANIFEST_BYTES, 1024, usize::MAX),
            max_manifest_pages: r.num("MAX_MANIFEST_PAGES", DEFAULT_MAX_MANIFEST_PAGES, 1, 1_000_000),
            max_files_per_job: r.num("MAX_FILES_PER_JOB", DEFAULT_MAX_FILES_PER_JOB, 1, 10_000_000),
            max_file_bytes: r.num("MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES, 1, u64::MAX),
            max_job_bytes: r.num("MAX_JOB_BYTES", DEFAULT_MAX_JOB_BYTES, 1, u64::MAX),
            job_disk_share: r.num("JOB_DISK_SHARE", DEFAULT_JOB_DISK_SHARE, 0, 100),
            disk_reserve_bytes: r.num("DISK_RESERVE_BYTES", DEFAULT_DISK_RESERVE_BYTES, 0, u64::MAX),
            max_gzip_ratio: r.num("MAX_GZIP_RATIO", DEFAULT_MAX_GZIP_RATIO, 2, 1_000_000),
            max_blank_lines: r.num("MAX_BLANK_LINES", DEFAULT_MAX_BLANK_LINES, 0, u64::MAX),
            min_transfer_rate: r.num("MIN_TRANSFER_RATE", DEFAULT_MIN_TRANSFER_RATE, 0, u64::MAX),
            min_transfer_rate_window: r
                .secs("MIN_TRANSFER_RATE_WINDOW", DEFAULT_MIN_TRANSFER_RATE_WINDOW_SECS),
            max_body_bytes: r.num("MAX_REQUEST_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, usize::MAX),
            max_retry_after: r.secs("MAX_RETRY_AFTER", DEFAULT_MAX_RETRY_AFTER_SECS),
            poll_interval: r.secs("POLL_INTERVAL", DEFAULT_POLL_INTERVAL_SECS),
            max_poll_interval: r.secs("MAX_POLL_INTERVAL", DEFAULT_MAX_POLL_INTERVAL_SECS),
            submit_requests_per_minute: r.num(
                "SUBMIT_REQUESTS_PER_MINUTE",
                DEFAULT_SUBMIT_REQUESTS_PER_MINUTE,
                1,
                60_000,
            ),
            submit_manifests_per_minute: r.num(
                "SUBMIT_MANIFESTS_PER_MINUTE",
                DEFAULT_SUBMIT_MANIFESTS_PER_MINUTE,
                1,
                1_000_000,
            ),
            generator_per_minute: r.num("GENERATOR_PER_MINUTE", DEFAULT_GENERATOR_PER_MINUTE, 1, 10_000),
            submit_status_page_size: r.num(
                "SUBMIT_STATUS_PAGE_SIZE",
                DEFAULT_SUBMIT_STATUS_PAGE_SIZE,
                1,
                10_000,
            ),
            provider_requests_per_minute: r.num(
                "PROVIDER_REQUESTS_PER_MINUTE",
                DEFAULT_PROVIDER_REQUESTS_PER_MINUTE,
                1,
                60_000,
            ),
            provider_request_burst: r.num("PROVIDER_REQUEST_BURST", 0, 0, 1_000_000),
            max_retries: r.num("MAX_RETRIES", DEFAULT_MAX_RETRIES, 0, 100),
            export_timeout: r.secs("EXPORT_TIMEOUT", DEFAULT_EXPORT_TIMEOUT_SECS),
            max_job_duration: r.minutes("MAX_JOB_DURATION", DEFAULT_MAX_JOB_DURATION_MINUTES),
            connect_timeout: r.secs("HTTP_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_SECS),
            read_timeout: r.secs("HTTP_READ_TIMEOUT", DEFAULT_READ_TIMEOUT_SECS),
            jwks_fetch_timeout: r.secs("JWKS_FETCH_TIMEOUT", DEFAULT_JWKS_FETCH_TIMEOUT_SECS),
            jwks_min_refetch: r.secs("JWKS_MIN_REFETCH", DEFAULT_JWKS_MIN_REFETCH_SECS),
            max_auth_failures: r.num("MAX_AUTH_FAILURES", DEFAULT_MAX_AUTH_FAILURES, 1, 1_000_000),
            status_error_budget: r.secs_or_zero("STATUS_ERROR_BUDGET", DEFAULT_STATUS_ERROR_BUDGET_SECS),
        };
        let server = ServerLimits {
            header_read_timeout: r.secs("SERVER_HEADER_TIMEOUT", DEFAULT_SERVER_HEADER_TIMEOUT_SECS),
            idle_timeout: r.secs("SERVER_IDLE_TIMEOUT", DEFAULT_SERVER_IDLE_TIMEOUT_SECS),
            request_timeout: r.secs("SERVER_REQUEST_TIMEOUT", DEFAULT_SERVER_REQUEST_TIMEOUT_SECS),
            max_connections: r.num("SERVER_MAX_CONNECTIONS", DEFAULT_SERVER_MAX_CONNECTIONS, 1, 1_000_000),
            max_connections_per_address: r.num(
                "SERVER_MAX_CONNECTIONS_PER_ADDRESS",
                DEFAULT_SERVER_MAX_CONNECTIONS_PER_ADDRESS,
                0,
                1_000_000,
            ),
            max_header_bytes: r.num(
                "SERVER_MAX_HEADER_BYTES",
                DEFAULT_SERVER_MAX_HEADER_BYTES,
                8192,
                16 << 20,
            ),
        };
        let notify_url = r.opt("NOTIFY_URL").and_then(|raw| match Url::parse(&raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                r.problems.push(format!("NOTIFY_URL: '{raw}' is not an absolute http(s) URL"));
                None
            }
        });
        let public_url = r.opt("PUBLIC_URL").and_then(|raw| match Url::parse(&raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                r.problems.push(format!("PUBLIC_URL: '{raw}' is not an absolute http(s) URL"));
                None
            }
        });
        let json_content_types: Vec<String> = r
            .string("JSON_CONTENT_TYPES", DEFAULT_JSON_CONTENT_TYPES)
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        if json_content_types.is_empty() {
            r.problems.push("JSON_CONTENT_TYPES: must list at least one media type".into());
        }
        let internal_addresses =
            InternalAddresses::parse(&r.string("ALLOW_INTERNAL_ADDRESSES", DEFAULT_ALLOW_INTERNAL_ADDRESSES))
                .unwrap_or_else(|e| {
                    r.problems.push(format!("ALLOW_INTERNAL_ADDRESSES: {e}"));
                    InternalAddresses { same_as_provider: true, always: Allowed::NONE }
                });
        let download_file_name = r.string("DOWNLOAD_FILE_NAME", DEFAULT_DOWNLOAD_FILE_NAME);
        if let Err(e) = crate::destination::file_name::FileNameTemplate::parse(&download_file_name) {
            r.problems.push(format!("DOWNLOAD_FILE_NAME: {e}"));
        }
        let data_dir = PathBuf::from(r.string("DATA_DIR", DEFAULT_DATA_DIR));
        let database = DatabaseUrl::parse(r.opt("DATABASE_URL").as_deref(), &data_dir).unwrap_or_else(|e| {
            r.problems.push(format!("DATABASE_URL: {e}"));
            DatabaseUrl::Sqlite(data_dir.join(SQLITE_FILE))
        });
        let destination = destination_kind(&mut r, &database, &data_dir);
        let config = Config {
            host: r.string("HOST", DEFAULT_HOST),
            port: r.num("PORT", DEFAULT_PORT, 0, u16::MAX),
            public_url,
            ui_dir: r.opt("UI_DIR").map(PathBuf::from),
            data_dir,
            database,
            lease: Duration::from_secs(r.num("LEASE_SECONDS", DEFAULT_LEASE_SECS, MIN_LEASE_SECS, 3600)),
            checkpoint_bytes: r.num("CHECKPOINT_BYTES", DEFAULT_CHECKPOINT_BYTES, 1024 * 1024, u64::MAX),
            jobs_path: PathBuf::from(r.string("JOBS_PATH", DEFAULT_JOBS_PATH)),
            jobs_id_length: r.num(
                "JOBS_ID_LENGTH",
                DEFAULT_JOBS_ID_LENGTH,
                MIN_JOBS_ID_LENGTH,
                MAX_JOBS_ID_LENGTH,
            ),
            jobs_max_age: r.minutes("JOBS_MAX_AGE", DEFAULT_JOBS_MAX_AGE_MINUTES),
            reaper_interval: r.secs("REAPER_INTERVAL", DEFAULT_REAPER_INTERVAL_SECS),
            sync_check_interval: r.secs("SYNC_CHECK_INTERVAL", DEFAULT_SYNC_CHECK_INTERVAL_SECS),
            json_content_types,
            jwt_secret: r.opt("JWT_SECRET").map(SecretString::from),
            notify_url,
            notify_secret: r.opt("NOTIFY_SECRET").map(SecretString::from),
            notify_first_retry: r.secs("NOTIFY_FIRST_RETRY", DEFAULT_NOTIFY_FIRST_RETRY_SECS),
            admin_token: r.opt("ADMIN_TOKEN").map(SecretString::from),
            access_token_lifetime: r.minutes("ACCESS_TOKEN_EXPIRE_IN", DEFAULT_ACCESS_TOKEN_EXPIRE_MINUTES),
            private_key: r.opt("PRIVATE_KEY").map(SecretString::from),
            public_key: r.opt("PUBLIC_KEY"),
            previous_public_keys: r.opt("PREVIOUS_PUBLIC_KEYS"),
            destination,
            download_file_name,
            provider_scope: r.string("PROVIDER_SCOPE", DEFAULT_PROVIDER_SCOPE),
            internal_addresses,
            dns_overrides: Overrides::default(),
            limits,
            server,
        };
        // A crashed replica's job is taken over once its lease lapses; the reaper must not remove
        // it as silent first (after twice JOBS_MAX_AGE).
        if 2 * config.jobs_max_age <= config.lease + TAKEOVER_MARGIN {
            r.problems.push(format!(
                "JOBS_MAX_AGE: twice it must exceed LEASE_SECONDS ({} s) by more than {} s, or jobs of a crashed replica are removed before another takes them over",
                config.lease.as_secs(),
                TAKEOVER_MARGIN.as_secs()
            ));
        }
        let secrets = [
            ("JWT_SECRET", &config.jwt_secret),
            ("ADMIN_TOKEN", &config.admin_token),
            ("NOTIFY_SECRET", &config.notify_secret),
        ];
        for (name, secret) in secrets {
            use secrecy::ExposeSecret;
            if secret.as_ref().is_some_and(|s| s.expose_secret().len() < MIN_SECRET_CHARS) {
                r.problems.push(format!(
                    "{name}: must be at least {MIN_SECRET_CHARS} characters (or unset, to generate one)"
                ));
            }
        }
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems: r.problems })
        }
    }

    /// A configuration with every default, for tests and tools.
    pub fn defaults() -> Self {
        Self::from_lookup(|_| None).expect("the embedded defaults are valid")
    }

    /// Point SQLite state at another directory (the CLI's `--data-dir`, tests); a configured
    /// PostgreSQL stays.
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        if let DatabaseUrl::Sqlite(path) = &self.database {
            if *path == self.data_dir.join(SQLITE_FILE) {
                self.database = DatabaseUrl::Sqlite(dir.join(SQLITE_FILE));
            }
        }
        self.data_dir = dir;
    }

    /// Where encrypted files wait, unnamed, for their authentication tag (`jobs::spool`).
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }
}

/// `DESTINATION_TYPE`: one of dev-null, tmp-fs, s3, resource-store, or several of them with commas.
fn destination_kind(
    r: &mut Reader<'_>,
    database: &DatabaseUrl,
    data_dir: &std::path::Path,
) -> DestinationKind {
    let raw = r.string("DESTINATION_TYPE", "tmp-fs");
    let mut kinds = Vec::new();
    for name in raw.split(',').map(str::trim) {
        let kind = match name {
            "dev-null" => DestinationKind::DevNull,
            "tmp-fs" => DestinationKind::TmpFs,
            "s3" => DestinationKind::S3(s3_config(r)),
            "resource-store" => DestinationKind::ResourceStore(resource_store_url(r, database, data_dir)),
            other => {
                r.problems.push(format!(
                    "DESTINATION_TYPE: '{other}' is not one of dev-null, tmp-fs, s3, resource-store"
                ));
                continue;
            }
        };
        if kinds.iter().any(|k: &DestinationKind| k.name() == kind.name()) {
            r.problems.push(format!("DESTINATION_TYPE: '{name}' is named twice"));
            continue;
        }
        kinds.push(kind);
    }
    match kinds.len() {
        0 => DestinationKind::DevNull,
        1 => kinds.remove(0),
        _ => DestinationKind::Several(kinds),
    }
}

/// `RESOURCE_STORE_URL`; unset, the database replicas share (PostgreSQL), else its own SQLite
/// file under `DATA_DIR`.
fn resource_store_url(r: &mut Reader<'_>, database: &DatabaseUrl, data_dir: &std::path::Path) -> StoreUrl {
    let default = || match database {
        DatabaseUrl::Postgres(url) => StoreUrl::Postgres(url.clone()),
        DatabaseUrl::Sqlite(_) => StoreUrl::Sqlite(data_dir.join(RESOURCE_STORE_FILE)),
    };
    let Some(raw) = r.opt("RESOURCE_STORE_URL") else { return default() };
    match DatabaseUrl::parse(Some(&raw), data_dir) {
        Ok(DatabaseUrl::Postgres(url)) => StoreUrl::Postgres(url),
        Ok(DatabaseUrl::Sqlite(path)) => StoreUrl::Sqlite(path),
        Err(e) => {
            r.problems.push(format!("RESOURCE_STORE_URL: {e}"));
            default()
        }
    }
}

/// The S3 destination's settings (`DESTINATION_TYPE=s3`).
fn s3_config(r: &mut Reader<'_>) -> S3Config {
    use crate::destination::s3::{DEFAULT_PART_SIZE, MIN_PART_SIZE};
    let bucket = r.opt("AWS_S3_BUCKET_NAME").unwrap_or_else(|| {
        r.problems.push("AWS_S3_BUCKET_NAME: required when DESTINATION_TYPE is s3".into());
        String::new()
    });
    let endpoint_url = r.opt("S3_ENDPOINT_URL").or_else(|| r.opt("AWS_ENDPOINT_URL"));
    if let Some(raw) = &endpoint_url {
        if !matches!(url::Url::parse(raw), Ok(u) if matches!(u.scheme(), "http" | "https")) {
            r.problems.push(format!("S3_ENDPOINT_URL: '{raw}' is not an http(s) URL"));
        }
    }
    let force_path_style = match r.opt("S3_FORCE_PATH_STYLE").as_deref() {
        None => endpoint_url.is_some(),
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            r.problems.push(format!("S3_FORCE_PATH_STYLE: '{other}' must be true or false"));
            false
        }
    };
    let prefix = r.string("S3_PREFIX", "");
    if prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
        r.problems.push(format!("S3_PREFIX: '{prefix}' must not start with '/' or contain '..'"));
    }
    let credentials = match (r.opt("AWS_ACCESS_KEY_ID"), r.opt("AWS_SECRET_ACCESS_KEY")) {
        (Some(k), Some(s)) => Some((k, s)),
        (None, None) => None,
        _ => {
            r.problems.push("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both or neither".into());
            None
        }
    };
    S3Config {
        bucket,
        region: r.string("AWS_REGION", "us-east-1"),
        endpoint_url,
        force_path_style,
        prefix,
        part_size: r.num("S3_PART_SIZE", DEFAULT_PART_SIZE, MIN_PART_SIZE, 5 * 1024 * 1024 * 1024),
        credentials,
    }
}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn opt(&self, key: &str) -> Option<String> {
        (self.get)(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.opt(key).unwrap_or_else(|| default.to_string())
    }

    fn num<T>(&mut self, key: &str, default: T, min: T, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.opt(key) else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.problems.push(format!("{key}: '{raw}' must be a whole number from {min} to {max}"));
                default
            }
        }
    }

    fn float(&mut self, key: &str, default: f64, unit: &str, zero_ok: bool) -> f64 {
        let Some(raw) = self.opt(key) else { return default };
        match raw.parse::<f64>() {
            Ok(v) if v < 1.0e9 && (v > 0.0 || (zero_ok && v == 0.0)) => v,
            _ => {
                let kind = if zero_ok { "a non-negative" } else { "a positive" };
                self.problems.push(format!("{key}: '{raw}' must be {kind} number of {unit}"));
                default
            }
        }
    }

    /// A duration that must be above zero (a zero wait or timeout is always a mistake).
    fn secs(&mut self, key: &str, default: f64) -> Duration {
        secs(self.float(key, default, "seconds", false))
    }

    fn secs_or_zero(&mut self, key: &str, default: f64) -> Duration {
        secs(self.float(key, default, "seconds", true))
    }

    fn minutes(&mut self, key: &str, default: f64) -> Duration {
        secs(self.float(key, default, "minutes", false) * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::defaults();
        assert_eq!(c.port, 3001);
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.jobs_path, PathBuf::from("jobs"));
        assert_eq!(c.jobs_max_age, Duration::from_secs(24 * 3600), "a day: files are there the next morning");
        assert_eq!(c.limits.max_line_bytes, 10 * 1024 * 1024);
        assert_eq!(c.destination, DestinationKind::TmpFs, "received data is kept by default");
    }

    #[test]
    fn s3_settings_are_read_and_checked() {
        let c = with(&[
            ("DESTINATION_TYPE", "s3"),
            ("AWS_S3_BUCKET_NAME", "b"),
            ("S3_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ])
        .unwrap();
        let DestinationKind::S3(s3) = c.destination else { panic!("not s3") };
        assert!(s3.force_path_style, "an endpoint implies path style");
        assert_eq!(s3.credentials, Some(("k".into(), "s".into())));
        assert!(!format!("{s3:?}").contains("\"s\""), "the secret stays out of Debug");
        let err = with(&[("DESTINATION_TYPE", "s3"), ("AWS_ACCESS_KEY_ID", "k"), ("S3_PART_SIZE", "1024")])
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("AWS_S3_BUCKET_NAME") && text.contains("set both") && text.contains("S3_PART_SIZE"),
            "{text}"
        );
    }

    #[test]
    fn the_database_url_chooses_the_store_and_a_password_in_it_stays_out_of_logs() {
        let default = with(&[]).unwrap();
        assert!(
            matches!(&default.database, DatabaseUrl::Sqlite(p) if p == &PathBuf::from("data/bulk-import.sqlite"))
        );
        let moved = with(&[("DATA_DIR", "/srv/state")]).unwrap();
        assert!(
            matches!(&moved.database, DatabaseUrl::Sqlite(p) if p == &PathBuf::from("/srv/state/bulk-import.sqlite"))
        );
        let file = with(&[("DATABASE_URL", "sqlite:/tmp/other.db")]).unwrap();
        assert!(matches!(&file.database, DatabaseUrl::Sqlite(p) if p == &PathBuf::from("/tmp/other.db")));
        assert!(!file.database.is_shared());
        let pg = with(&[("DATABASE_URL", "postgres://bulk:s3cret-pw@db.internal/bulk")]).unwrap();
        assert!(pg.database.is_shared());
        assert!(!pg.database.describe().contains("s3cret-pw"));
        assert!(!format!("{pg:?}").contains("s3cret-pw"), "the URL stays out of Debug");
        let text = with(&[("DATABASE_URL", "mysql://h/db")]).unwrap_err().to_string();
        assert!(text.contains("DATABASE_URL: must be sqlite:PATH or postgres://"), "{text}");
    }

    #[test]
    fn a_lease_must_run_out_well_before_the_reaper_counts_a_job_as_silent() {
        assert_eq!(with(&[]).unwrap().lease, Duration::from_secs(30));
        let text = with(&[("LEASE_SECONDS", "2")]).unwrap_err().to_string();
        assert!(text.contains("LEASE_SECONDS: '2'"), "{text}");
        // Half a minute: twice it is 60 s, not more than 60 s + 5 s.
        let text = with(&[("LEASE_SECONDS", "60"), ("JOBS_MAX_AGE", "0.5")]).unwrap_err().to_string();
        assert!(text.contains("JOBS_MAX_AGE: twice it must exceed LEASE_SECONDS (60 s)"), "{text}");
        assert!(with(&[("LEASE_SECONDS", "3"), ("JOBS_MAX_AGE", "0.1")]).is_ok(), "12 s > 3 s + 5 s");
    }

    #[test]
    fn several_destinations_and_the_resource_store_have_their_settings() {
        let c = with(&[("DESTINATION_TYPE", "tmp-fs, resource-store"), ("DATA_DIR", "/srv/d")]).unwrap();
        let DestinationKind::Several(all) = &c.destination else { panic!("{:?}", c.destination) };
        assert_eq!(all[0], DestinationKind::TmpFs);
        // Its own SQLite file beside the server's, unless told.
        let own = StoreUrl::Sqlite(PathBuf::from("/srv/d/resources.sqlite"));
        assert_eq!(all[1], DestinationKind::ResourceStore(own));
        assert_eq!(c.destination.name(), "tmp-fs,resource-store");
        // With a shared database, the store is in it, so every replica writes to the same one.
        let pg = "postgres://u@db.example/bulk";
        let c = with(&[("DESTINATION_TYPE", "resource-store"), ("DATABASE_URL", pg)]).unwrap();
        assert_eq!(c.destination, DestinationKind::ResourceStore(StoreUrl::Postgres(pg.to_string().into())));
        let c = with(&[("DESTINATION_TYPE", "resource-store"), ("RESOURCE_STORE_URL", "sqlite:/x/r.db")])
            .unwrap();
        assert_eq!(c.destination, DestinationKind::ResourceStore(StoreUrl::Sqlite("/x/r.db".into())));
        let text = with(&[
            ("DESTINATION_TYPE", "s3,s3,tape"),
            ("AWS_S3_BUCKET_NAME", "b"),
            ("RESOURCE_STORE_URL", "mysql://x"),
        ])
        .unwrap_err()
        .to_string();
        assert!(text.contains("'s3' is named twice") && text.contains("'tape' is not one of"), "{text}");
        let text = with(&[("DESTINATION_TYPE", "resource-store"), ("RESOURCE_STORE_URL", "mysql://x")])
            .unwrap_err()
            .to_string();
        assert!(text.contains("RESOURCE_STORE_URL: must be sqlite:PATH"), "{text}");
    }

    #[test]
    fn every_bad_value_is_reported_by_name() {
        let err = with(&[
            ("PORT", "abc"),
            ("DESTINATION_TYPE", "ftp"),
            ("JOBS_ID_LENGTH", "4"),
            ("POLL_INTERVAL", "0"),
            ("JOBS_MAX_AGE", "-1"),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("PORT: 'abc'"), "{text}");
        assert!(text.contains("DESTINATION_TYPE: 'ftp'"), "{text}");
        assert!(text.contains("JOBS_ID_LENGTH: '4'"), "{text}");
        assert!(text.contains("POLL_INTERVAL: '0' must be a positive number of seconds"), "{text}");
        assert!(text.contains("JOBS_MAX_AGE: '-1'"), "{text}");
        assert_eq!(err.problems.len(), 5);
    }

    #[test]
    fn example_env_documents_every_variable_and_its_values_are_the_defaults() {
        let text = include_str!("../example.env");
        let mut active = HashMap::new();
        let mut mentioned = Vec::new();
        for line in text.lines() {
            let (commented, rest) = match line.strip_prefix('#') {
                Some(r) => (true, r.trim_start()),
                None => (false, line),
            };
            let Some((key, value)) = rest.split_once('=') else { continue };
            if key.is_empty()
                || !key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            mentioned.push(key.to_string());
            if !commented {
                active.insert(key.to_string(), value.trim().to_string());
            }
        }
        let asked = std::cell::RefCell::new(Vec::new());
        let defaults = Config::from_lookup(|k| {
            asked.borrow_mut().push(k.to_string());
            None
        })
        .unwrap();
        for key in asked.borrow().iter() {
            assert!(mentioned.contains(key), "{key} is read but not in example.env");
        }
        let from_file = Config::from_lookup(|k| active.get(k).cloned()).unwrap();
        assert_eq!(format!("{:?}", from_file.limits), format!("{:?}", defaults.limits));
        assert_eq!(format!("{:?}", from_file.server), format!("{:?}", defaults.server));
        assert_eq!(from_file.jobs_max_age, defaults.jobs_max_age);
        assert_eq!(from_file.destination, defaults.destination);
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let err = with(&[("JWT_SECRET", "short")]).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET: must be at least 32"), "{err}");
        let err = with(&[("ADMIN_TOKEN", "short")]).unwrap_err();
        assert!(err.to_string().contains("ADMIN_TOKEN: must be at least 32"), "{err}");
    }
}
