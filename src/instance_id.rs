//! This process's name as a lease holder: made once per `DATA_DIR` and kept there, so a restart
//! (even after a crash) takes back the leases of the jobs it ran instead of waiting them out.
use std::{io, path::Path};

const FILE: &str = "instance-id";

/// Longest id accepted from the file.
const MAX_LEN: usize = 64;

pub fn load_or_create(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = !id.is_empty()
                && id.len() <= MAX_LEN
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if valid {
                return Ok(id.to_string());
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not hold an instance id (letters, digits, '-'; delete it to make a new one)",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = crate::auth::keys::random_hex(8);
            crate::owner_only::write_whole(&path, id.as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_id_is_made_once_and_kept() {
        let dir = tempfile::TempDir::new().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join(FILE), "not an id!").unwrap();
        assert!(load_or_create(dir.path()).is_err());
    }
}
