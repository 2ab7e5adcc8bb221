//! Tracing set-up. Secrets never reach a field: they live in `SecretString`.
use tracing_subscriber::{fmt, EnvFilter};

/// Default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "bulk_import=info,tower_http=info";

/// Install the global subscriber once; later calls are no-ops (tests call it per app).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = fmt().with_env_filter(filter).with_target(false).try_init();
}

/// Characters of a job id shown in logs. A job id is a capability (whoever has it may read and
/// delete the job), so INFO logs carry only this prefix: enough to tell jobs apart and to match
/// the dashboard, far too little to guess the rest. The full id is logged at DEBUG.
pub const SHOWN_ID_CHARS: usize = 8;

/// A job id as INFO logs show it.
pub fn shown_id(id: &str) -> String {
    let prefix: String = id.chars().take(SHOWN_ID_CHARS).collect();
    format!("{prefix}…")
}
