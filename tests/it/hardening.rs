//! Hardening, end to end against the real binary: the PROXY protocol on the SFTP and FTPS
//! listeners (a relay in the test plays the load balancer in front of stock `sftp` and curl),
//! endless FTP command lines, slowloris TLS handshakes, hostile SFTP paths sent as raw
//! packets, and an SFTP client that never reads its replies.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ftps::{curl, ftps_gateway_with};
use crate::harness::raw::*;
use crate::harness::{
    closed_within, raw_sftp_initialized, sftp, ssh_keygen, Auth, Gateway, Receiver, PW,
};

/// A TCP relay that starts every connection to `target` with `header`, as a load balancer
/// speaking the PROXY protocol does.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr, header: Vec<u8>) -> Relay {
        Self::start_from(target, header, "127.0.0.1").await
    }

    /// A relay whose connections to `target` come from `source` (any 127.0.0.0/8 address).
    async fn start_from(target: SocketAddr, header: Vec<u8>, source: &str) -> Relay {
        let source: std::net::IpAddr = source.parse().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let header = header.clone();
                tokio::spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    if socket.bind(SocketAddr::new(source, 0)).is_err() {
                        return;
                    }
                    let Ok(mut out) = socket.connect(target).await else {
                        return;
                    };
                    let _ = out.set_nodelay(true);
                    if out.write_all(&header).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn v1_header(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 40000 22\r\n").into_bytes()
}

fn v2_header(source: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&40001u16.to_be_bytes());
    h.extend_from_slice(&21u16.to_be_bytes());
    h
}

