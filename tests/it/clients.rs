//! The client matrix: every client partners run, driving the real binary on S3 (garage) and on
//! local storage. Each uploads a file of an awkward size (some MiB, not a multiple of 32 KiB),
//! which must land byte for byte with its arrival event, and reads it back where it can
//! (several ranged GETs on S3). Plus what no stock client shows: keyboard-interactive's
//! rules, and the SFTP extensions wharf answers or refuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::harness::raw::*;
use crate::harness::{
    random_bytes, raw_sftp_initialized, shared_host_keys, ssh_keygen, Gateway, PW,
};

/// Over one 5 MiB part (the tests' part size), over the 4 MiB read-ahead block, and not a
/// multiple of 32 KiB: the sizes at which Go's pkg/sftp, libssh2 and paramiko once failed.
const AWKWARD: usize = (5 << 20) + 12_345;

/// Runs `body` against a gateway on S3 and one on local storage, where `acme` may also
/// download and delete.
async fn on_both_storages<F>(extra_env: &[(&str, &str)], body: F)
where
    F: AsyncFn(&Gateway),
{
    for local in [false, true] {
        let g = Gateway::start_on(local, false, extra_env).await;
        g.grant_acme_everything();
        body(&g).await;
    }
}

/// `rel` holds exactly `data` and the jsonl sink got its completed event.
async fn assert_arrived(g: &Gateway, rel: &str, data: &[u8], protocol: &str) {
    let stored = g.stored(rel).await;
    assert!(
        stored.as_deref() == Some(data),
        "{rel} on {}: stored {:?} bytes, expected {}",
        if g.local { "local" } else { "S3" },
        stored.map(|s| s.len()),
        data.len()
    );
    let ev = g
        .wait_jsonl_event("wharf.upload.completed", &format!("/{rel}"))
        .await;
    let d = &ev["data"];
    assert_eq!(d["bytes"], data.len() as u64, "{ev}");
    assert_eq!(d["sha256"], hex::encode(Sha256::digest(data)), "{ev}");
    assert_eq!(d["protocol"], protocol, "{ev}");
}

fn assert_same_file(downloaded: &Path, data: &[u8]) {
    let got = std::fs::read(downloaded)
        .unwrap_or_else(|e| panic!("{} not downloaded: {e}", downloaded.display()));
    assert!(
        got == data,
        "{} differs: {} bytes, expected {}",
        downloaded.display(),
        got.len(),
        data.len()
    );
}

/// How long one client run may take before the test fails instead of hanging (a deadlocked
/// session is one of the failures this matrix exists to catch).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

fn run(cmd: &mut Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} could not run ({e}); scripts/test.sh installs it"));
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + CLIENT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {CLIENT_DEADLINE:?}; stderr: {}",
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

#[track_caller]
fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file of `AWKWARD` random bytes in the gateway's working directory.
fn awkward_file(g: &Gateway, name: &str) -> Vec<u8> {
    let data = random_bytes(AWKWARD);
    g.write_file(name, &data);
    data
}

