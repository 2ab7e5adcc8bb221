//! The pull: run each import job (kick-off or manifest, poll, download, validate, store), track and
//! cancel jobs, and reap old ones.
pub mod byte_range;
pub mod checkpoint;
pub mod context;
pub mod disk_room;
pub mod download;
pub mod download_slots;
pub mod engine;
pub mod error;
pub mod export;
pub mod file_bounds;
pub mod file_help;
pub mod gzip;
pub mod json_scan;
pub mod jwe;
pub mod lease_timing;
pub mod ndjson;
pub mod notice;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod provider_client;
pub mod provider_report;
pub mod pull;
pub mod reaper;
pub mod recorder;
pub mod request_budget;
pub mod resume;
pub mod retry;
pub mod runner;
pub mod source_clients;
pub mod spool;
pub mod submit;
pub mod sync_record;
pub mod takeover;

pub use error::JobError;
