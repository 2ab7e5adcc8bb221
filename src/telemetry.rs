//! Tracing set-up: `LOG_FORMAT=text` (the default; colours only on a terminal) or `json` (one
//! object per line, for log collectors). Secrets never reach a field: they live in `SecretString`.
use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// Default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "bulk_import=info,tower_http=info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` as set; `Err` names a value that is neither.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("LOG_FORMAT").ok().as_deref().map(str::trim) {
            None | Some("") | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(other.to_string()),
        }
    }
}

/// Install the global subscriber once; later calls are no-ops (tests call it per app).
pub fn init_tracing() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let format = LogFormat::from_env();
    let _ = match format {
        Ok(LogFormat::Json) => fmt().json().with_env_filter(filter()).with_current_span(true).try_init(),
        _ => {
            // Escape codes only where a person reads them, never in a file or a journal.
            let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            fmt().with_env_filter(filter()).with_target(false).with_ansi(ansi).try_init()
        }
    };
    if let Err(value) = format {
        tracing::warn!(%value, "LOG_FORMAT must be text or json; writing text");
    }
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