fn ssh_opts(key: &Path) -> Vec<String> {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([key.to_string_lossy().into_owned()])
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn openssh_sftp_and_scp() {
    on_both_storages(&[], async |g| {
        let key = ssh_keygen(g.w.path(), "partner", "ed25519", None);
        g.w.run(&["user", "key", "add", "acme", key.to_str().unwrap()])
            .ok();
        let key = key.with_extension("");
        let data = awkward_file(g, "report.bin");
        let port = g.server.port().to_string();

        // sftp: put -f (fsync@openssh.com after the data), df (statvfs@openssh.com), get.
        let run_sftp = crate::harness::sftp(
            g.server.port(),
            "acme",
            &crate::harness::Auth::Key(key.clone()),
            g.w.path(),
            "mkdir in\nput -f report.bin in/sftp.bin\ndf -h\nget in/sftp.bin sftp.back\n",
        );
        run_sftp.ok();
        assert!(
            run_sftp.stdout.contains("%Capacity"),
            "df printed nothing: {run_sftp:#?}"
        );
        assert_arrived(g, "in/sftp.bin", &data, "sftp").await;
        assert_same_file(&g.w.file("sftp.back"), &data);

        // scp (SFTP protocol since OpenSSH 9): up and down, exit status 0.
        let out = run(
            Command::new("scp")
                .current_dir(g.w.path())
                .args(ssh_opts(&key))
                .args(["-P", &port, "report.bin", "acme@127.0.0.1:in/scp.bin"]),
            "scp",
        );
        ok(&out, "scp upload");
        assert_arrived(g, "in/scp.bin", &data, "sftp").await;
        let out = run(
            Command::new("scp")
                .current_dir(g.w.path())
                .args(ssh_opts(&key))
                .args(["-P", &port, "acme@127.0.0.1:in/scp.bin", "scp.back"]),
            "scp",
        );
        ok(&out, "scp download");
        assert_same_file(&g.w.file("scp.back"), &data);

        // Legacy scp (-O, the rcp protocol over exec) is refused, visibly.
        let out = run(
            Command::new("scp")
                .current_dir(g.w.path())
                .args(ssh_opts(&key))
                .args(["-O", "-P", &port, "report.bin", "acme@127.0.0.1:legacy.bin"]),
            "scp -O",
        );
        assert!(!out.status.success(), "scp -O succeeded: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("exec request failed"), "{err}");
        assert!(g.stored("legacy.bin").await.is_none());
    })
    .await;
}

/// rclone's SFTP backend is Go's pkg/sftp, which sends concurrent writes in packets longer
/// than their data.
#[tokio::test(flavor = "multi_thread")]
async fn rclone_concurrent_writes_and_transfers() {
    on_both_storages(&[], async |g| {
        let sizes = [AWKWARD, (3 << 20) + 7, 100_000, 40_000, 32_768, 1000];
        let src = g.w.file("batch");
        std::fs::create_dir_all(&src).unwrap();
        let files: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("f{i}-{n}.bin"), random_bytes(n)))
            .collect();
        for (name, data) in &files {
            std::fs::write(src.join(name), data).unwrap();
        }
        let obscured = run(Command::new("rclone").args(["obscure", PW]), "rclone");
        ok(&obscured, "rclone obscure");
        let rclone = |args: &[&str]| {
            let mut cmd = Command::new("rclone");
            cmd.current_dir(g.w.path())
                .env("RCLONE_CONFIG", "/dev/null")
                .env("RCLONE_CONFIG_W_TYPE", "sftp")
                .env("RCLONE_CONFIG_W_HOST", "127.0.0.1")
                .env("RCLONE_CONFIG_W_PORT", g.server.port().to_string())
                .env("RCLONE_CONFIG_W_USER", "acme")
                .env(
                    "RCLONE_CONFIG_W_PASS",
                    String::from_utf8_lossy(&obscured.stdout).trim(),
                )
                .env("RCLONE_CONFIG_W_SHELL_TYPE", "none")
                .args(args);
            run(&mut cmd, "rclone")
        };
        ok(
            &rclone(&["copy", "batch", "w:in", "--transfers", "4"]),
            "rclone copy up",
        );
        for (name, data) in &files {
            assert_arrived(g, &format!("in/{name}"), data, "sftp").await;
        }
        ok(
            &rclone(&["copy", "w:in", "back", "--transfers", "4"]),
            "rclone copy down",
        );
        for (name, data) in &files {
            assert_same_file(&g.w.file("back").join(name), data);
        }
        // No temp object left behind, no partial upload logged.
        assert_eq!(g.stored_files().await.len(), files.len());
        assert!(!g.server.log().contains("PARTIAL_CLOSE"), "a write failed");
    })
    .await;
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// paramiko: put (confirmed by a stat), chmod, utime, rename, listdir, a WinSCP-style
/// `.filepart` upload with SETSTAT and rename, and a get (which asks for every block at once).
#[tokio::test(flavor = "multi_thread")]
async fn paramiko_and_a_winscp_style_upload() {
    on_both_storages(&[], async |g| {
        let data = awkward_file(g, "report.bin");
        let out = run(
            Command::new("python3")
                .current_dir(g.w.path())
                .env("WHARF_TEST_PASSWORD", PW)
                .arg(script("paramiko_transfer.py"))
                .args([
                    &g.server.port().to_string(),
                    "acme",
                    "report.bin",
                    "back.bin",
                ]),
            "python3 with paramiko",
        );
        ok(&out, "paramiko");
        let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(seen["put_size"], AWKWARD, "{seen}");
        assert_eq!(seen["stat_size"], AWKWARD, "{seen}");
        assert_eq!(
            seen["listdir"],
            serde_json::json!(["renamed.bin", "winscp.bin"]),
            "{seen}"
        );
        assert_eq!(seen["downloaded"], true, "{seen}");
        assert_same_file(&g.w.file("back.bin"), &data);
        // The WinSCP-style upload arrives once, under its final name.
        assert_arrived(g, "in/winscp.bin", &data, "sftp").await;
        assert_eq!(g.stored("in/renamed.bin").await.as_deref(), Some(&data[..]));
        let events = g.jsonl_events();
        let winscp: Vec<_> = events
            .iter()
            .filter(|e| {
                e["data"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/in/winscp.bin"))
            })
            .collect();
        assert_eq!(winscp.len(), 1, "{events:#?}");
        assert_eq!(g.stored_files().await, ["in/renamed.bin", "in/winscp.bin"]);
    })
    .await;
}

/// curl's sftp:// is libssh2, which reads in 30,000-byte requests and took a short read in
/// the middle of a file (where the 4 MiB read-ahead block ended) for an error.
#[tokio::test(flavor = "multi_thread")]
async fn curl_sftp() {
    on_both_storages(&[], async |g| {
        let data = awkward_file(g, "report.bin");
        let url = format!("sftp://127.0.0.1:{}/in/curl.bin", g.server.port());
        let login = format!("acme:{PW}");
        let curl = |args: &[&str]| {
            run(
                Command::new("curl")
                    .current_dir(g.w.path())
                    .args(["-sS", "--insecure", "--max-time", "60", "-u", &login])
                    .args(args),
                "curl",
            )
        };
        ok(
            &curl(&["--ftp-create-dirs", "-T", "report.bin", &url]),
            "curl upload",
        );
        assert_arrived(g, "in/curl.bin", &data, "sftp").await;
        ok(&curl(&["-o", "back.bin", &url]), "curl download");
        assert_same_file(&g.w.file("back.bin"), &data);
    })
    .await;
}

/// lftp over sftp:// (OpenSSH's ssh underneath, the password typed at its prompt): a folder
/// mirrored up and back down.
#[tokio::test(flavor = "multi_thread")]
async fn lftp_sftp_mirror() {
    on_both_storages(&[], async |g| {
        let src = g.w.file("outgoing");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let files = [
            ("a.csv", random_bytes(40_000)),
            ("sub/b.bin", random_bytes(AWKWARD)),
            ("c.xml", random_bytes(1234)),
        ];
        for (name, data) in &files {
            std::fs::write(src.join(name), data).unwrap();
        }
        let script = format!(
            "set sftp:auto-confirm yes; set net:max-retries 1; set net:timeout 20; \
             open -u acme,{PW} sftp://127.0.0.1:{}; mirror -R outgoing /mirrored; \
             mirror /mirrored back",
            g.server.port()
        );
        let out = run(
            Command::new("lftp")
                .current_dir(g.w.path())
                .args(["-c", &script]),
            "lftp",
        );
        ok(&out, "lftp mirror");
        for (name, data) in &files {
            assert_arrived(g, &format!("mirrored/{name}"), data, "sftp").await;
            assert_same_file(&g.w.file("back").join(name), data);
        }
    })
    .await;
}

/// `wharf hostkey list`'s fingerprints (of the keys the test servers share), for clients
/// that pin them.
fn host_fingerprints(g: &Gateway) -> Vec<String> {
    let out = run(
        g.w.command(&["hostkey", "list"])
            .env("WHARF_SFTP__HOST_KEY_DIR", shared_host_keys()),
        "wharf hostkey list",
    );
    ok(&out, "wharf hostkey list");
    let fps: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    assert_eq!(fps.len(), 3, "{out:?}");
    fps
}

/// PuTTY's psftp: the password goes in by keyboard-interactive, the host key is pinned.
#[tokio::test(flavor = "multi_thread")]
async fn putty_psftp_by_keyboard_interactive() {
    on_both_storages(&[], async |g| {
        let data = awkward_file(g, "report.bin");
        std::fs::write(
            g.w.file("psftp.batch"),
            "mkdir in\nput report.bin in/putty.bin\nget in/putty.bin back.bin\nquit\n",
        )
        .unwrap();
        let mut cmd = Command::new("psftp");
        cmd.current_dir(g.w.path())
            .args(["-batch", "-P", &g.server.port().to_string(), "-pw", PW]);
        for fp in host_fingerprints(g) {
            cmd.args(["-hostkey", &fp]);
        }
        cmd.args(["-b", "psftp.batch", "acme@127.0.0.1"]);
        ok(&run(&mut cmd, "psftp (package putty-tools)"), "psftp");
        assert_arrived(g, "in/putty.bin", &data, "sftp").await;
        assert_same_file(&g.w.file("back.bin"), &data);
        assert!(
            g.server
                .log()
                .contains("\"method\":\"keyboard-interactive\""),
            "psftp did not log in by keyboard-interactive"
        );
    })
    .await;
}

/// JSch 0.1.5x, as many banks' Java systems still run it: it knows neither ssh-ed25519 nor
/// rsa-sha2 host keys, so it needs the ECDSA one.
#[tokio::test(flavor = "multi_thread")]
async fn jsch_legacy_java() {
    let jar = std::env::var("WHARF_TEST_JSCH_JAR")
        .unwrap_or_else(|_| "/usr/share/java/jsch.jar".to_string());
    assert!(
        Path::new(&jar).exists(),
        "{jar} missing: scripts/test.sh installs Debian's libjsch-java (or set WHARF_TEST_JSCH_JAR)"
    );
    let classes = tempfile::tempdir().unwrap();
    let out = run(
        Command::new("javac")
            .args(["-d"])
            .arg(classes.path())
            .args(["-cp", &jar])
            .arg(script("JschTransfer.java")),
        "javac (a JDK)",
    );
    ok(&out, "javac");
    let cp = format!("{jar}:{}", classes.path().display());
    on_both_storages(&[], async |g| {
        let data = awkward_file(g, "report.bin");
        let out = run(
            Command::new("java")
                .current_dir(g.w.path())
                .env("WHARF_TEST_PASSWORD", PW)
                .args(["-cp", &cp, "JschTransfer", "127.0.0.1"])
                .args([
                    &g.server.port().to_string(),
                    "acme",
                    "report.bin",
                    "jsch.bin",
                ])
                .arg("back.bin"),
            "java",
        );
        ok(&out, "JSch");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("hostkey ecdsa-sha2-nistp256"), "{stdout}");
        assert!(stdout.contains(&format!("size {AWKWARD}")), "{stdout}");
        assert_arrived(g, "jsch.bin", &data, "sftp").await;
        assert_same_file(&g.w.file("back.bin"), &data);
    })
    .await;
}

/// A FileZilla-style FTPS session (Python's ftplib): explicit TLS, PROT P, MLSD, and data
/// connections that resume the control connection's TLS session.
#[tokio::test(flavor = "multi_thread")]
async fn ftplib_filezilla_style_ftps() {
    let certs = tempfile::tempdir().unwrap();
    let (crt, key) = crate::ftps::make_cert(certs.path());
    let base = 20000 + (rand::random::<u16>() % 400) * 100;
    let ports = format!("{}-{}", base, base + 99);
    let env = [
        ("WHARF_FTPS__CERT", crt.as_str()),
        ("WHARF_FTPS__KEY", key.as_str()),
        ("WHARF_FTPS__LISTEN", "127.0.0.1:0"),
        ("WHARF_FTPS__PASSIVE_PORTS", ports.as_str()),
    ];
    on_both_storages(&env, async |g| {
        let data = awkward_file(g, "report.bin");
        let port = g.server.ftps_addr.expect("ftps listening").port();
        let out = run(
            Command::new("python3")
                .current_dir(g.w.path())
                .env("WHARF_TEST_PASSWORD", PW)
                .arg(script("ftplib_transfer.py"))
                .args([&port.to_string(), "acme", "report.bin", "back.bin"]),
            "python3",
        );
        ok(&out, "ftplib");
        let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            seen["listing"]["filezilla.bin"],
            serde_json::json!({"type": "file", "size": AWKWARD.to_string()}),
            "{seen}"
        );
        // MLSD, STOR and RETR each resumed the control connection's session.
        assert_eq!(
            seen["session_reused"],
            serde_json::json!([true, true, true]),
            "{seen}"
        );
        assert_arrived(g, "inbound/filezilla.bin", &data, "ftps").await;
        assert_same_file(&g.w.file("back.bin"), &data);
    })
    .await;
}

