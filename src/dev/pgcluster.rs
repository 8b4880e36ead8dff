//! A private PostgreSQL cluster started from the installed `initdb`/`pg_ctl`, for
//! `custodian dev`, the test harness and the benchmark. PostgreSQL refuses to run as
//! root, so when we are root the server runs as the `postgres` system user.

use anyhow::{Context, bail};
use diesel::prelude::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LocalCluster {
    root: PathBuf,
    bindir: PathBuf,
    /// TCP port on 127.0.0.1, or `None` to listen on the socket only.
    tcp_port: Option<u16>,
    fsync: bool,
}

/// True when this process runs as root.
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Finds the directory holding `pg_ctl`: on PATH, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pg_ctl").is_file() && dir.join("initdb").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).context(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql package or set DATABASE_URL",
    )
}

/// Where a private cluster meant for `preferred` can live. Usually `preferred` itself;
/// but when we are root the server runs as the `postgres` user, which cannot reach a
/// folder under a directory it may not traverse (root's home folder, a mode-0700
/// temporary folder — common in containers). Then the cluster gets a folder of its own
/// under `/var/tmp`, named after `preferred` so the same dev folder finds it again.
/// Returns the folder and whether it was moved.
pub fn reachable_root(preferred: &Path) -> anyhow::Result<(PathBuf, bool)> {
    std::fs::create_dir_all(preferred)
        .with_context(|| format!("cannot create {}", preferred.display()))?;
    let preferred = preferred
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", preferred.display()))?;
    let parent = preferred.parent().unwrap_or(Path::new("/"));
    if !running_as_root() || postgres_can_traverse(parent)? {
        return Ok((preferred, false));
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(preferred.as_os_str().as_encoded_bytes());
    let name = format!("custodian-dev-{}", &hex::encode(digest)[..16]);
    Ok((Path::new("/var/tmp").join(name), true))
}

/// Whether the `postgres` user can reach `dir` (every ancestor searchable).
fn postgres_can_traverse(dir: &Path) -> anyhow::Result<bool> {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .context("cannot run runuser (util-linux) to check the postgres user's access")?;
    Ok(status.success())
}

impl LocalCluster {
    pub fn new(root: &Path, tcp_port: Option<u16>, fsync: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", root.display()))?;
        Ok(Self {
            root,
            bindir: find_bindir()?,
            tcp_port,
            fsync,
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    fn command(&self, program: &str) -> Command {
        let bin = self.bindir.join(program);
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.current_dir(&self.root);
        cmd
    }

    fn run(&self, mut cmd: Command, what: &str) -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        Ok(())
    }

    /// Creates the cluster if the data folder is empty. Returns true if it was created.
    pub fn init_if_needed(&self) -> anyhow::Result<bool> {
        if self.data_dir().join("PG_VERSION").is_file() {
            return Ok(false);
        }
        std::fs::create_dir_all(self.data_dir())?;
        std::fs::create_dir_all(self.socket_dir())?;
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.root)
                .status()
                .context("cannot run chown")?;
            if !status.success() {
                bail!("cannot give {} to the postgres user", self.root.display());
            }
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        self.run(cmd, "initdb")?;
        Ok(true)
    }

    pub fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(self.data_dir());
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    }

    pub fn start(&self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let listen = match self.tcp_port {
            Some(_) => "127.0.0.1",
            None => "",
        };
        // The cluster trusts every connection (no passwords in development), so its socket
        // is for its owner only: 0700 on the socket and on its folder. Otherwise any local
        // user would be superuser on the dev database. (Root, which runs `custodian dev`
        // when the server runs as `postgres`, passes these checks as root does.)
        self.private_socket_dir()?;
        let options = format!(
            "-c listen_addresses='{listen}' -c port={} -c unix_socket_directories='{}' \
             -c unix_socket_permissions=0700 \
             -c max_connections=300 -c fsync={} -c synchronous_commit=on",
            self.port(),
            self.socket_dir().display(),
            if self.fsync { "on" } else { "off" },
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60", "-o", &options]);
        self.run(cmd, "pg_ctl start")
            .with_context(|| format!("see {}", self.log_file().display()))
    }

    /// Creates the socket folder if needed and makes it the server user's alone (also
    /// for clusters created before the folder was private).
    fn private_socket_dir(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.socket_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .context("cannot run chown")?;
            if !status.success() {
                bail!("cannot give {} to the postgres user", dir.display());
            }
        }
        Ok(())
    }

    /// The server's Unix socket (in its private folder).
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir().join(format!(".s.PGSQL.{}", self.port()))
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w"]);
        self.run(cmd, "pg_ctl stop")
    }

    fn port(&self) -> u16 {
        self.tcp_port.unwrap_or(5432)
    }

    /// URL of `database` on this cluster, as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        match self.tcp_port {
            Some(port) => format!("postgres://postgres@127.0.0.1:{port}/{database}"),
            None => {
                let dir: String = url::form_urlencoded::byte_serialize(
                    self.socket_dir().to_string_lossy().as_bytes(),
                )
                .collect();
                format!(
                    "postgres://postgres@localhost/{database}?host={dir}&port={}",
                    self.port()
                )
            }
        }
    }

    /// Creates `database` unless it exists.
    pub fn ensure_database(&self, database: &str) -> anyhow::Result<()> {
        create_database_if_missing(&self.url("postgres"), database)
    }
}

/// Creates a database by name (letters, digits and `_` only) through an admin URL.
pub fn create_database_if_missing(admin_url: &str, database: &str) -> anyhow::Result<()> {
    if database.is_empty()
        || !database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!("invalid database name");
    }
    let mut conn = PgConnection::establish(admin_url).context("cannot connect to PostgreSQL")?;
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(database)
            .get_result(&mut conn)?;
    if !found.exists {
        diesel::sql_query(format!("CREATE DATABASE \"{database}\"")).execute(&mut conn)?;
    }
    Ok(())
}
