//! Owner-only places for health data and secrets, whatever the umask: directories 0700, files
//! 0600. Places made by an earlier version (or by hand) with wider modes are narrowed, and the log
//! says so.
use std::{
    fs::{DirBuilder, OpenOptions, Permissions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Create `dir` (and its parents) owner-only, or narrow it if it exists.
pub fn dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    narrow(dir, DIR_MODE)
}

/// Make sure `file` exists owner-only (created empty if missing, never truncated).
pub fn file(file: &Path) -> io::Result<()> {
    OpenOptions::new().append(true).create(true).mode(FILE_MODE).open(file)?;
    narrow(file, FILE_MODE)
}

fn narrow(path: &Path, mode: u32) -> io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(mode))?;
        tracing::warn!(path = %path.display(), was = format!("{current:o}"), now = format!("{mode:o}"), "narrowed the permissions of a place holding health data or secrets");
    }
    Ok(())
}
