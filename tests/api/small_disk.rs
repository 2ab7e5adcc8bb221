//! A tmpfs of a chosen size, mounted for one test, for full-disk faults. Mounting needs root (CI
//! runs as root); elsewhere the test says loudly that it skipped, and CI's run would show it.
use std::{path::PathBuf, process::Command};

use tempfile::TempDir;

pub struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    /// Mount `bytes` of tmpfs, or print why not and return None.
    pub fn mount(bytes: u64, test: &str) -> Option<Self> {
        let dir = TempDir::new().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                skip(test, &String::from_utf8_lossy(&o.stderr));
                None
            }
            Err(e) => {
                skip(test, &e.to_string());
                None
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Take every free byte with a filler file (removed with `free`).
    pub fn fill(&self) {
        let filler = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 4096];
        // Bounded by the disk's size: the write fails once it is full.
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
    }

    pub fn free(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("filler"));
    }
}

fn skip(test: &str, why: &str) {
    eprintln!("\n!!!!!!!! SKIPPED {test}: cannot mount a tmpfs here ({}); run the suite as root to include it !!!!!!!!\n", why.trim());
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Bytes free on the disk holding `path`, as `df` would say.
pub fn free_bytes(path: &std::path::Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}