/// keyboard-interactive asks every username the same one question and checks the answer by
/// the password rules: refusals count towards bans, and a banned address is refused.
#[tokio::test(flavor = "multi_thread")]
async fn keyboard_interactive_follows_the_password_rules() {
    use russh::client::KeyboardInteractiveAuthResponse as Kbd;
    let g = Gateway::start(false, &[("WHARF_SECURITY__BAN_AFTER_FAILURES", "3")]).await;
    let login = async |user: &str, answer: &str| -> (Vec<(String, bool)>, bool) {
        let config = Arc::new(russh::client::Config::default());
        let mut h = russh::client::connect(config, g.server.addr, crate::harness::TrustAll)
            .await
            .expect("ssh connect");
        let prompts = match h
            .authenticate_keyboard_interactive_start(user, None)
            .await
            .unwrap()
        {
            Kbd::InfoRequest { prompts, .. } => prompts
                .into_iter()
                .map(|p| (p.prompt, p.echo))
                .collect::<Vec<_>>(),
            other => panic!("no prompt for {user}: {other:?}"),
        };
        let done = h
            .authenticate_keyboard_interactive_respond(vec![answer.to_string()])
            .await
            .unwrap();
        (prompts, matches!(done, Kbd::Success))
    };
    let one_prompt = vec![("Password: ".to_string(), false)];
    assert_eq!(login("acme", PW).await, (one_prompt.clone(), true));
    // An unknown user is asked the same question, and refused like a wrong password.
    assert_eq!(login("nobody", PW).await, (one_prompt.clone(), false));
    assert_eq!(login("acme", "wrong").await, (one_prompt.clone(), false));
    assert_eq!(
        login("acme", "wrong again").await,
        (one_prompt.clone(), false)
    );
    // Three failures: the address is banned, and the right password no longer opens it.
    assert_eq!(login("acme", PW).await, (one_prompt, false));
    let bans = g.w.run(&["ban", "list"]);
    assert!(bans.ok().stdout.contains("127.0.0.1"), "{bans:?}");
    let log = g.server.log();
    assert!(log.contains("\"method\":\"keyboard-interactive\""), "{log}");
    assert!(log.contains("\"reason\":\"banned\""), "{log}");
    assert!(!log.contains(PW), "the password was logged");
}

