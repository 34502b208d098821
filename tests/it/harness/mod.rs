//! Test plumbing: fresh Postgres databases, temporary working directories and running the
//! real `wharf` binary.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The admin connection used to create and drop one database per test.
pub fn pg_admin_url() -> String {
    std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test, dropped when the value is.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        let admin = pg_admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "Postgres is not reachable at {admin} ({e}). Run the tests with scripts/test.sh, \
                 which starts a local Postgres, or point WHARF_TEST_POSTGRES_URL at one."
            )
        });
        let name = format!("wharf_t_{}", uuid::Uuid::now_v7().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&admin).expect("postgres url");
        url.set_path(&name);
        PgDb {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = pg_admin_url();
        // Drop runs inside or outside a runtime; a thread of its own works in both.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = c
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// What a finished `wharf` command printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "command failed: {self:#?}");
        self
    }

    /// Asserts a failure with exactly one line on stderr that contains every needle.
    #[track_caller]
    pub fn fails_with(&self, needles: &[&str]) -> &Self {
        assert_ne!(self.code, Some(0), "command succeeded: {self:#?}");
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "stderr is not one line: {self:#?}"
        );
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}: {self:#?}");
        }
        self
    }
}

/// A working directory with an environment for running the `wharf` binary in it.
pub struct Wharf {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Wharf {
    /// The embedded default: no configuration at all, in an empty directory.
    pub fn embedded() -> Wharf {
        Wharf {
            dir: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
        }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Wharf {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args).current_dir(self.dir.path());
        // The developer's own WHARF_* settings must not leak into tests.
        for (k, _) in std::env::vars() {
            if k.starts_with("WHARF_") && k != "WHARF_TEST_POSTGRES_URL" && k != "WHARF_TEST_BIN" {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(args, None)
    }

    /// `wharf user dir add USER VPATH LOCATION [MORE...]`
    pub fn dir_add(&self, user: &str, vpath: &str, location: &str, more: &[&str]) -> Output {
        let mut args = vec!["user", "dir", "add", user, vpath, location];
        args.extend_from_slice(more);
        self.run(&args)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wharf");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        drop(pipe);
        let out = child.wait_with_output().expect("wait wharf");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The `wharf` binary the tests drive: this build's, or another one's given in
/// `WHARF_TEST_BIN` (to show that a test fails against an older build).
pub fn bin() -> String {
    std::env::var("WHARF_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wharf").to_string())
}

/// Generates an OpenSSH key pair with `ssh-keygen` and returns the public key path.
pub fn ssh_keygen(dir: &Path, name: &str, kind: &str, bits: Option<u32>) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
        .arg(&path);
    if let Some(b) = bits {
        cmd.args(["-b", &b.to_string()]);
    }
    let out = cmd
        .output()
        .expect("ssh-keygen (package openssh-client) must be installed");
    assert!(out.status.success(), "ssh-keygen {kind}: {out:?}");
    path.with_extension("pub")
}

/// The SHA256 fingerprint exactly as `ssh-keygen -lf` prints it.
pub fn ssh_fingerprint(pubkey: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pubkey)
        .output()
        .expect("ssh-keygen -lf");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint field")
        .to_string()
}

/// Reads and discards until the peer closes; true when it did within `within`.
pub async fn closed_within<R: AsyncRead + Unpin>(r: &mut R, within: Duration) -> bool {
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

pub mod faults;
mod gateway;
pub mod raw;
mod s3;
mod server;
mod webhook;
pub use gateway::{random_bytes, Gateway, PW};
pub use s3::S3Env;
pub use server::{
    raw_sftp_channel, raw_sftp_initialized, sftp, sftp_command, shared_host_keys, spawn_acme_sftp,
    Auth, Server, SftpRun, TrustAll,
};
pub use webhook::{Received, Receiver};

/// Runs `f` on each database wharf keeps its state in, each fresh: Postgres, then SQLite.
pub async fn each_database(f: impl Fn(wharf::db::Db) -> futures::future::BoxFuture<'static, ()>) {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    for url in [
        pg.url.clone(),
        format!("sqlite://{}", dir.path().join("w.db").display()),
    ] {
        let cfg = wharf::config::DatabaseConfig {
            url: secrecy::SecretString::from(url),
            ..wharf::config::DatabaseConfig::default()
        };
        f(wharf::db::Db::open(&cfg).await.expect("open database")).await;
    }
}
