//! Checksums a partner can verify without downloading: FTPS `HASH` (after `OPTS HASH`) and
//! `XSHA256` from Python's ftplib and lftp, SFTP `check-file-name`/`check-file-handle` from
//! raw packets, `sha256sum`/`sha1sum` over SSH exec from the OpenSSH client, and `rclone
//! check`. The SHA-256 recorded at arrival is answered without reading the file back; what
//! wharf did not record is read back within bounds, and only for a partner that may download
//! it. Plus RFC 2389: an `OPTS` wharf does not know gets 501 and the session goes on.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::ftps::{curl_put, ftps_gateway_with, lftp};
use crate::harness::raw::*;
use crate::harness::{random_bytes, raw_sftp_initialized, Gateway, Receiver, TrustAll, PW};

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn sha1(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        data,
    ))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Python's ftplib over explicit TLS: logs in, sends each command and prints `[command,
/// reply]` pairs (a reply of `EOF: …` when the server closed the connection).
const FTPLIB: &str = r#"
import ftplib, json, os, ssl, sys
port, user, cmds = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
f = ftplib.FTP_TLS(context=ctx, timeout=60)
f.connect("127.0.0.1", port)
f.auth()
f.login(user, os.environ["WHARF_TEST_PASSWORD"])
f.prot_p()
out = []
for c in cmds:
    try:
        r = f.sendcmd(c)
    except (EOFError, OSError) as e:
        r = "EOF: " + repr(e)
    except ftplib.Error as e:
        r = str(e)
    out.append([c, r])
print(json.dumps(out))
"#;

/// Each command's reply, from one ftplib session as `user`.
fn ftplib(g: &Gateway, user: &str, cmds: &[&str]) -> Vec<(String, String)> {
    let port = g.server.ftps_addr.expect("ftps listening").port();
    let out = Command::new("python3")
        .current_dir(g.w.path())
        .env("WHARF_TEST_PASSWORD", PW)
        .args(["-c", FTPLIB, &port.to_string(), user])
        .arg(serde_json::to_string(cmds).unwrap())
        .output()
        .expect("python3");
    assert!(out.status.success(), "ftplib: {out:?}");
    let pairs: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pairs.len(), cmds.len());
    pairs
}