/// statvfs and fsync are answered; hardlink and copy-data are refused with OP_UNSUPPORTED and
/// the request's own id.
#[tokio::test(flavor = "multi_thread")]
async fn sftp_extensions_are_answered_or_refused_cleanly() {
    let g = Gateway::start(false, &[]).await;
    let (_ssh, mut ch) = raw_sftp_initialized(g.server.addr, "acme", PW).await;
    let extended = |id: u32, name: &str, args: &[&[u8]]| {
        let mut body = string(name.as_bytes());
        for a in args {
            body.extend_from_slice(&string(a));
        }
        packet(FXP_EXTENDED, id, &body)
    };

    ch.write_all(&extended(1, "statvfs@openssh.com", &[b"/"]))
        .await
        .unwrap();
    let (t, id, rest) = reply(&mut ch).await;
    assert_eq!((t, id), (FXP_EXTENDED_REPLY, 1));
    assert_eq!(rest.len(), 11 * 8, "eleven uint64s");
    let field = |i: usize| u64::from_be_bytes(rest[i * 8..i * 8 + 8].try_into().unwrap());
    // S3 has no capacity: a large, free file system that may be written.
    assert!(
        field(2) > 0 && field(3) == field(2),
        "blocks {} free {}",
        field(2),
        field(3)
    );
    assert_eq!(field(9) & 1, 0, "reported read-only");

    // fsync of a file being written, then its close: it lands.
    let mut open = string(b"synced.csv");
    open.extend_from_slice(&0x1au32.to_be_bytes()); // WRITE|CREAT|TRUNC
    open.extend_from_slice(&0u32.to_be_bytes());
    ch.write_all(&packet(FXP_OPEN, 2, &open)).await.unwrap();
    let (t, _, rest) = reply(&mut ch).await;
    assert_eq!(t, FXP_HANDLE);
    let handle_len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    let handle = rest[4..4 + handle_len].to_vec();
    let mut write = string(&handle);
    write.extend_from_slice(&0u64.to_be_bytes());
    write.extend_from_slice(&string(b"id,amount\n"));
    ch.write_all(&packet(FXP_WRITE, 3, &write)).await.unwrap();
    let (t, id, rest) = reply(&mut ch).await;
    assert_eq!((t, id, &rest[..4]), (FXP_STATUS, 3, &[0u8; 4][..]));
    ch.write_all(&extended(4, "fsync@openssh.com", &[&handle]))
        .await
        .unwrap();
    let (t, id, rest) = reply(&mut ch).await;
    assert_eq!((t, id, &rest[..4]), (FXP_STATUS, 4, &[0u8; 4][..]));
    ch.write_all(&extended(5, "fsync@openssh.com", &[b"no-such-handle"]))
        .await
        .unwrap();
    let (t, id, rest) = reply(&mut ch).await;
    assert_eq!((t, id), (FXP_STATUS, 5));
    assert_ne!(
        &rest[..4],
        &[0u8; 4][..],
        "fsync of an unknown handle succeeded"
    );
    ch.write_all(&packet(FXP_CLOSE, 6, &string(&handle)))
        .await
        .unwrap();
    let (t, _, rest) = reply(&mut ch).await;
    assert_eq!((t, &rest[..4]), (FXP_STATUS, &[0u8; 4][..]));

    for (id, name, args) in [
        (
            7,
            "hardlink@openssh.com",
            vec![&b"synced.csv"[..], b"link.csv"],
        ),
        (
            8,
            "copy-data",
            vec![&handle[..], &[0; 8][..], &[0; 8][..], &handle[..]],
        ),
    ] {
        ch.write_all(&extended(id, name, &args)).await.unwrap();
        let (t, rid, rest) = reply(&mut ch).await;
        assert_eq!((t, rid), (FXP_STATUS, id), "{name}");
        assert_eq!(
            u32::from_be_bytes(rest[..4].try_into().unwrap()),
            8,
            "{name}"
        );
    }
    assert_eq!(
        g.stored("synced.csv").await.as_deref(),
        Some(&b"id,amount\n"[..])
    );
    assert!(g.stored("link.csv").await.is_none());
}
