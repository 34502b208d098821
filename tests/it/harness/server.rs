//! `wharf serve` as a child process on port 0, and clients to drive it: OpenSSH `sftp` in
//! batch mode, and a russh client for what no stock client can send.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::Wharf;

/// Host keys generated once per test run: RSA-3072 generation is too slow to repeat.
pub fn shared_host_keys() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        wharf::sftp::hostkeys::load_or_generate(d.path()).expect("host keys");
        d
    })
    .path()
}

/// A running `wharf serve`, stopped (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: Option<SocketAddr>,
    /// FTPS (explicit TLS), when configured.
    pub ftps_addr: Option<SocketAddr>,
    /// FTPS with implicit TLS, when `ftps.implicit_listen` is set.
    pub ftps_implicit_addr: Option<SocketAddr>,
    /// The admin API, when `admin.enabled`.
    pub admin_addr: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// Started through a wrapper (`faketime`) in a process group of its own: the wrapper
    /// forks wharf and waits, so killing the wrapper alone would leave wharf running.
    group: bool,
}

impl Server {
    /// Starts `wharf serve` in `w`'s directory with `w`'s environment, cheap argon2 costs,
    /// the shared host keys (unless the test sets its own) and port 0.
    pub fn start(w: &Wharf) -> Server {
        Server::start_with(w, &[], &[])
    }