/// S3 GetObject calls the gateway made so far (its metrics).
async fn get_objects(g: &Gateway) -> u64 {
    let (_, body) = g.server.http_get("/metrics").await;
    body.lines()
        .find(|l| {
            l.starts_with("wharf_s3_request_duration_seconds_count")
                && l.contains("operation=\"GetObject\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The server's `CHECKSUM` log lines.
fn checksum_lines(g: &Gateway) -> Vec<serde_json::Value> {
    g.server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["activity"] == "CHECKSUM")
        .collect()
}

/// The OpenSSH client running `command` as `user` (password login), stdin empty.
fn ssh(g: &Gateway, user: &str, command: &str) -> Output {
    let script =
        g.w.file(&format!(".askpass-{}", uuid::Uuid::now_v7().simple()));
    std::fs::write(&script, format!("#!/bin/sh\nprintf '%s\\n' '{PW}'\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    Command::new("ssh")
        .current_dir(g.w.path())
        .args(["-p", &g.server.port().to_string()])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "LogLevel=ERROR"])
        .args(["-o", "BatchMode=no"])
        .args(["-o", "PreferredAuthentications=password"])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .args(["-o", "ConnectTimeout=20"])
        .arg("-T")
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .env("SSH_ASKPASS", &script)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .expect("ssh (package openssh-client) must be installed")
}

/// Adds `name` with password PW and `args` (`--permissions …`).
fn add_user(g: &Gateway, name: &str, args: &[&str]) {
    let mut all = vec!["user", "add", name, "--password-stdin"];
    all.extend_from_slice(args);
    g.w.run_stdin(&all, Some(&format!("{PW}\n"))).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn ftps_hash_and_xsha256_answer_the_recorded_sha256_without_reading_the_file() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(&hook, false, &[]).await;
    // Over one 5 MiB part: a multipart object, whose SHA-256 S3 does not keep.
    let big = random_bytes((6 << 20) + 321);
    let small = b"id,amount\n1,5\n".to_vec();
    g.write_file("big.bin", &big);
    g.write_file("small.csv", &small);
    assert!(curl_put(&g, "acme", PW, "big.bin", "big.bin")
        .status
        .success());
    assert!(curl_put(&g, "acme", PW, "small.csv", "a%20file.csv")
        .status
        .success());
    let reads = get_objects(&g).await;

    // acme has the default permissions (list, upload, …; no download): the SHA-256 of what it
    // uploaded, as recorded, is its to see.
    let r = ftplib(
        &g,
        "acme",
        &[
            "FEAT",
            "OPTS HASH",
            "OPTS HASH SHA-256",
            "HASH big.bin",
            "HASH a file.csv",
            "XSHA256 big.bin",
            "OPTS HASH MD5",
            "HASH nothing.csv",
            "MKD dir",
            "HASH dir",
            "OPTS HASH sha-1",
            "HASH big.bin",
            "NOOP",
        ],
    );
    let reply = |i: usize| r[i].1.as_str();
    assert!(
        reply(0).contains("\n HASH SHA-256*;SHA-1\n"),
        "{}",
        reply(0)
    );
    assert!(reply(0).contains("\n XSHA256\n"), "{}", reply(0));
    assert_eq!(reply(1), "200 SHA-256");
    assert_eq!(reply(2), "200 SHA-256");
    assert_eq!(
        reply(3),
        format!("213 SHA-256 0-{} {} big.bin", big.len(), sha256(&big))
    );
    assert_eq!(
        reply(4),
        format!(
            "213 SHA-256 0-{} {} a file.csv",
            small.len(),
            sha256(&small)
        )
    );
    assert_eq!(reply(5), format!("250 {}", sha256(&big)));
    assert_eq!(
        reply(6),
        "501 Unknown algorithm, current selection not changed"
    );
    assert!(
        reply(7).starts_with("550 ") && reply(7).contains("no such file"),
        "{r:?}"
    );
    assert!(reply(8).starts_with("257"), "{r:?}");
    assert!(reply(9).starts_with("553 "), "a directory: {r:?}");
    assert_eq!(reply(10), "200 SHA-1");
    // SHA-1 is not recorded: it would mean reading the file back, which needs download.
    assert!(
        reply(11).starts_with("550 ") && reply(11).contains("download permission"),
        "{r:?}"
    );
    assert!(reply(12).starts_with("200 "), "{r:?}");
    // Nothing was read back from S3 for any of it.
    assert_eq!(get_objects(&g).await, reads, "GetObject calls for HASH");
    let lines = checksum_lines(&g);
    let answered: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["source"].is_string()).collect();
    assert_eq!(answered.len(), 3, "{lines:#?}");
    assert!(answered.iter().all(|l| l["source"] == "arrival"
        && l["algorithm"] == "SHA-256"
        && l["span"]["protocol"] == "ftps"));

    // lftp sends them with `quote`.
    let out = lftp(
        &g,
        "acme",
        PW,
        "quote OPTS HASH SHA-256; quote HASH big.bin",
    );
    assert!(
        text(&out.stdout).contains(&format!(
            "213 SHA-256 0-{} {} big.bin",
            big.len(),
            sha256(&big)
        )),
        "{out:?}"
    );

    // A file wharf did not write (a pipeline's) has no recorded SHA-256: with download, it is
    // read back; SHA-1 is computed the same way.
    g.grant_acme_everything();
    let statement = random_bytes(200_000);
    g.put_object("acme/statement.csv", &statement).await;
    let r = ftplib(
        &g,
        "acme",
        &[
            "HASH statement.csv",
            "OPTS HASH SHA-1",
            "HASH big.bin",
            "XSHA256 statement.csv",
        ],
    );
    assert_eq!(
        r[0].1,
        format!(
            "213 SHA-256 0-{} {} statement.csv",
            statement.len(),
            sha256(&statement)
        )
    );
    assert_eq!(r[1].1, "200 SHA-1");
    assert_eq!(
        r[2].1,
        format!("213 SHA-1 0-{} {} big.bin", big.len(), sha1(&big))
    );
    assert_eq!(r[3].1, format!("250 {}", sha256(&statement)));
    assert!(
        get_objects(&g).await > reads,
        "the pipeline's file was read back"
    );
    let lines = checksum_lines(&g);
    assert!(
        lines.iter().any(|l| l["path"] == "/big.bin"
            && l["algorithm"] == "SHA-1"
            && l["source"] == "stream"),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_opts_option_gets_501_and_the_session_goes_on() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(&hook, false, &[]).await;
    let r = ftplib(
        &g,
        "acme",
        &[
            "OPTS FOO BAR",
            "NOOP",
            "NOOP x",
            "OPTS",
            "PWD",
            "OPTS UTF8 ON",
            "NOOP",
        ],
    );
    assert!(r[0].1.starts_with("501 "), "{r:?}");
    assert!(r[1].1.starts_with("200 "), "{r:?}");
    assert!(r[2].1.starts_with("501 "), "{r:?}");
    assert!(r[3].1.starts_with("501 "), "{r:?}");
    assert!(r[4].1.starts_with("257 \"/\""), "{r:?}");
    assert_eq!(r[5].1, "200 Always in UTF-8 mode.", "{r:?}");
    assert!(r[6].1.starts_with("200 "), "{r:?}");
}

/// A `check-file-name` or `check-file-handle` request.
fn check_file(
    kind: &str,
    target: &[u8],
    algos: &str,
    offset: u64,
    len: u64,
    block: u32,
) -> Vec<u8> {
    let mut body = string(kind.as_bytes());
    body.extend_from_slice(&string(target));
    body.extend_from_slice(&string(algos.as_bytes()));
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(&block.to_be_bytes());
    body
}

/// Sends a check-file request; `Ok((algorithm, digests))` or the status refusing it.
async fn ask<S>(ch: &mut S, id: u32, body: &[u8]) -> Result<(String, Vec<u8>), (u32, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ch.write_all(&packet(FXP_EXTENDED, id, body)).await.unwrap();
    let (t, rid, rest) = reply(ch).await;
    assert_eq!(rid, id);
    match t {
        FXP_EXTENDED_REPLY => {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            assert_eq!(&rest[4..4 + n], b"check-file");
            let rest = &rest[4 + n..];
            let m = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let algo = text(&rest[4..4 + m]);
            Ok((algo, rest[4 + m..].to_vec()))
        }
        FXP_STATUS => Err(status(&rest)),
        other => panic!("unexpected reply type {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sftp_check_file_answers_what_it_computes_and_nothing_else() {
    for local in [false, true] {
        let g = Gateway::start_on(local, false, &[]).await;
        let data = random_bytes(5000);
        g.write_file("report.csv", &data);
        g.acme("put report.csv").ok();
        // Default permissions: list, no download.
        let (_c, mut ch) = raw_sftp_initialized(g.server.addr, "acme", PW).await;
        let got = ask(
            &mut ch,
            1,
            &check_file("check-file-name", b"/report.csv", "md5,sha256", 0, 0, 0),
        )
        .await
        .expect("sha256 of an arrival");
        assert_eq!(got, ("sha256".to_string(), Sha256::digest(&data).to_vec()));
        // Only what wharf computes is offered.
        let (code, msg) = ask(
            &mut ch,
            2,
            &check_file("check-file-name", b"report.csv", "md5,crc32", 0, 0, 0),
        )
        .await
        .unwrap_err();
        assert_eq!(code, 8, "{msg}");
        assert!(msg.contains("sha256,sha1"), "{msg}");
        // A part of the file, or SHA-1, means reading it back: not without download.
        for (id, body) in [
            (
                3,
                check_file("check-file-name", b"report.csv", "sha1", 0, 0, 0),
            ),
            (
                4,
                check_file("check-file-name", b"report.csv", "sha256", 10, 100, 0),
            ),
        ] {
            let (code, msg) = ask(&mut ch, id, &body).await.unwrap_err();
            assert_eq!(code, 3, "{msg}");
        }
        // The jail: nothing outside the home.
        let (code, _) = ask(
            &mut ch,
            5,
            &check_file("check-file-name", b"/../../etc/passwd", "sha256", 0, 0, 0),
        )
        .await
        .unwrap_err();
        assert_eq!(code, 3);
        let (code, _) = ask(
            &mut ch,
            6,
            &check_file("check-file-name", b"/nothing.csv", "sha256", 0, 0, 0),
        )
        .await
        .unwrap_err();
        assert_eq!(code, 2);
        let (code, _) = ask(
            &mut ch,
            7,
            &check_file("check-file-name", b"report.csv", "sha256", 0, 0, 100),
        )
        .await
        .unwrap_err();
        assert_eq!(code, 5, "a block size under 256 is malformed");
        drop(ch);

        // With download: SHA-1, ranges and blocks, read back.
        g.grant_acme_everything();
        let (_c, mut ch) = raw_sftp_initialized(g.server.addr, "acme", PW).await;
        let (algo, d) = ask(
            &mut ch,
            1,
            &check_file("check-file-name", b"report.csv", "md5,sha1,sha256", 0, 0, 0),
        )
        .await
        .unwrap();
        assert_eq!((algo.as_str(), hex::encode(&d)), ("sha1", sha1(&data)));
        let (_, d) = ask(
            &mut ch,
            2,
            &check_file("check-file-name", b"report.csv", "sha256", 10, 100, 0),
        )
        .await
        .unwrap();
        assert_eq!(d, Sha256::digest(&data[10..110]).to_vec());
        let (_, d) = ask(
            &mut ch,
            3,
            &check_file("check-file-name", b"report.csv", "sha256", 0, 0, 1024),
        )
        .await
        .unwrap();
        let blocks: Vec<u8> = data
            .chunks(1024)
            .flat_map(|c| Sha256::digest(c).to_vec())
            .collect();
        assert_eq!(d, blocks, "five block digests");
        // check-file-handle on a file opened for reading.
        let mut open = string(b"report.csv");
        open.extend_from_slice(&1u32.to_be_bytes()); // READ
        open.extend_from_slice(&0u32.to_be_bytes());
        ch.write_all(&packet(FXP_OPEN, 4, &open)).await.unwrap();
        let (t, _, rest) = reply(&mut ch).await;
        assert_eq!(t, FXP_HANDLE);
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let handle = rest[4..4 + n].to_vec();
        let (algo, d) = ask(
            &mut ch,
            5,
            &check_file("check-file-handle", &handle, "sha256", 0, 0, 0),
        )
        .await
        .unwrap();
        assert_eq!(
            (algo.as_str(), d),
            ("sha256", Sha256::digest(&data).to_vec())
        );
        let (code, _) = ask(
            &mut ch,
            6,
            &check_file("check-file-handle", b"99", "sha256", 0, 0, 0),
        )
        .await
        .unwrap_err();
        assert_eq!(code, 4, "an unknown handle");
        let lines = checksum_lines(&g);
        assert!(
            lines.iter().any(|l| l["path"] == "/report.csv"
                && l["source"] == "arrival"
                && l["span"]["protocol"] == "sftp"),
            "{lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_sha256sum_answers_as_coreutils_inside_the_jail() {
    let g = Gateway::start(false, &[]).await;
    let csv = b"id,amount\n1,5\n2,7\n".to_vec();
    let quoted = random_bytes(3000);
    g.write_file("local.csv", &csv);
    g.write_file("q.bin", &quoted);
    g.acme("mkdir in\nput local.csv \"a file.csv\"\nput q.bin \"in/it's \\\"q\\\".bin\"\nput q.bin draft.bin.part\n")
        .ok();

    // As OpenSSH users quote a path for the remote side, and as rclone escapes it.
    let out = ssh(&g, "acme", "sha256sum 'a file.csv'");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), format!("{}  a file.csv\n", sha256(&csv)));
    let out = ssh(&g, "acme", r#"sha256sum /in/it\'s\ \"q\".bin"#);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!("{}  /in/it's \"q\".bin\n", sha256(&quoted))
    );
    // A temp-name upload not renamed yet: what its upload recorded.
    let out = ssh(&g, "acme", "sha256sum draft.bin.part");
    assert_eq!(
        text(&out.stdout),
        format!("{}  draft.bin.part\n", sha256(&quoted)),
        "{out:?}"
    );
    // rclone's probe: no operand hashes the (empty) standard input.
    let out = ssh(&g, "acme", "sha1sum");
    assert_eq!(
        text(&out.stdout),
        "da39a3ee5e6b4b0d3255bfef95601890afd80709  -\n",
        "{out:?}"
    );

    // A missing file: coreutils' message on stderr, exit status 1.
    let out = ssh(&g, "acme", "sha256sum missing.csv");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "sha256sum: missing.csv: No such file or directory\n"
    );
    let out = ssh(&g, "acme", "sha256sum in");
    assert_eq!(
        text(&out.stderr),
        "sha256sum: in: Is a directory\n",
        "{out:?}"
    );
    // Outside the jail.
    let out = ssh(&g, "acme", "sha256sum ../../etc/passwd");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).starts_with("sha256sum: ../../etc/passwd: Permission denied"),
        "{out:?}"
    );
    // SHA-1 is read back, which needs download (acme has the default permissions).
    let out = ssh(&g, "acme", "sha1sum 'a file.csv'");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("download permission"), "{out:?}");

    // Nothing else runs: other programs are refused outright, shell syntax is not guessed.
    for cmd in [
        "md5sum 'a file.csv'",
        "ls",
        "echo ${ShellId}%ComSpec%",
        "scp -t /",
    ] {
        let out = ssh(&g, "acme", cmd);
        assert_eq!(out.status.code(), Some(255), "{cmd}: {out:?}");
        assert!(
            text(&out.stderr).contains("exec request failed"),
            "{cmd}: {out:?}"
        );
    }
    for cmd in [
        "sha256sum 'a file.csv'; ls",
        "sha256sum *.csv",
        "sha256sum $(ls)",
    ] {
        let out = ssh(&g, "acme", cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {out:?}");
        assert!(
            text(&out.stderr).contains("wharf runs no shell"),
            "{cmd}: {out:?}"
        );
        assert_eq!(text(&out.stdout), "");
    }
    let lines = g.server.log();
    assert!(
        lines.contains(r#""activity":"EXEC""#),
        "refusals are logged"
    );

    // With download, SHA-1 too.
    g.grant_acme_everything();
    let out = ssh(&g, "acme", "sha1sum 'a file.csv'");
    assert_eq!(
        text(&out.stdout),
        format!("{}  a file.csv\n", sha1(&csv)),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn which_permission_a_checksum_needs_in_each_folder() {
    let g = Gateway::start(false, &[]).await;
    add_user(&g, "beta", &[]);
    for (vpath, loc, perms) in [
        ("/in", "beta-in", "list,upload"),
        ("/out", "beta-out", "list,download"),
        ("/drop", "beta-drop", "upload"),
    ] {
        g.w.dir_add("beta", vpath, loc, &["--permissions", perms])
            .ok();
    }
    let own = random_bytes(10_000);
    g.write_file("own.csv", &own);
    crate::harness::sftp(
        g.server.port(),
        "beta",
        &crate::harness::Auth::Password(PW.into()),
        g.w.path(),
        "put own.csv /in/own.csv\nput own.csv /drop/own.csv\n",
    )
    .ok();
    let theirs = random_bytes(4000);
    g.put_object("beta-in/pipeline.csv", &theirs).await;
    g.put_object("beta-out/statement.csv", &theirs).await;

    // list: the partner's own upload, as recorded.
    let out = ssh(&g, "beta", "sha256sum /in/own.csv");
    assert_eq!(
        text(&out.stdout),
        format!("{}  /in/own.csv\n", sha256(&own)),
        "{out:?}"
    );
    // list without download: not a file it did not send.
    let out = ssh(&g, "beta", "sha256sum /in/pipeline.csv");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
    // download: anything it may read.
    let out = ssh(&g, "beta", "sha256sum /out/statement.csv");
    assert_eq!(
        text(&out.stdout),
        format!("{}  /out/statement.csv\n", sha256(&theirs)),
        "{out:?}"
    );
    // neither list nor download: nothing, not even its own upload.
    let out = ssh(&g, "beta", "sha256sum /drop/own.csv");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
    // Outside every folder.
    let out = ssh(&g, "beta", "sha256sum /etc/passwd");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout), "");
}

/// rclone (v1.60) detects what a server can hash when it connects: `echo ${ShellId}%ComSpec%`
/// (refused: rclone then assumes a Unix shell), then `md5sum`, `md5 -r`, `rclone md5sum`
/// (refused: no MD5) and `sha1sum` with empty input, which wharf answers. `rclone check` then
/// compares SHA-1s it gets from `sha1sum PATH` (paths escaped with backslashes).
#[tokio::test(flavor = "multi_thread")]
async fn rclone_check_compares_sha1_hashes_over_ssh_exec() {
    let g = Gateway::start(false, &[]).await;
    g.grant_acme_everything();
    let src = g.w.file("batch");
    std::fs::create_dir_all(&src).unwrap();
    let files = [
        ("plain.csv", random_bytes(1000)),
        ("a file (1).csv", random_bytes(70_000)),
        ("it's \"quoted\" & $odd.csv", random_bytes(6 << 20)),
        ("résumé.csv", random_bytes(10)),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let obscured = Command::new("rclone")
        .args(["obscure", PW])
        .output()
        .unwrap();
    let rclone = |args: &[&str]| {
        Command::new("rclone")
            .current_dir(g.w.path())
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_CONFIG_W_TYPE", "sftp")
            .env("RCLONE_CONFIG_W_HOST", "127.0.0.1")
            .env("RCLONE_CONFIG_W_PORT", g.server.port().to_string())
            .env("RCLONE_CONFIG_W_USER", "acme")
            .env("RCLONE_CONFIG_W_PASS", text(&obscured.stdout).trim())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("rclone")
    };
    let out = rclone(&["copy", "batch", "w:in", "-vv"]);
    assert!(out.status.success(), "{out:?}");
    let log = text(&out.stderr);
    // The upload was checked with SHA-1 (rclone's post-upload hash check).
    assert!(
        log.contains("Running remote command: sha1sum /in/"),
        "{log}"
    );
    assert!(!log.contains("hash differ"), "{log}");

    let out = rclone(&["check", "batch", "w:in", "-vv"]);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("0 differences found"), "{log}");
    assert!(
        log.contains(&format!("{} matching files", files.len())),
        "{log}"
    );
    assert!(!log.contains("No common hash found"), "{log}");
    assert!(log.contains("Using sha1 for hash comparisons"), "{log}");
    assert!(
        log.contains(&format!("plain.csv: sha1 = {} OK", sha1(&files[0].1))),
        "{log}"
    );
    assert!(
        log.contains(
            "Running remote command: sha1sum /in/it\\'s\\ \\\"quoted\\\"\\ \\&\\ \\$odd.csv"
        ),
        "{log}"
    );
    // A file changed locally without changing its size is found by its hash.
    let mut changed = files[1].1.clone();
    changed[500] ^= 1;
    std::fs::write(src.join(files[1].0), &changed).unwrap();
    let out = rclone(&["check", "batch", "w:in"]);
    let log = text(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("1 differences found"), "{log}");
    assert!(log.contains("a file (1).csv: sha1 differ"), "{log}");
}

/// What one exec request got back: stdout, stderr, exit status.
async fn exec(
    handle: &russh::client::Handle<TrustAll>,
    command: &str,
) -> (String, String, Option<u32>) {
    let mut ch = handle
        .channel_open_session()
        .await
        .expect("session channel");
    ch.exec(true, command).await.expect("exec");
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(msg) = ch.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    (text(&out), text(&err), code)
}

/// A hostile partner asks for the SHA-1 of a large file over many connections and channels at
/// once: at most `MAX_STREAMS` files are read back on the instance (one per connection), and
/// meanwhile an honest partner's upload lands and its own SHA-256 is answered at once (from
/// the record, needing no turn).
#[tokio::test(flavor = "multi_thread")]
async fn many_hashes_of_a_large_file_do_not_stop_an_honest_upload() {
    let g = Arc::new(Gateway::start(false, &[]).await);
    add_user(&g, "mallory", &["--permissions", "list,download"]);
    let large = random_bytes(24 << 20);
    g.put_object("mallory/large.bin", &large).await;
    let expected = format!("{}  /large.bin\n", sha1(&large));

    let mut hostile = Vec::new();
    for _ in 0..6 {
        let addr = g.server.addr;
        hostile.push(tokio::spawn(async move {
            let config = Arc::new(russh::client::Config::default());
            let mut h = russh::client::connect(config, addr, TrustAll)
                .await
                .unwrap();
            assert!(h
                .authenticate_password("mallory", PW)
                .await
                .unwrap()
                .success());
            let h = Arc::new(h);
            let runs: Vec<_> = (0..3)
                .map(|_| {
                    let h = h.clone();
                    tokio::spawn(async move { exec(&h, "sha1sum /large.bin").await })
                })
                .collect();
            let mut out = Vec::new();
            for r in runs {
                out.push(r.await.unwrap());
            }
            out
        }));
    }
    // Let the storm start, then upload as an honest partner.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let honest = random_bytes((5 << 20) + 77);
    g.write_file("honest.bin", &honest);
    let started = Instant::now();
    let g2 = g.clone();
    let up = tokio::task::spawn_blocking(move || g2.acme("put honest.bin"))
        .await
        .unwrap();
    up.ok();
    let upload_took = started.elapsed();
    assert_eq!(g.stored("honest.bin").await.as_deref(), Some(&honest[..]));
    let started = Instant::now();
    let g2 = g.clone();
    let out = tokio::task::spawn_blocking(move || ssh(&g2, "acme", "sha256sum honest.bin"))
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("{}  honest.bin\n", sha256(&honest)),
        "{out:?}"
    );
    let sum_took = started.elapsed();

    let mut answered = 0;
    for h in hostile {
        for (stdout, stderr, code) in h.await.unwrap() {
            match code {
                Some(0) => {
                    assert_eq!(stdout, expected);
                    answered += 1;
                }
                Some(1) => assert!(stderr.contains("try again later"), "{stderr}"),
                other => panic!("exit {other:?}: {stderr}"),
            }
        }
    }
    assert!(answered > 0);
    let lines = checksum_lines(&g);
    let streams: Vec<u64> = lines
        .iter()
        .filter(|l| l["source"] == "stream")
        .filter_map(|l| l["streams_running"].as_u64())
        .collect();
    assert_eq!(streams.len(), answered, "{lines:#?}");
    assert!(streams.iter().all(|&n| (1..=4).contains(&n)), "{streams:?}");
    assert_eq!(
        streams.iter().max(),
        Some(&4),
        "the instance's turns were all taken"
    );
    // One file read back at a time per connection: its reads never overlap. Each read's
    // start is derived from its log line's time and how long it held its turn (`read_ms`);
    // the line is written a little after the turn was given back, so a busy machine shifts
    // them by milliseconds; two reads at once would overlap by most of a read (hundreds of
    // milliseconds for 24 MiB).
    let mut by_connection: std::collections::HashMap<String, Vec<(i64, i64)>> = Default::default();
    for l in lines.iter().filter(|l| l["source"] == "stream") {
        let end = chrono::DateTime::parse_from_rfc3339(l["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let read = l["read_ms"].as_i64().unwrap();
        by_connection
            .entry(l["span"]["session_id"].to_string())
            .or_default()
            .push((end - read, end));
    }
    assert_eq!(by_connection.len(), 6);
    for reads in by_connection.values_mut() {
        reads.sort();
        for w in reads.windows(2) {
            assert!(
                w[1].0 + 100 >= w[0].1,
                "overlapping reads on one connection: {reads:?}"
            );
        }
    }
    let honest_line = lines
        .iter()
        .find(|l| l["path"] == "/honest.bin")
        .expect("honest checksum logged");
    assert_eq!(honest_line["source"], "arrival");
    assert!(
        upload_took < Duration::from_secs(60) && sum_took < Duration::from_secs(10),
        "upload {upload_took:?}, checksum {sum_took:?}"
    );
}
