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

/// Write `contents` so that a crash or a full disk at any point leaves either no file or the whole
/// file: a temporary file (0600), fsynced, renamed into place, and the directory fsynced. A
/// temporary file left by a crash is overwritten the next time.
pub fn write_whole(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

fn narrow(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let current = meta.permissions().mode() & 0o7777;
    if current & 0o077 == 0 {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = meta.uid() == unsafe { libc::geteuid() };
    // A shared directory (sticky, like /tmp) is left alone: narrowing it would break its other
    // users, and what we create inside it is owner-only.
    if current & 0o1000 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{current:o}"), "a shared directory holds health data or secrets; what bulk-import creates inside it is owner-only");
        return Ok(());
    }
    // Someone else's place that others may read or write cannot be made safe from here.
    if !ours {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} (mode {current:o}) belongs to another user and others may read or write it; make it owner-only (chmod go-rwx) or choose another path", path.display()),
        ));
    }
    let narrowed = (current & 0o6000) | mode;
    std::fs::set_permissions(path, Permissions::from_mode(narrowed))?;
    tracing::warn!(path = %path.display(), was = format!("{current:o}"), now = format!("{narrowed:o}"), "narrowed the permissions of a place holding health data or secrets");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn our_wide_directory_is_narrowed_and_a_sticky_shared_one_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let wide = tmp.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        std::fs::set_permissions(&wide, Permissions::from_mode(0o755)).unwrap();
        dir(&wide).unwrap();
        assert_eq!(mode_of(&wide), 0o700);
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, Permissions::from_mode(0o1777)).unwrap();
        dir(&shared).unwrap();
        assert_eq!(mode_of(&shared), 0o1777);
        let db = tmp.path().join("db");
        std::fs::write(&db, b"x").unwrap();
        std::fs::set_permissions(&db, Permissions::from_mode(0o644)).unwrap();
        file(&db).unwrap();
        assert_eq!(mode_of(&db), 0o600);
        assert_eq!(std::fs::read(&db).unwrap(), b"x", "never truncated");
    }
}