    /// `start`, with the binary run through `wrap` (a command and its arguments, such as
    /// `faketime -f -40s`) and `env` added to `w`'s environment.
    pub fn start_with(w: &Wharf, wrap: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = w.command(&["serve"]);
        if let Some((program, args)) = wrap.split_first() {
            let inner = cmd;
            cmd = Command::new(program);
            cmd.args(args)
                .arg(inner.get_program())
                .args(inner.get_args())
                .current_dir(w.path());
            for (k, v) in inner.get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("WHARF_SFTP__LISTEN", "127.0.0.1:0")
            .env("WHARF_SECURITY__ARGON2_MEMORY_KIB", "1024")
            .env("WHARF_SECURITY__ARGON2_ITERATIONS", "1")
            .env("WHARF_METRICS__LISTEN", "127.0.0.1:0");
        if !w.env.iter().any(|(k, _)| k == "WHARF_SFTP__HOST_KEY_DIR") {
            cmd.env("WHARF_SFTP__HOST_KEY_DIR", shared_host_keys());
        }
        if !w.env.iter().any(|(k, _)| k == "WHARF_LOG__FORMAT") {
            cmd.env("WHARF_LOG__FORMAT", "json");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let group = !wrap.is_empty();
        if group {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().expect("spawn wharf serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = std::collections::HashMap::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `{"message":"listening","listener":"sftp","addr":…}` in JSON mode,
                // `sftp listening on ADDR` otherwise.
                let (what, addr) = match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => (
                        v["listener"].as_str().unwrap_or_default().to_string(),
                        v["addr"].as_str().unwrap_or_default().to_string(),
                    ),
                    Err(_) => match line.split_once(" listening on ") {
                        Some((w, a)) => (w.to_string(), a.trim().to_string()),
                        None => continue,
                    },
                };
                // sftp comes last.
                if what == "sftp" {
                    let _ = tx.send((addr, std::mem::take(&mut seen)));
                } else if let Ok(a) = addr.parse::<SocketAddr>() {
                    seen.insert(what, a);
                }
            }
        });
        let (addr, others) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((a, others)) => (a.parse().expect("listen address"), others),
            Err(_) => {
                if group {
                    kill_group(child.id());
                }
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!("wharf serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            metrics_addr: others.get("metrics").copied(),
            ftps_addr: others.get("ftps").copied(),
            ftps_implicit_addr: others.get("ftps-implicit").copied(),
            admin_addr: others.get("admin").copied(),
            log,
            group,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything the server logged so far (JSON lines).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the server logs `needle` within `within`. Its stderr is read by another
    /// thread, so a line may land a moment after what the client saw.
    pub async fn logs_within(&self, needle: &str, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// GET on the operations endpoint: status and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics_addr.expect("metrics endpoint enabled");
        let r = reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Waits for the process to exit by itself (a crash point, say).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// SIGKILL to every process of the group `leader` leads.
fn kill_group(leader: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{leader}")])
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.group {
            kill_group(self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub enum Auth {
    Key(PathBuf),
    Password(String),
}

#[derive(Debug)]
pub struct SftpRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl SftpRun {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "sftp failed: {self:#?}");
        self
    }
}

/// An `sftp` command line (OpenSSH, batch mode) for `user` at the server, run in `cwd`.
pub fn sftp_command(port: u16, user: &str, auth: &Auth, cwd: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("sftp");
    cmd.current_dir(cwd);
    cmd.args([
        "-P",
        &port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "ServerAliveInterval=0",
    ]);
    match auth {
        Auth::Key(path) => {
            cmd.args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "PreferredAuthentications=publickey",
                "-i",
            ])
            .arg(path);
        }
        Auth::Password(pw) => {
            // `-b` turns BatchMode on, which forbids password prompts; an earlier -o wins, and
            // SSH_ASKPASS answers the prompt.
            let script = cwd.join(format!(".askpass-{}", uuid::Uuid::now_v7().simple()));
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' '{}'\n",
                    pw.replace('\'', "'\\''")
                ),
            )
            .expect("askpass");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
            }
            cmd.args([
                "-o",
                "BatchMode=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "NumberOfPasswordPrompts=1",
            ])
            .env("SSH_ASKPASS", &script)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
        }
    }
    cmd.args(extra);
    cmd.args(["-b", "-", &format!("{user}@127.0.0.1")]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a batch of sftp commands; `-` prefixes (ignore errors) are up to the caller.
pub fn sftp(port: u16, user: &str, auth: &Auth, cwd: &Path, batch: &str) -> SftpRun {
    let mut child = sftp_command(port, user, auth, cwd, &[])
        .spawn()
        .expect("sftp (package openssh-client) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("sftp");
    SftpRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct TrustAll;

impl russh::client::Handler for TrustAll {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// An SSH connection (keep it alive) and its sftp channel.
pub type RawSftp = (
    russh::client::Handle<TrustAll>,
    russh::ChannelStream<russh::client::Msg>,
);

/// A logged-in SSH connection with the sftp subsystem started on one channel, for sending
/// what stock clients never would.
pub async fn raw_sftp_channel(addr: SocketAddr, user: &str, password: &str) -> RawSftp {
    let config = Arc::new(russh::client::Config::default());
    let mut handle = russh::client::connect(config, addr, TrustAll)
        .await
        .expect("ssh connect");
    let auth = handle
        .authenticate_password(user, password)
        .await
        .expect("authenticate");
    assert!(auth.success(), "password login failed");
    let channel = handle
        .channel_open_session()
        .await
        .expect("session channel");
    channel
        .request_subsystem(true, "sftp")
        .await
        .expect("sftp subsystem");
    (handle, channel.into_stream())
}

/// `raw_sftp_channel` past the INIT/VERSION exchange, ready for hand-made request packets.
pub async fn raw_sftp_initialized(addr: SocketAddr, user: &str, password: &str) -> RawSftp {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (handle, mut ch) = raw_sftp_channel(addr, user, password).await;
    ch.write_all(&[0, 0, 0, 5, 1, 0, 0, 0, 3]).await.unwrap();
    let mut hdr = [0u8; 5];
    ch.read_exact(&mut hdr).await.unwrap();
    assert_eq!(hdr[4], 2, "expected SSH_FXP_VERSION");
    let mut rest = vec![0u8; u32::from_be_bytes(hdr[..4].try_into().unwrap()) as usize - 1];
    ch.read_exact(&mut rest).await.unwrap();
    (handle, ch)
}

/// `sftp` as `acme` (password) at the server, in `cwd`, running `batch` (its standard input,
/// closed after it): started, not waited for.
pub fn spawn_acme_sftp(
    port: u16,
    cwd: &Path,
    extra: &[&str],
    batch: impl AsRef<[u8]>,
) -> std::process::Child {
    use std::io::Write as _;
    let mut child = sftp_command(port, "acme", &Auth::Password(super::PW.into()), cwd, extra)
        .spawn()
        .expect("sftp");
    child
        .stdin
        .take()
        .expect("sftp's standard input")
        .write_all(batch.as_ref())
        .expect("write sftp's batch");
    child
}
