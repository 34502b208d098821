//! The SFTP front-end driven as partners drive it: OpenSSH `sftp` against `wharf serve`, with
//! accounts in Postgres or SQLite and files checked in garage (or the local directory).

use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::io::Write as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{
    closed_within, random_bytes, raw_sftp_channel, raw_sftp_initialized, sftp, ssh_keygen, Auth,
    Gateway, Server, Wharf, PW,
};

fn b64_sha256(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_land_byte_exact_with_s3_checksums() {
    let g = Gateway::start(true, &[]).await;
    let small = random_bytes(1000);
    let large = random_bytes(12 * 1024 * 1024 + 12345); // three 5 MiB parts
    g.write_file("small.csv", &small);
    g.write_file("large.bin", &large);
    g.write_file("empty.csv", b"");
    g.acme("put small.csv\nmkdir inbound\nput large.bin inbound/large.bin\nput empty.csv\nls -l inbound\n")
        .ok();

    let key = |p: &str| format!("{}acme/{p}", g.prefix);
    assert_eq!(g.s3.get(&key("small.csv")).await.unwrap(), small);
    assert_eq!(g.s3.get(&key("inbound/large.bin")).await.unwrap(), large);
    assert_eq!(g.s3.get(&key("empty.csv")).await.unwrap(), b"");

    // The small file is one PutObject carrying the whole-object SHA-256.
    let head =
        g.s3.client
            .head_object()
            .bucket(&g.s3.bucket)
            .key(key("small.csv"))
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
    assert_eq!(head.checksum_sha256(), Some(b64_sha256(&small).as_str()));

    // The large one is a multipart upload checked end to end: every part carried its
    // CRC64NVME and S3 holds the full-object CRC64NVME of exactly the bytes the client sent.
    let head =
        g.s3.client
            .head_object()
            .bucket(&g.s3.bucket)
            .key(key("inbound/large.bin"))
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &large);
    let crc = base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());
    assert_eq!(head.checksum_crc64_nvme(), Some(crc.as_str()));
    assert_eq!(
        head.checksum_type(),
        Some(&aws_sdk_s3::types::ChecksumType::FullObject)
    );
    // The event (and the CLOSE log line) carry the whole file's SHA-256.
    let sha = hex::encode(Sha256::digest(&large));
    assert!(g.server.log().contains(&sha), "no CLOSE with sha256 {sha}");

    // Nothing was left open and nothing landed outside the home.
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
    for k in g.s3.keys(&g.prefix).await {
        assert!(k.starts_with(&format!("{}acme/", g.prefix)), "{k}");
    }
    // last_login recorded.
    let shown = g.w.run(&["user", "show", "acme", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown.ok().stdout).unwrap();
    assert!(v["last_login_at"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_cannot_leave_the_home() {
    let g = Gateway::start(false, &[]).await;
    g.write_file("r.csv", b"report");
    // Each line is prefixed with '-' so the batch goes on after a refusal.
    let run = g.acme(
        "-put r.csv ../escape.csv\n\
         -put r.csv /../../escape2.csv\n\
         -put r.csv a/../../escape3.csv\n\
         -mkdir ../up\n\
         -put r.csv .wharf-upload-fake\n\
         put r.csv /abs.csv\n\
         put r.csv \"with space é.csv\"\n\
         -rename abs.csv ../moved.csv\n",
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("Permission denied"), "{run:#?}");
    let keys = g.s3.keys(&g.prefix).await;
    let mut rel: Vec<String> = keys
        .iter()
        .map(|k| {
            k.strip_prefix(&format!("{}acme/", g.prefix))
                .unwrap_or_else(|| panic!("object outside the home: {k}"))
                .to_string()
        })
        .collect();
    rel.sort();
    assert_eq!(rel, ["abs.csv", "with space é.csv"]);
    // Nothing at all was written outside the bucket prefix of this test either.
    assert!(g.s3.keys("escape").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_logins_leave_nothing() {
    let g = Gateway::start(true, &[]).await;
    let key = ssh_keygen(g.w.path(), "partner", "ed25519", None);
    let other = ssh_keygen(g.w.path(), "stranger", "ed25519", None).with_extension("");
    g.w.run(&["user", "key", "add", "acme", key.to_str().unwrap()])
        .ok();
    g.w.run(&[
        "user",
        "add",
        "sleepy",
        "--ssh-key",
        key.to_str().unwrap(),
        "--disabled",
    ])
    .ok();
    g.w.run(&[
        "user",
        "add",
        "fenced",
        "--ssh-key",
        key.to_str().unwrap(),
        "--allow-ip",
        "192.0.2.0/24",
    ])
    .ok();
    g.write_file("r.csv", b"x");
    let put = "put r.csv\n";

    // The registered key works; every refusal below fails the login itself.
    let private = key.with_extension("");
    g.sftp("acme", &Auth::Key(private.clone()), put).ok();
    for (user, auth) in [
        ("acme", Auth::Password("wrong".into())),
        ("nobody", Auth::Password(PW.into())),
        ("acme", Auth::Key(other.clone())),
        ("sleepy", Auth::Key(private.clone())),
        ("fenced", Auth::Key(private.clone())),
        ("Bad User", Auth::Password(PW.into())),
    ] {
        let r = g.sftp(user, &auth, "put r.csv refused.csv\n");
        assert_ne!(r.code, Some(0), "{user} logged in: {r:#?}");
        assert!(
            r.stderr.contains("Permission denied") || r.stderr.contains("Connection closed"),
            "{r:#?}"
        );
    }
    let keys = g.s3.keys(&g.prefix).await;
    assert_eq!(keys, [format!("{}acme/r.csv", g.prefix)]);
    // Refusals are logged with their reason; the password never is.
    let log = g.server.log();
    assert!(log.contains("\"AUTH_FAILURE\""), "{log}");
    assert!(
        log.contains("bad_password") && log.contains("unknown_user"),
        "{log}"
    );
    assert!(
        log.contains("disabled") && log.contains("address_not_allowed"),
        "{log}"
    );
    assert!(!log.contains(PW) && !log.contains("\"wrong\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_client_leaves_no_object_and_no_multipart_upload() {
    let g = Gateway::start(false, &[]).await;
    let data = random_bytes(40 << 20);
    g.write_file("big.bin", &data);
    // 4 MB/s: slow enough to be caught mid-upload with parts already sent.
    let mut child = crate::harness::sftp_command(
        g.server.port(),
        "acme",
        &Auth::Password(PW.into()),
        g.w.path(),
        &["-l", "32000"],
    )
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put big.bin inbound.bin\n")
        .unwrap();
    let key = format!("{}acme/inbound.bin", g.prefix);

    // While it runs, another session sees the bytes received so far, and S3 shows nothing.
    let mut seen = 0u64;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = g.acme("ls -l inbound.bin\n");
        if let Some(size) = r
            .stdout
            .lines()
            .find(|l| l.contains("inbound.bin") && l.starts_with('-'))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|s| s.parse::<u64>().ok())
        {
            seen = size;
            if size > 12 << 20 {
                break;
            }
        }
    }
    assert!(
        seen > 0 && seen < data.len() as u64,
        "stat during upload saw {seen}"
    );
    assert!(
        g.s3.get(&key).await.is_none(),
        "object visible before close"
    );
    assert!(
        !g.s3.open_multipart_uploads(&g.prefix).await.is_empty(),
        "expected a multipart upload in progress"
    );

    child.kill().unwrap();
    let _ = child.wait();
    let mut open = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = g.s3.open_multipart_uploads(&g.prefix).await;
        if open.is_empty() {
            break;
        }
    }
    assert!(open.is_empty(), "multipart upload left open: {open:?}");
    assert!(g.s3.get(&key).await.is_none(), "partial object visible");
    assert!(g.s3.keys(&g.prefix).await.is_empty());
    let log = g.server.log();
    assert!(log.contains("PARTIAL_CLOSE"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_packet_closes_the_session_without_allocating() {
    let g = Gateway::start(false, &[]).await;
    // After INIT, a packet claiming 2 GiB followed by a stream of bytes.
    let (_ssh, mut ch) = raw_sftp_initialized(g.server.addr, "acme", PW).await;
    // The baseline is a logged-in session: what follows must not grow the server.
    let before = g.server.rss_kib();
    ch.write_all(&0x8000_0000u32.to_be_bytes()).await.unwrap();
    let junk = vec![0x41u8; 64 * 1024];
    let mut sent = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if ch.write_all(&junk).await.is_err() {
                return true;
            }
            sent += junk.len();
            if sent > 64 << 20 {
                return false;
            }
        }
    })
    .await;
    assert!(
        !matches!(closed, Ok(false)),
        "session stayed open after {sent} bytes"
    );
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), ch.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "channel not closed: {r:?}"
    );
    let after = g.server.rss_kib();
    assert!(
        after < before + 10 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        g.server
            .logs_within("framing violation", Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_requests_and_random_access_get_op_unsupported() {
    let g = Gateway::start(false, &[]).await;
    let (_ssh, ch) = raw_sftp_channel(g.server.addr, "acme", PW).await;
    let sftp = russh_sftp::client::RawSftpSession::new(ch);
    let version = sftp.init().await.unwrap();
    assert!(version.extensions.contains_key("limits@openssh.com"));
    let limits = sftp.limits().await.unwrap();
    assert!(limits.max_write_len >= 200 * 1024, "{limits:?}");

    use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
    let status_of = |e: russh_sftp::client::error::Error| match e {
        russh_sftp::client::error::Error::Status(s) => s.status_code,
        other => panic!("expected a status, got {other:?}"),
    };

    // A rewrite of bytes already received aborts the upload with OP_UNSUPPORTED.
    let h = sftp
        .open(
            "/rewrite.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            FileAttributes::empty(),
        )
        .await
        .unwrap()
        .handle;
    sftp.write(&h, 0, vec![1; 100]).await.unwrap();
    let e = sftp.write(&h, 50, vec![2; 100]).await.unwrap_err();
    assert_eq!(status_of(e), StatusCode::OpUnsupported);
    let e = sftp.close(&h).await.unwrap_err();
    assert_eq!(status_of(e), StatusCode::OpUnsupported);

    // Slightly out-of-order pipelined writes are put back in order.
    let h = sftp
        .open(
            "/reordered.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            FileAttributes::empty(),
        )
        .await
        .unwrap()
        .handle;
    sftp.write(&h, 100, vec![b'b'; 100]).await.unwrap();
    sftp.write(&h, 0, vec![b'a'; 100]).await.unwrap();
    sftp.write(&h, 200, vec![b'c'; 10]).await.unwrap();
    sftp.close(&h).await.unwrap();

    // A gap past the reorder window fails cleanly.
    let h = sftp
        .open(
            "/gap.bin",
            OpenFlags::WRITE | OpenFlags::CREATE,
            FileAttributes::empty(),
        )
        .await
        .unwrap()
        .handle;
    let e = sftp.write(&h, 1 << 30, vec![0; 10]).await.unwrap_err();
    assert_eq!(status_of(e), StatusCode::OpUnsupported);
    let _ = sftp.close(&h).await;

    // Append, symlinks and unknown extensions are refused, not hung.
    let e = sftp
        .open(
            "/x",
            OpenFlags::WRITE | OpenFlags::APPEND,
            FileAttributes::empty(),
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(e), StatusCode::OpUnsupported);
    let e = sftp.symlink("/a", "/b").await.unwrap_err();
    assert_eq!(status_of(e), StatusCode::OpUnsupported);
    let code = match sftp.extended("nonsense@example.com", vec![]).await {
        Ok(russh_sftp::protocol::Packet::Status(s)) => s.status_code,
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => status_of(e),
    };
    assert_eq!(code, StatusCode::OpUnsupported);

    let mut keys = g.s3.keys(&g.prefix).await;
    keys.sort();
    assert_eq!(keys, [format!("{}acme/reordered.bin", g.prefix)]);
    let body = g.s3.get(&keys[0]).await.unwrap();
    assert_eq!(&body[..100], &[b'a'; 100][..]);
    assert_eq!(&body[100..200], &[b'b'; 100][..]);
    assert_eq!(&body[200..], &[b'c'; 10][..]);
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_packet_types_get_a_reply_with_their_id() {
    let g = Gateway::start(false, &[]).await;
    let (_ssh, mut ch) = raw_sftp_initialized(g.server.addr, "acme", PW).await;
    // Type 99 does not exist; id 4242.
    ch.write_all(&[0, 0, 0, 5, 99, 0, 0, 0x10, 0x92])
        .await
        .unwrap();
    let mut reply_len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), ch.read_exact(&mut reply_len))
        .await
        .expect("a reply, not a hang")
        .unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(reply_len) as usize];
    ch.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[0], 101, "SSH_FXP_STATUS");
    assert_eq!(u32::from_be_bytes(reply[1..5].try_into().unwrap()), 4242);
    assert_eq!(
        u32::from_be_bytes(reply[5..9].try_into().unwrap()),
        8,
        "OP_UNSUPPORTED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn permissions_are_enforced_and_setstat_is_a_no_op() {
    let g = Gateway::start(false, &[]).await;
    g.write_file("r.csv", b"first");
    // Default permissions: upload, overwrite, list, rename, mkdir; no download, no delete.
    g.acme("put -p r.csv\nput r.csv\nls\nrename r.csv s.csv\n")
        .ok();
    let r = g.acme("get s.csv back.csv\n");
    assert!(r.stderr.contains("Permission denied"), "{r:#?}");
    let r = g.acme("rm s.csv\n");
    assert!(r.stderr.contains("Permission denied"), "{r:#?}");

    g.w.run(&[
        "user",
        "set",
        "acme",
        "--permissions",
        "upload,download,list",
    ])
    .ok();
    std::fs::write(g.w.file("r.csv"), b"second").unwrap();
    let r = g.acme("put r.csv s.csv\n");
    assert!(
        r.stderr.contains("Permission denied"),
        "overwrite allowed: {r:#?}"
    );
    g.acme("get s.csv back.csv\n").ok();
    assert_eq!(std::fs::read(g.w.file("back.csv")).unwrap(), b"first");
    let r = g.acme("mkdir d\n");
    assert!(r.stderr.contains("Permission denied"), "{r:#?}");

    g.w.run(&["user", "set", "acme", "--permissions", "upload"])
        .ok();
    let r = g.acme("ls\n");
    assert!(r.stderr.contains("Permission denied"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn weak_algorithms_are_refused() {
    let g = Gateway::start(false, &[]).await;
    let rsa = ssh_keygen(g.w.path(), "rsa", "rsa", Some(3072));
    g.w.run(&["user", "key", "add", "acme", rsa.to_str().unwrap()])
        .ok();
    let port = g.server.port();
    let run = |extra: &[&str]| {
        let mut cmd = crate::harness::sftp_command(
            port,
            "acme",
            &Auth::Key(rsa.with_extension("")),
            g.w.path(),
            extra,
        );
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"ls\n").unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(run(&[]).status.success(), "rsa-sha2 login failed");
    for weak in [
        &["-o", "Ciphers=aes128-cbc"][..],
        &["-o", "KexAlgorithms=diffie-hellman-group1-sha1"],
        &["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
        &["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha1"],
        &["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"],
        &["-o", "HostKeyAlgorithms=ssh-rsa"],
    ] {
        let out = run(weak);
        assert!(!out.status.success(), "{weak:?} accepted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_keys_are_kept_and_listed() {
    let w = Wharf::embedded().with_env("WHARF_SFTP__HOST_KEY_DIR", "keys");
    let listed = w.run(&["hostkey", "list"]).ok().stdout.clone();
    assert_eq!(listed.lines().count(), 3, "{listed}");
    for alg in ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"] {
        assert!(listed.contains(alg), "{alg} missing: {listed}");
    }
    let server = Server::start(&w);
    // What a client sees is what the admin was told.
    let scan = std::process::Command::new("ssh-keyscan")
        .args([
            "-p",
            &server.port().to_string(),
            "-t",
            "ed25519,ecdsa,rsa",
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    let scanned = String::from_utf8_lossy(&scan.stdout);
    let fps = std::process::Command::new("ssh-keygen")
        .args(["-lf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(scanned.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let fps = String::from_utf8_lossy(&fps.stdout);
    for line in listed.lines() {
        let fp = line.split_whitespace().next().unwrap();
        assert!(fps.contains(fp), "{fp} not presented; scan: {fps}");
    }
    drop(server);
    // Restarting reuses them.
    assert_eq!(w.run(&["hostkey", "list"]).ok().stdout, listed);
    let meta = std::fs::metadata(w.file("keys/ssh_host_ed25519_key")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A key directory from a wharf without the ECDSA key gains one; the others stay.
    std::fs::remove_file(w.file("keys/ssh_host_ecdsa_key")).unwrap();
    let again = w.run(&["hostkey", "list"]).ok().stdout.clone();
    let by_alg = |text: &str, alg: &str| {
        text.lines()
            .find(|l| l.ends_with(alg))
            .map(String::from)
            .unwrap_or_else(|| panic!("{alg} not in {text}"))
    };
    for alg in ["ssh-ed25519", "ssh-rsa"] {
        assert_eq!(by_alg(&again, alg), by_alg(&listed, alg));
    }
    assert_ne!(
        by_alg(&again, "ecdsa-sha2-nistp256"),
        by_alg(&listed, "ecdsa-sha2-nistp256")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_default_lands_files_under_data() {
    let w = Wharf::embedded();
    w.run_stdin(
        &["user", "add", "acme", "--password-stdin"],
        Some(&format!("{PW}\n")),
    )
    .ok();
    let server = Server::start(&w);
    std::fs::write(w.file("report.csv"), b"id,amount\n1,10.00\n").unwrap();
    sftp(
        server.port(),
        "acme",
        &Auth::Password(PW.into()),
        w.path(),
        "put report.csv\nls -l\n",
    )
    .ok();
    assert_eq!(
        std::fs::read(w.file("data/acme/report.csv")).unwrap(),
        b"id,amount\n1,10.00\n"
    );
    // No temporary files are left beside it.
    let names: Vec<_> = std::fs::read_dir(w.file("data/acme"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["report.csv"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_timeout_closes_silent_connections() {
    let g = Gateway::start(false, &[("WHARF_SFTP__LOGIN_TIMEOUT", "1s")]).await;
    let mut sock = tokio::net::TcpStream::connect(g.server.addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut sock, Duration::from_secs(10)).await,
        "connection still open after 10s"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_silent_connections_neither_block_partners_nor_linger() {
    let g = Gateway::start(
        false,
        &[
            ("WHARF_SFTP__LOGIN_TIMEOUT", "3s"),
            ("WHARF_SFTP__MAX_SESSIONS_PER_IP", "1000"),
        ],
    )
    .await;
    g.write_file("r.csv", b"id,amount\n1,5\n");
    let before = g.server.rss_kib();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(g.server.addr).await.unwrap());
    }
    // A partner still gets in and uploads while they sit there.
    g.acme("put r.csv\n").ok();
    let during = g.server.rss_kib();
    eprintln!("RSS {before} KiB before, {during} KiB with 200 silent connections");
    assert!(
        during < before + 20 * 1024,
        "RSS grew from {before} KiB to {during} KiB with 200 silent connections"
    );
    // And the server hangs up on every one of them at login_timeout.
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        for mut sock in silent {
            let mut buf = vec![0u8; 256];
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "some silent connections were still open after 15 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_open_close_pairs_leak_no_handles() {
    // Local storage, so the test measures wharf and not the S3 server.
    let w = crate::harness::Wharf::embedded();
    w.run_stdin(
        &["user", "add", "acme", "--password-stdin"],
        Some(&format!("{PW}\n")),
    )
    .ok();
    let server = crate::harness::Server::start(&w);
    let (_ssh, ch) = raw_sftp_channel(server.addr, "acme", PW).await;
    let sftp = russh_sftp::client::RawSftpSession::new(ch);
    sftp.init().await.unwrap();
    let before = server.rss_kib();
    let started = std::time::Instant::now();
    for i in 0..10_000 {
        let h = sftp
            .opendir("/")
            .await
            .unwrap_or_else(|e| panic!("opendir #{i}: {e:?}"))
            .handle;
        sftp.close(&h).await.unwrap();
    }
    let took = started.elapsed();
    let after = server.rss_kib();
    eprintln!("10,000 opendir/close pairs in {took:?}; RSS {before} -> {after} KiB");
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // Handles were really released: the per-session cap (256) still leaves room.
    let mut open = Vec::new();
    for _ in 0..200 {
        open.push(sftp.opendir("/").await.unwrap().handle);
    }
    for h in open {
        sftp.close(&h).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_uploads_finish() {
    let g = Gateway::start(false, &[]).await;
    let data = random_bytes(8 << 20);
    g.write_file("f.bin", &data);
    let mut server = g.server;
    let w = g.w;
    let port = server.port();
    let mut child = crate::harness::sftp_command(
        port,
        "acme",
        &Auth::Password(PW.into()),
        w.path(),
        &["-l", "16000"],
    )
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put f.bin\n")
        .unwrap();
    // Let the upload get going, then ask the server to stop.
    for _ in 0..100 {
        if server.log().contains("\"OPEN\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = server
        .terminate(Duration::from_secs(30))
        .expect("server exited");
    assert!(status.success(), "{status:?}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        g.s3.get(&format!("{}acme/f.bin", g.prefix)).await.unwrap(),
        data
    );
    // New connections were refused while it drained.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// A rolling restart behind a load balancer: on SIGTERM `/readyz` says `draining` at once
/// while the listener still accepts for `sftp.drain_delay` (an upload started then lands),
/// and only then are new connections refused; a session still running when the grace ends
/// is cut and its upload leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_readyz_first_and_keeps_accepting_for_the_drain_delay() {
    let g = Gateway::start(
        false,
        &[
            ("WHARF_SFTP__DRAIN_DELAY", "3s"),
            ("WHARF_SFTP__SHUTDOWN_GRACE", "2s"),
        ],
    )
    .await;
    let (status, _) = g.server.http_get("/readyz").await;
    assert_eq!(status, 200);
    let small = random_bytes(30_000);
    g.write_file("during.csv", &small);
    let big = random_bytes(20 << 20);
    g.write_file("slow.bin", &big);
    // A slow upload that will outlive the grace.
    let mut slow = crate::harness::sftp_command(
        g.server.port(),
        "acme",
        &Auth::Password(PW.into()),
        g.w.path(),
        &["-l", "8000"],
    )
    .spawn()
    .unwrap();
    slow.stdin
        .take()
        .unwrap()
        .write_all(b"put slow.bin\n")
        .unwrap();
    for _ in 0..100 {
        if g.server.log().contains("\"OPEN\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = g.server.pid().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = g.server.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"draining\""), "{body}");
    // Still accepting during the drain delay: a partner's upload lands.
    g.acme("put during.csv\n").ok();
    assert_eq!(g.stored("during.csv").await.as_deref(), Some(&small[..]));
    let mut server = g.server;
    let exited = server
        .wait_exit(Duration::from_secs(30))
        .expect("server exited");
    assert!(exited.success(), "{exited:?}");
    let log = server.log();
    assert!(log.contains("draining: /readyz answers 503"), "{log}");
    assert!(log.contains("\"reason\":\"server shutting down\""), "{log}");
    let _ = slow.wait();
    // The cut upload left nothing.
    assert!(g
        .s3
        .get(&format!("{}acme/slow.bin", g.prefix))
        .await
        .is_none());
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
}

/// Downloads read ahead (the next 4 MiB blocks fetched while one is sent): a file read in
/// order, one read back after a jump backwards and one read with a jump forwards past the
/// blocks fetched ahead all get exactly the stored bytes, and a read past the end gets EOF.
#[tokio::test(flavor = "multi_thread")]
async fn downloads_read_ahead_and_seeks_return_the_stored_bytes() {
    use russh_sftp::protocol::{FileAttributes, OpenFlags};
    let g = Gateway::start(false, &[]).await;
    g.w.run(&["user", "set", "acme", "--permissions", "list,download"])
        .ok();
    let data = random_bytes((5 << 22) + 12_345);
    g.put_object("acme/big.bin", &data).await;
    let (_ssh, ch) = raw_sftp_channel(g.server.addr, "acme", PW).await;
    let sftp = russh_sftp::client::RawSftpSession::new(ch);
    sftp.init().await.unwrap();
    let open = || async {
        sftp.open("/big.bin", OpenFlags::READ, FileAttributes::empty())
            .await
            .unwrap()
            .handle
    };
    let read = |h: String, offset: u64, len: u32| {
        let sftp = &sftp;
        async move {
            match sftp.read(&h, offset, len).await {
                Ok(d) => d.data,
                Err(russh_sftp::client::error::Error::Status(s))
                    if s.status_code == russh_sftp::protocol::StatusCode::Eof =>
                {
                    Vec::new()
                }
                Err(e) => panic!("read at {offset}: {e:?}"),
            }
        }
    };

    // In order, 32 KiB at a time, as OpenSSH's get reads.
    let h = open().await;
    let mut got = Vec::with_capacity(data.len());
    loop {
        let d = read(h.clone(), got.len() as u64, 32 << 10).await;
        if d.is_empty() {
            break;
        }
        got.extend_from_slice(&d);
    }
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "the bytes read in order differ from the stored ones"
    );
    sftp.close(&h).await.unwrap();

    // In order into the third block (two fetched ahead), then back, then far ahead.
    let h = open().await;
    let mut pos = 0u64;
    while pos < (9 << 20) {
        let d = read(h.clone(), pos, 255 << 10).await;
        assert_eq!(
            d[..],
            data[pos as usize..pos as usize + d.len()],
            "at {pos}"
        );
        pos += d.len() as u64;
    }
    for (offset, len) in [
        (1 << 20, 64 << 10),
        (17 << 20, 255 << 10),
        ((4 << 20) - 100, 200),
        ((5 << 22) - 10, 255 << 10),
        (9 << 20, 100),
    ] {
        let d = read(h.clone(), offset, len).await;
        let end = (offset as usize + len as usize).min(data.len());
        assert_eq!(d[..], data[offset as usize..end], "at {offset}");
    }
    assert!(read(h.clone(), data.len() as u64, 100).await.is_empty());
    sftp.close(&h).await.unwrap();
}
