//! Tracing set-up. Secrets never reach a field: they live in `SecretString`.
use tracing_subscriber::{fmt, EnvFilter};

/// Default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "bulk_import=info,tower_http=info";

/// Install the global subscriber once; later calls are no-ops (tests call it per app).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = fmt().with_env_filter(filter).with_target(false).try_init();
}
