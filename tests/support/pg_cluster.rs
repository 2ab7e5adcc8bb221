//! A throw-away PostgreSQL cluster for tests and benchmarks: `initdb` and
//! `pg_ctl` in a temporary directory, on a free loopback port, as an unprivileged user when the
//! tests run as root (PostgreSQL refuses to run as root). It fails, loudly, when PostgreSQL is
//! missing: `scripts/setup.sh --tests` installs Debian's server.
use std::{
    net::TcpListener,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;

/// The user the cluster runs as when the tests run as root.
const UNPRIVILEGED: &str = "nobody";
/// Longest `pg_ctl` waits for the server to start.
const START_WAIT_SECS: &str = "30";

pub struct PgCluster {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_user: Option<&'static str>,
}

/// The newest installed server's programs (Debian keeps them under /usr/lib/postgresql/N/bin).
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "!!!!!!!! PostgreSQL's server is not installed (no /usr/lib/postgresql/N/bin/initdb): run `bash scripts/setup.sh --tests` !!!!!!!!"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

impl PgCluster {
    /// Create and start a cluster; it is stopped and removed when dropped.
    pub fn start() -> Self {
        let bin = server_bin();
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let as_user = root.then_some(UNPRIVILEGED);
        let dir = TempDir::new().expect("a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        if root {
            // The unprivileged user reaches its directory, and only that.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
            let nobody = uid_of(UNPRIVILEGED);
            std::os::unix::fs::chown(&data, Some(nobody), Some(nobody)).unwrap();
        }
        let cluster = Self { dir, bin, port: free_port(), as_user };
        cluster.run(
            "initdb",
            &["-D", &cluster.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        );
        // The socket goes in the data directory: /var/run/postgresql may not be writable.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            cluster.port,
            cluster.data()
        );
        let log = format!("{}/server.log", cluster.data());
        cluster.run(
            "pg_ctl",
            &["-D", &cluster.data(), "-l", &log, "-o", &options, "-w", "-t", START_WAIT_SECS, "start"],
        );
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A URL of the cluster's `postgres` database as its superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).current_dir("/").output().unwrap_or_else(|e| {
            panic!("!!!!!!!! cannot run {program} from {}: {e} !!!!!!!!", self.bin.display())
        });
        if !out.status.success() {
            let log = std::fs::read_to_string(Path::new(&self.data()).join("server.log")).unwrap_or_default();
            panic!(
                "!!!!!!!! {program} failed ({}): {}{}\n{log} !!!!!!!!",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: a test cluster has nothing to keep.
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).output();
    }
}

fn uid_of(user: &str) -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some(user)).then(|| fields.nth(1)?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("!!!!!!!! no user '{user}' to run PostgreSQL as !!!!!!!!"))
}