fn log_lines(g: &Gateway) -> Vec<serde_json::Value> {
    g.server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_names_the_client_for_events_logs_and_bans() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(
        &hook,
        false,
        &[
            ("WHARF_SECURITY__PROXY_PROTOCOL", "true"),
            ("WHARF_SECURITY__PROXY_TRUSTED", "[\"127.0.0.1\"]"),
            ("WHARF_SECURITY__BAN_AFTER_FAILURES", "2"),
            ("WHARF_SFTP__LOGIN_TIMEOUT", "3s"),
        ],
    )
    .await;
    g.write_file("r.csv", b"id,amount\n1,5\n");
    let pw = Auth::Password(PW.into());

    // Stock sftp behind a v1 header, curl (explicit FTPS) behind a v2 header.
    let sftp_lb = Relay::start(g.server.addr, v1_header("203.0.113.7")).await;
    let run = sftp(
        sftp_lb.addr.port(),
        "acme",
        &pw,
        g.w.path(),
        "put r.csv s.csv\n",
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    let ftps_lb = Relay::start(g.server.ftps_addr.unwrap(), v2_header([198, 51, 100, 9])).await;
    let url = format!("ftp://127.0.0.1:{}/f.csv", ftps_lb.addr.port());
    let login = format!("acme:{PW}");
    let out = curl(&g, &["--ssl-reqd", "--user", &login, "-T", "r.csv", &url]);
    assert!(out.status.success(), "{out:?}");

    let got = hook.wait_accepted(2, Duration::from_secs(10)).await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let ev = r.json();
            let d = &ev["data"];
            (
                d["protocol"].as_str().unwrap().to_string(),
                d["client_ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ftps".to_string(), "198.51.100.9".to_string()),
            ("sftp".to_string(), "203.0.113.7".to_string())
        ]
    );
    let logins: Vec<String> = log_lines(&g)
        .iter()
        .filter(|v| v["activity"] == "AUTH_SUCCESS")
        .map(|v| v["span"]["client_ip"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        logins.contains(&"203.0.113.7".to_string()) && logins.contains(&"198.51.100.9".into()),
        "{logins:?}"
    );

    // Without a header, nothing is served: neither the SSH client (it speaks first) nor the
    // FTP client (it waits for a greeting that never comes, until login_timeout).
    assert_ne!(g.acme("ls\n").code, Some(0));
    let direct = format!(
        "ftp://127.0.0.1:{}/x.csv",
        g.server.ftps_addr.unwrap().port()
    );
    let out = curl(
        &g,
        &["--ssl-reqd", "--user", &login, "-T", "r.csv", &direct],
    );
    assert!(!out.status.success(), "{out:?}");
    let log = g.server.log();
    assert!(log.contains("no PROXY protocol header"), "{log}");
    assert!(
        log.contains("no PROXY protocol header before login_timeout"),
        "{log}"
    );

    // A header from anything but the balancer is not believed: the connection is refused
    // before it could claim an address (here one that would not be banned).
    let forger = Relay::start_from(g.server.addr, v1_header("192.0.2.200"), "127.0.0.2").await;
    let run = sftp(forger.addr.port(), "acme", &pw, g.w.path(), "ls\n");
    assert_ne!(
        run.code,
        Some(0),
        "a header from an untrusted peer was believed"
    );
    assert!(
        g.server
            .logs_within(
                "127.0.0.2 is not in security.proxy_trusted",
                Duration::from_secs(5)
            )
            .await
    );
    assert!(!g.server.log().contains("192.0.2.200"));

    // Failed logins ban the address the header names, not the balancer's.
    let attacker = Relay::start(g.server.addr, v1_header("192.0.2.66")).await;
    for _ in 0..2 {
        let bad = Auth::Password("guess".into());
        assert_ne!(
            sftp(attacker.addr.port(), "acme", &bad, g.w.path(), "ls\n").code,
            Some(0)
        );
    }
    let run = sftp(attacker.addr.port(), "acme", &pw, g.w.path(), "ls\n");
    assert_ne!(run.code, Some(0), "banned address logged in");
    let listed = g.w.run(&["ban", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&listed.ok().stdout).unwrap();
    let banned: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(banned, ["192.0.2.66"]);
    // The partner behind the same balancer is not affected.
    let run = sftp(sftp_lb.addr.port(), "acme", &pw, g.w.path(), "ls\n");
    assert_eq!(run.code, Some(0), "{run:#?}");
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        match tokio::time::timeout(Duration::from_secs(10), r.read(&mut b)).await {
            Ok(Ok(1)) => line.push(b[0]),
            other => panic!("no reply line ({other:?}); so far {line:?}"),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_ftp_command_lines_are_cut_without_growing_memory() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(&hook, false, &[]).await;
    let addr = g.server.ftps_addr.unwrap();

    // One whole line of 5,000 bytes: a clear reply, then the connection is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(read_line(&mut s).await.starts_with("220"));
    s.write_all(format!("USER {}\r\n", "a".repeat(5000)).as_bytes())
        .await
        .unwrap();
    let reply = read_line(&mut s).await;
    assert!(reply.starts_with("500 Command line too long"), "{reply}");
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);

    // A line without end, as fast as the server takes it: cut long before 64 MiB, and the
    // server does not grow.
    let before = g.server.rss_kib();
    let mut s = TcpStream::connect(addr).await.unwrap();
    read_line(&mut s).await;
    let junk = vec![b'A'; 64 * 1024];
    let mut sent = 0usize;
    let cut = tokio::time::timeout(Duration::from_secs(20), async {
        while sent < 64 << 20 {
            if s.write_all(&junk).await.is_err() {
                return true;
            }
            sent += junk.len();
        }
        false
    })
    .await;
    assert!(matches!(cut, Ok(true)), "still accepted after {sent} bytes");
    let after = g.server.rss_kib();
    eprintln!("endless FTP line: cut after {sent} bytes sent; RSS {before} -> {after} KiB");
    assert!(after < before + 10 * 1024, "RSS {before} -> {after} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_tls_handshakes_are_cut_at_login_timeout() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(
        &hook,
        false,
        &[
            ("WHARF_FTPS__IMPLICIT_LISTEN", "127.0.0.1:0"),
            ("WHARF_SFTP__LOGIN_TIMEOUT", "2s"),
        ],
    )
    .await;
    let implicit = g.server.ftps_implicit_addr.expect("implicit listener");
    for (addr, explicit) in [(implicit, false), (g.server.ftps_addr.unwrap(), true)] {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        if explicit {
            assert!(read_line(&mut r).await.starts_with("220"));
            w.write_all(b"AUTH TLS\r\n").await.unwrap();
            assert!(read_line(&mut r).await.starts_with("234"));
        }
        // A TLS record header announcing a 16 KiB ClientHello, then a byte every 200 ms.
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            let _ = w.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01]).await;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if w.write_all(&[0]).await.is_err() {
                    return;
                }
            }
        });
        let closed = closed_within(&mut r, Duration::from_secs(15)).await;
        trickle.abort();
        let took = started.elapsed();
        assert!(closed, "explicit={explicit}: still open after 15 s");
        eprintln!("slowloris TLS (explicit={explicit}): closed after {took:?}");
        assert!(
            took < Duration::from_secs(6),
            "explicit={explicit}: {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed_by_timeout = log_lines(&g)
        .iter()
        .filter(|v| v["activity"] == "DISCONNECTED" && v["reason"] == "login_timeout")
        .count();
    assert_eq!(closed_by_timeout, 2, "{}", g.server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_sftp_paths_get_errors_and_write_nothing() {
    let g = Gateway::start(false, &[]).await;
    let (_ssh, mut ch) = raw_sftp_initialized(g.server.addr, "acme", PW).await;

    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("NUL", b"report\0.csv".to_vec()),
        ("control characters", b"rep\x01ort\x1b[31m.csv".to_vec()),
        ("invalid UTF-8", b"report-\xff\xfe.csv".to_vec()),
        ("4,000-byte name", vec![b'x'; 4000]),
        (
            "1,025-byte path",
            format!("d/{}", "y".repeat(1023)).into_bytes(),
        ),
        (
            "`..` chain",
            format!("{}escape.csv", "../".repeat(50)).into_bytes(),
        ),
        (
            "`..` past a subdirectory",
            b"a/b/../../../escape.csv".to_vec(),
        ),
        ("absolute climb", b"/../../etc/passwd".to_vec()),
    ];
    // OPEN for writing with CREATE|TRUNCATE, and MKDIR: every one gets an error status.
    let mut id = 10u32;
    for (what, name) in &hostile {
        for kind in [FXP_OPEN, FXP_MKDIR] {
            id += 1;
            let mut body = string(name);
            if kind == FXP_OPEN {
                body.extend_from_slice(&0x1au32.to_be_bytes()); // WRITE|CREAT|TRUNC
            }
            body.extend_from_slice(&0u32.to_be_bytes()); // no attributes
            ch.write_all(&packet(kind, id, &body)).await.unwrap();
            let (t, rid, rest) = reply(&mut ch).await;
            assert_eq!(rid, id, "{what}");
            assert_eq!(t, FXP_STATUS, "{what}: kind {kind} was not refused");
            let code = u32::from_be_bytes(rest[..4].try_into().unwrap());
            assert_ne!(code, 0, "{what}: kind {kind} succeeded");
        }
    }
    // The session is still serviceable: a good name still works.
    id += 1;
    let mut body = string(b"fine.csv");
    body.extend_from_slice(&0x1au32.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    ch.write_all(&packet(FXP_OPEN, id, &body)).await.unwrap();
    let (t, _, rest) = reply(&mut ch).await;
    assert_eq!(t, FXP_HANDLE);
    let handle_len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    let handle = rest[..4 + handle_len].to_vec();

    // Writes are decoded by wharf itself: malformed ones get a status, not a hang or a crash,
    // and write nothing.
    let write = |handle: &[u8], offset: u64, claimed: u32, data: &[u8]| {
        let mut body = handle.to_vec();
        body.extend_from_slice(&offset.to_be_bytes());
        body.extend_from_slice(&claimed.to_be_bytes());
        body.extend_from_slice(data);
        body
    };
    let bad_writes: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "data shorter than its length",
            write(&handle, 0, 100, b"short"),
            5,
        ),
        ("no offset", handle.clone(), 5),
        ("unknown handle", write(&string(b"999"), 0, 3, b"abc"), 4),
    ];
    for (what, body, code) in bad_writes {
        id += 1;
        ch.write_all(&packet(FXP_WRITE, id, &body)).await.unwrap();
        let (t, rid, rest) = reply(&mut ch).await;
        assert_eq!((t, rid), (FXP_STATUS, id), "{what}");
        assert_eq!(
            u32::from_be_bytes(rest[..4].try_into().unwrap()),
            code,
            "{what}"
        );
    }
    // Bytes after a write's data are ignored, as OpenSSH's sftp-server does (Go's pkg/sftp
    // sends such packets): only the declared data is written.
    for (offset, claimed, data) in [(0, 5, &b"12.50\0\0\0\0junk"[..]), (5, 4, b" EUR")] {
        id += 1;
        ch.write_all(&packet(
            FXP_WRITE,
            id,
            &write(&handle, offset, claimed, data),
        ))
        .await
        .unwrap();
        let (t, rid, rest) = reply(&mut ch).await;
        assert_eq!((t, rid, &rest[..4]), (FXP_STATUS, id, &[0u8, 0, 0, 0][..]));
    }
    id += 1;
    ch.write_all(&packet(FXP_CLOSE, id, &handle)).await.unwrap();
    let (t, _, rest) = reply(&mut ch).await;
    assert_eq!((t, &rest[..4]), (FXP_STATUS, &[0u8, 0, 0, 0][..]));

    let keys = g.s3.keys(&g.prefix).await;
    assert_eq!(keys, [format!("{}acme/fine.csv", g.prefix)]);
    let fine = g.s3.get(&keys[0]).await.unwrap();
    assert_eq!(fine, b"12.50 EUR");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_replies_is_held_in_bounded_memory() {
    let g = Gateway::start(false, &[]).await;
    let key = ssh_keygen(g.w.path(), "stuck", "ed25519", None);
    g.w.run(&["user", "key", "add", "acme", key.to_str().unwrap()])
        .ok();
    g.write_file("r.csv", b"id,amount\n1,5\n");
    let before = g.server.rss_kib();
    // OpenSSH's ssh as the transport; its stdout is a pipe nobody reads, so once the pipe is
    // full ssh stops taking the server's replies off the connection.
    let mut child = Command::new("ssh")
        .args(["-p", &g.server.port().to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-i")
        .arg(key.with_extension(""))
        .args(["-s", "acme@127.0.0.1", "sftp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh (package openssh-client)");
    let mut stdin = child.stdin.take().unwrap();
    let _unread = child.stdout.take().unwrap();
    // 1,000,000 STAT requests (about 18 MB), written until the server stops taking them.
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let mut out = vec![0, 0, 0, 5, 1, 0, 0, 0, 3];
        for id in 0..1_000_000u32 {
            out.extend_from_slice(&packet(FXP_STAT, id, &string(b"/")));
            if out.len() > 1 << 20 && stdin.write_all(&std::mem::take(&mut out)).is_err() {
                return;
            }
        }
        let _ = stdin.write_all(&out);
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stuck = g.server.rss_kib();
    // Another partner is served meanwhile.
    let run = g.acme("put r.csv\n");
    assert_eq!(run.code, Some(0), "{run:#?}");
    let after = g.server.rss_kib();
    eprintln!(
        "client never reading: RSS {before} -> {stuck} KiB stuck, {after} KiB after another upload"
    );
    // What the server may hold for one session: its 8 MiB receive window of requests, and
    // replies up to the client's window, plus the SSH layer's own buffers.
    assert!(
        after < before + 24 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(!writer.is_finished(), "the server took every request");
    // Rather than hold the session until idle_timeout, wharf ends it once its read-ahead
    // queue is full and no reply has been read for 30 s.
    assert!(
        g.server
            .logs_within(
                "too many SFTP requests sent without reading the replies",
                Duration::from_secs(60)
            )
            .await,
        "the stalled session was not ended"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logged_in_session_outlives_login_timeout() {
    // A regression: the login deadline armed before the login still fired after it, so
    // every SFTP session (an upload of a few GiB, say) was cut at login_timeout.
    let g = Gateway::start(false, &[("WHARF_SFTP__LOGIN_TIMEOUT", "2s")]).await;
    let (_ssh, mut ch) = raw_sftp_initialized(g.server.addr, "acme", PW).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ch.write_all(&packet(FXP_STAT, 7, &string(b"/")))
        .await
        .unwrap();
    let (t, id, _) = reply(&mut ch).await;
    assert_eq!(
        (t, id),
        (105, 7),
        "expected SSH_FXP_ATTRS after login_timeout"
    );
    assert!(
        !g.server.log().contains("login_timeout"),
        "{}",
        g.server.log()
    );
}

/// An S3 endpoint that answers lookups (HEAD: no such key; GET: an empty listing) and takes
/// every write (PUT, POST) without ever answering: what a stuck S3 server looks like from the
/// gateway. garage did this under load: request headers taken, no reply, for good.
fn stuck_s3() -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut rd = BufReader::new(conn);
                loop {
                    let mut request = String::new();
                    if rd.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while rd.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        line.clear();
                    }
                    let reply = if request.starts_with("HEAD ") {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                    } else if request.starts_with("GET ") {
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>";
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                    } else {
                        // A write: take what comes, answer nothing.
                        let mut sink = [0u8; 64 * 1024];
                        while matches!(std::io::Read::read(rd.get_mut(), &mut sink), Ok(n) if n > 0)
                        {
                        }
                        return;
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_that_never_answers_fails_the_upload_instead_of_holding_it() {
    let hook = Receiver::start().await;
    let endpoint = format!("http://{}", stuck_s3());
    let sinks = crate::events::webhook_sink(&hook);
    let g = Gateway::start(
        false,
        &[
            ("WHARF_STORAGE__S3__ENDPOINT", &endpoint),
            ("WHARF_STORAGE__S3__REQUEST_TIMEOUT", "1s"),
            ("WHARF_EVENTS__SINKS", &sinks),
        ],
    )
    .await;
    // A file inside one part (PutObject) and one of several parts (CreateMultipartUpload).
    g.write_file("small.csv", b"date,amount\n2026-11-26,12.50\n");
    g.write_file("big.bin", &crate::harness::random_bytes(12 << 20));
    for name in ["small.csv", "big.bin"] {
        let mut child = crate::harness::spawn_acme_sftp(
            g.server.port(),
            g.w.path(),
            &[],
            format!("put {name}\n").as_bytes(),
        );
        // Three attempts of 1 s each plus the SDK's backoff; without the limit, never.
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(40) {
                let _ = child.kill();
                panic!("{name}: the upload still hangs after 40 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            !status.success(),
            "{name}: the upload cannot have succeeded"
        );
    }
    let got = hook.wait_accepted(2, Duration::from_secs(20)).await;
    let mut failed: Vec<String> = got
        .iter()
        .map(|r| r.json())
        .inspect(|ev| assert_eq!(ev["type"], "wharf.upload.failed", "{ev}"))
        .map(|ev| ev["subject"].as_str().unwrap().to_string())
        .collect();
    failed.sort();
    assert_eq!(failed, ["/big.bin", "/small.csv"]);
    assert!(g.server.log().contains("timeout"), "the log says why");
}
