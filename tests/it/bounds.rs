//! One partner cannot hurt the others: every amount a client can make the server hold has a
//! bound, and each test here tries to break one while an honest partner's upload on the same
//! instance still lands.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::harness::raw::*;
use crate::harness::{random_bytes, sftp_command, Auth, Gateway, TrustAll, PW};

/// An honest partner uploading `name` (`size` random bytes) with OpenSSH's sftp, in the
/// background; `check` waits for it and asserts it landed byte for byte with its event.
struct Honest {
    name: String,
    data: Vec<u8>,
    child: std::process::Child,
}

impl Honest {
    fn start(g: &Gateway, name: &str, size: usize) -> Honest {
        let data = random_bytes(size);
        g.write_file(name, &data);
        let mut child = sftp_command(
            g.server.port(),
            "acme",
            &Auth::Password(PW.into()),
            g.w.path(),
            &[],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("sftp");
        child
            .stdin
            .take()
            .unwrap()
            .write_all_sync(format!("put {name} honest-{name}\n").as_bytes());
        Honest {
            name: name.to_string(),
            data,
            child,
        }
    }

    async fn check(mut self, g: &Gateway) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the honest upload hangs");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.success(), "the honest upload failed: {status}");
        let rel = format!("honest-{}", self.name);
        assert_eq!(
            g.stored(&rel).await.map(|d| Sha256::digest(d).to_vec()),
            Some(Sha256::digest(&self.data).to_vec()),
            "{rel} not stored byte for byte"
        );
        let ev = g
            .wait_jsonl_event("wharf.upload.completed", &format!("/{rel}"))
            .await;
        assert_eq!(ev["data"]["bytes"], self.data.len() as u64);
    }
}

trait WriteAllSync {
    fn write_all_sync(self, data: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, data: &[u8]) {
        use std::io::Write as _;
        self.write_all(data).unwrap();
    }
}

/// Sends every write without waiting for replies (replies are read meanwhile, as a client
/// must, or its own SSH layer stalls): (code, message) per write, in order.
async fn pipelined_writes<S>(ch: &mut S, first_id: u32, writes: &[Vec<u8>]) -> Vec<(u32, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(ch);
    let sending = async {
        for (i, body) in writes.iter().enumerate() {
            wr.write_all(&packet(FXP_WRITE, first_id + i as u32, body))
                .await
                .unwrap();
        }
    };
    let receiving = async {
        let mut out = Vec::new();
        for i in 0..writes.len() {
            // Up to the server's 10 s wait for memory, and then some.
            let (t, id, rest) = reply_within(&mut rd, Duration::from_secs(30)).await;
            assert_eq!((t, id), (FXP_STATUS, first_id + i as u32));
            out.push(status(&rest));
        }
        out
    };
    let ((), out) = tokio::join!(sending, receiving);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_writes_are_held_within_their_bounds() {
    let g = Gateway::start(false, &[]).await;
    let honest = Honest::start(&g, "settlement.bin", 20 << 20);
    let before = g.server.rss_kib();
    let (_ssh, mut ch) = crate::harness::raw_sftp_initialized(g.server.addr, "acme", PW).await;
    let chunk = random_bytes(250_000);

    // Overlapping writes that never fill offset 0 (1, 2, 3, …): once held 835 MiB for 4,000
    // of them. The second already overlaps the first and is refused when it arrives.
    let h = open_write(&mut ch, 1, b"overlap.bin").await.unwrap();
    let writes: Vec<Vec<u8>> = (1..=400u64)
        .map(|off| write_body(&h, off, &chunk))
        .collect();
    let replies = pipelined_writes(&mut ch, 100, &writes).await;
    assert_eq!(replies[0].0, 0, "{:?}", replies[0]);
    assert_eq!(replies[1].0, 8, "{:?}", replies[1]);
    assert!(replies[1].1.contains("overlaps"), "{:?}", replies[1]);
    assert!(replies.iter().skip(1).all(|r| r.0 == 8));

    // Writes past a gap are held up to the 8 MiB window, no further.
    let h = open_write(&mut ch, 2, b"gap.bin").await.unwrap();
    let writes: Vec<Vec<u8>> = (0..40u64)
        .map(|k| write_body(&h, 1 + k * 250_000, &chunk))
        .collect();
    let replies = pipelined_writes(&mut ch, 1000, &writes).await;
    let held = replies.iter().take_while(|r| r.0 == 0).count();
    assert_eq!(held, 33, "{replies:?}"); // 33 × 250,000 bytes end within 8 MiB of offset 0
    assert!(replies[held].1.contains("reorder window"), "{replies:?}");

    // An offset whose end does not fit in 64 bits is refused, not wrapped around.
    let h = open_write(&mut ch, 9, b"wrap.bin").await.unwrap();
    let replies =
        pipelined_writes(&mut ch, 900, &[write_body(&h, u64::MAX - 4, &chunk[..10])]).await;
    assert_eq!(replies[0].0, 8, "{replies:?}");
    assert!(replies[0].1.contains("largest file size"), "{replies:?}");

    // Over all of a connection's files, at most 16 MiB is held.
    let mut refused = None;
    'files: for f in 0..4u32 {
        let h = open_write(&mut ch, 3 + f, format!("held-{f}.bin").as_bytes())
            .await
            .unwrap();
        let writes: Vec<Vec<u8>> = (0..30u64)
            .map(|k| write_body(&h, 1 + k * 250_000, &chunk))
            .collect();
        for (i, r) in pipelined_writes(&mut ch, 2000 + f * 100, &writes)
            .await
            .into_iter()
            .enumerate()
        {
            if r.0 != 0 {
                refused = Some((f, i, r));
                break 'files;
            }
        }
    }
    let (f, i, (code, msg)) = refused.expect("a connection held over 16 MiB out of order");
    assert_eq!(code, 8);
    assert!(msg.contains("held for this connection"), "{msg}");
    // 16 MiB / 250,000 bytes: the 68th write over all files is refused.
    assert_eq!(f * 30 + i as u32, 67, "refused at file {f}, write {i}");

    let grown = g.server.rss_kib().saturating_sub(before);
    eprintln!("RSS grew {grown} KiB while out-of-order writes were refused");
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
    honest.check(&g).await;
    // None of the refused uploads became visible.
    assert_eq!(g.stored_files().await, ["honest-settlement.bin"]);
}

/// An SSH connection (russh's client) logged in as `acme`.
async fn login(addr: std::net::SocketAddr) -> russh::client::Handle<TrustAll> {
    let config = Arc::new(russh::client::Config::default());
    let mut ssh = russh::client::connect(config, addr, TrustAll)
        .await
        .unwrap();
    assert!(ssh
        .authenticate_password("acme", PW)
        .await
        .unwrap()
        .success());
    ssh
}

#[tokio::test(flavor = "multi_thread")]
async fn channels_and_open_files_are_capped_per_connection() {
    let g = Gateway::start_on(true, false, &[]).await;
    let honest = Honest::start(&g, "statement.bin", 3 << 20);
    let ssh = login(g.server.addr).await;

    // Twenty session channels asked for; ten granted.
    let mut channels = Vec::new();
    for _ in 0..20 {
        if let Ok(c) = ssh.channel_open_session().await {
            channels.push(c);
        }
    }
    assert_eq!(channels.len(), 10, "session channels granted");
    let mut streams = Vec::new();
    for c in channels {
        c.request_subsystem(true, "sftp").await.unwrap();
        let mut s = c.into_stream();
        init(&mut s).await;
        streams.push(s);
    }

    // 256 write handles at most, over all ten channels (each once had 256 of its own).
    let mut granted = 0;
    let mut refusal = None;
    'open: for round in 0..40u32 {
        for (n, s) in streams.iter_mut().enumerate() {
            let id = round * 100 + n as u32;
            match open_write(s, id, format!("h-{round}-{n}.bin").as_bytes()).await {
                Ok(_) => granted += 1,
                Err(e) => {
                    refusal = Some(e);
                    break 'open;
                }
            }
        }
    }
    assert_eq!(granted, 256);
    let (code, msg) = refusal.expect("a refusal");
    assert_eq!(code, 4, "{msg}");
    assert!(msg.contains("at most 256 per connection"), "{msg}");

    honest.check(&g).await;
    // The connection goes away: its 256 unfinished uploads leave nothing behind.
    drop(streams);
    drop(ssh);
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.stored_files().await != ["honest-statement.bin"] {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            g.stored_files().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `S3Upload::write` once waited for memory while holding the budget of its unfilled part:
/// concurrent uploads each holding part of a part waited on each other for ever (0 of 64
/// landed). Here 32 uploads share a budget of two 5 MiB parts (and a 2 MiB heads pool).
#[tokio::test(flavor = "multi_thread")]
async fn far_more_uploads_than_the_budget_holds_parts_all_land() {
    let g = Gateway::start(false, &[("WHARF_STORAGE__UPLOAD_MEMORY", "16MiB")]).await;
    let uploads: Vec<Honest> = (0..32)
        .map(|i| {
            // Twenty-four of two parts each, eight small ones.
            let size = if i < 24 {
                (8 << 20) + i * 1000
            } else {
                40_000 + i
            };
            Honest::start(&g, &format!("f{i}.bin"), size)
        })
        .collect();
    for u in uploads {
        u.check(&g).await;
    }
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
    let rss = g.server.rss_kib();
    eprintln!("RSS after 32 concurrent uploads on a 16 MiB budget: {rss} KiB");
}

/// A connection's requests are served in order, so an upload of it waiting for memory also
/// holds up its other uploads. Here one channel fills both parts of a small budget with two
/// uploads, then starts a third: waiting for good would leave all three (and every other
/// upload needing a part) stuck. The third is refused after a bounded wait; the other two
/// land, and so do other partners' uploads, small ones meanwhile and large ones after.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_multiplexed_on_one_channel_cannot_deadlock_on_memory() {
    let g = Gateway::start(false, &[("WHARF_STORAGE__UPLOAD_MEMORY", "16MiB")]).await;
    let (_ssh, mut ch) = crate::harness::raw_sftp_initialized(g.server.addr, "acme", PW).await;
    let h: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for (i, name) in ["one.bin", "two.bin", "three.bin"].iter().enumerate() {
            v.push(
                open_write(&mut ch, i as u32 + 1, name.as_bytes())
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let piece = 255 * 1024;
    let data: Vec<Vec<u8>> = (0..3).map(|_| random_bytes(24 * piece)).collect();
    let write = |f: usize, k: usize| {
        write_body(
            &h[f],
            (k * piece) as u64,
            &data[f][k * piece..(k + 1) * piece],
        )
    };
    // Six writes (1.5 MiB, past the small-file head) to each of the first two: they hold
    // both parts of the budget.
    let first: Vec<Vec<u8>> = (0..2)
        .flat_map(|f| (0..6).map(move |k| (f, k)))
        .map(|(f, k)| write(f, k))
        .collect();
    let replies = pipelined_writes(&mut ch, 100, &first).await;
    assert!(replies.iter().all(|r| r.0 == 0), "{replies:?}");
    // Another partner's small file needs no part: it lands meanwhile.
    let small = Honest::start(&g, "small-file.csv", 500_000);
    small.check(&g).await;
    // The third upload on the channel (more writes than its queue holds, so the channel waits
    // with it), then the rest of the first two behind it.
    let mut writes: Vec<Vec<u8>> = (0..12).map(|k| write(2, k)).collect();
    let mut whose = vec![2; 12];
    for k in 6..24 {
        for f in 0..2 {
            writes.push(write(f, k));
            whose.push(f);
        }
    }
    let replies = tokio::time::timeout(
        Duration::from_secs(90),
        pipelined_writes(&mut ch, 200, &writes),
    )
    .await
    .expect("the channel is stuck: uploads deadlocked on upload memory");
    for (r, f) in replies.iter().zip(&whose) {
        if *f < 2 {
            assert_eq!(r.0, 0, "upload {f}: {r:?}");
        }
    }
    let refused: Vec<_> = replies
        .iter()
        .zip(&whose)
        .filter(|(_, f)| **f == 2)
        .map(|(r, _)| r)
        .collect();
    assert!(
        refused
            .iter()
            .any(|r| r.0 == 4 && r.1.contains("upload memory")),
        "{refused:?}"
    );
    for (i, handle) in h.iter().enumerate() {
        ch.write_all(&packet(FXP_CLOSE, 900 + i as u32, &string(handle)))
            .await
            .unwrap();
        let (t, _, rest) = reply(&mut ch).await;
        assert_eq!(t, FXP_STATUS);
        assert_eq!(
            status(&rest).0 == 0,
            i < 2,
            "close {i}: {:?}",
            status(&rest)
        );
    }
    for (f, name) in ["one.bin", "two.bin"].iter().enumerate() {
        assert_eq!(
            g.stored(name).await.as_deref(),
            Some(&data[f][..]),
            "{name}"
        );
    }
    // The memory is free again for another partner's large upload.
    Honest::start(&g, "large-file.bin", 12 << 20)
        .check(&g)
        .await;
    assert!(g.stored("three.bin").await.is_none());
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
}

/// A sink's answers cannot freeze an account's events (a Retry-After of a day is capped at the
/// longest backoff, 5 minutes) nor send the signed event elsewhere (redirects are not
/// followed).
#[tokio::test(flavor = "multi_thread")]
async fn webhooks_cannot_stall_or_redirect_events() {
    let stalling = crate::harness::Receiver::start().await;
    stalling
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    stalling.set_reply_headers("retry-after: 86400\r\n");
    let elsewhere = crate::harness::Receiver::start().await;
    let redirecting = crate::harness::Receiver::start().await;
    redirecting
        .status
        .store(307, std::sync::atomic::Ordering::SeqCst);
    redirecting.set_reply_headers(&format!("location: {}\r\n", elsewhere.url()));
    let sinks = format!(
        "[{{name = \"stall\", type = \"webhook\", url = \"{}\", secret = \"s\"}}, \
          {{name = \"redirect\", type = \"webhook\", url = \"{}\", secret = \"s\"}}]",
        stalling.url(),
        redirecting.url()
    );
    let g = Gateway::start(false, &[("WHARF_EVENTS__SINKS", &sinks)]).await;
    g.write_file("r.csv", b"id,amount\n1,5\n");
    g.acme("put r.csv\n").ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let retries = loop {
        let lines: Vec<serde_json::Value> = g
            .server
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| {
                v["activity"] == "EVENT_DELIVERY" && v["outcome"] == "retry"
            })
            .collect();
        if lines.iter().any(|v| v["sink"] == "stall")
            && lines.iter().any(|v| v["sink"] == "redirect")
        {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no retries logged: {}",
            g.server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for r in &retries {
        let ms = r["retry_in_ms"].as_u64().unwrap();
        assert!(ms <= 300_000, "retry in {ms} ms: {r}");
    }
    let redirect = retries.iter().find(|v| v["sink"] == "redirect").unwrap();
    assert!(
        redirect["error"].as_str().unwrap().contains("307"),
        "{redirect}"
    );
    assert_eq!(redirecting.all().len(), 1);
    assert!(elsewhere.all().is_empty(), "the redirect was followed");
}

/// A directory is listed as the client reads it: the first READDIR of a prefix with thousands
/// of objects is answered after one ListObjectsV2 (a page of 500), not after all of them, and
/// FTPS LIST/NLST stream the same pages.
#[tokio::test(flavor = "multi_thread")]
async fn listings_stream_a_page_at_a_time() {
    use crate::observability::{sample, scrape};
    let hook = crate::harness::Receiver::start().await;
    let g = crate::ftps::ftps_gateway_with(&hook, false, &[]).await;
    g.grant_acme_everything();
    const N: usize = 2600;
    let names: Vec<String> = (0..N).map(|i| format!("r{i:05}.csv")).collect();
    let mut puts = tokio::task::JoinSet::new();
    for chunk in names.chunks(N / 32 + 1) {
        let (s3, prefix, chunk) = (g.s3.clone(), g.prefix.clone(), chunk.to_vec());
        puts.spawn(async move {
            for n in chunk {
                s3.client
                    .put_object()
                    .bucket(&s3.bucket)
                    .key(format!("{prefix}acme/big/{n}"))
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
                    .send()
                    .await
                    .unwrap();
            }
        });
    }
    while puts.join_next().await.is_some() {}

    let series = "wharf_s3_request_duration_seconds_count{operation=\"ListObjectsV2\"}";
    let before = sample(&scrape(&g.server).await, series);
    let (_ssh, mut ch) = crate::harness::raw_sftp_initialized(g.server.addr, "acme", PW).await;
    ch.write_all(&packet(FXP_OPENDIR, 1, &string(b"/big")))
        .await
        .unwrap();
    let (t, _, rest) = reply(&mut ch).await;
    assert_eq!(t, FXP_HANDLE);
    let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    let handle = rest[4..4 + n].to_vec();
    let mut listed: Vec<String> = Vec::new();
    let mut id = 2;
    loop {
        ch.write_all(&packet(FXP_READDIR, id, &string(&handle)))
            .await
            .unwrap();
        let (t, _, rest) = reply(&mut ch).await;
        if t == FXP_STATUS {
            assert_eq!(status(&rest).0, 1, "READDIR ended with {:?}", status(&rest));
            break;
        }
        assert_eq!(t, FXP_NAME);
        listed.extend(name_entries(&rest));
        if id == 2 {
            let after = sample(&scrape(&g.server).await, series);
            assert_eq!(
                after - before,
                1.0,
                "ListObjectsV2 calls before the first entries"
            );
        }
        id += 1;
    }
    assert_eq!(listed, names);
    let total = sample(&scrape(&g.server).await, series) - before;
    assert_eq!(total, N.div_ceil(500) as f64, "one ListObjectsV2 per page");

    // FTPS: NLST and LIST of the same directory, streamed from the same pages.
    let url = format!(
        "ftp://127.0.0.1:{}/big/",
        g.server.ftps_addr.expect("ftps").port()
    );
    let login = format!("acme:{PW}");
    for args in [&["--list-only"][..], &[]] {
        let out = crate::ftps::curl(
            &g,
            &[&["--ssl-reqd", "--user", &login][..], args, &[&url]].concat(),
        );
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), N, "{args:?}");
        assert!(
            lines[N - 1].ends_with(&names[N - 1]),
            "{args:?}: {}",
            lines[N - 1]
        );
    }
}

/// The names in an SSH_FXP_NAME reply's body (after the id).
fn name_entries(rest: &[u8]) -> Vec<String> {
    let count = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    let mut at = 4;
    let take_string = |at: &mut usize| {
        let n = u32::from_be_bytes(rest[*at..*at + 4].try_into().unwrap()) as usize;
        let s = String::from_utf8_lossy(&rest[*at + 4..*at + 4 + n]).into_owned();
        *at += 4 + n;
        s
    };
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(take_string(&mut at));
        let _long = take_string(&mut at);
        // Attributes: flags, then the fields they name (size, uid/gid, permissions, times).
        let flags = u32::from_be_bytes(rest[at..at + 4].try_into().unwrap());
        at += 4;
        if flags & 1 != 0 {
            at += 8;
        }
        if flags & 2 != 0 {
            at += 8;
        }
        if flags & 4 != 0 {
            at += 4;
        }
        if flags & 8 != 0 {
            at += 8;
        }
    }
    out
}

/// russh takes channel data messages up to 256 KiB whatever maximum packet size the server
/// announced; wharf ends a session that sends one larger than it announced (64 KiB), as data
/// or as extended data, so the 64 messages queued per channel hold at most 4 MiB. An honest
/// upload lands meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn channel_data_past_the_announced_packet_size_ends_the_session() {
    let g = Gateway::start(false, &[]).await;
    let honest = Honest::start(&g, "honest.bin", 3 << 20);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/oversized_channel_data.py");
    // As data, then as extended data (stderr), which russh queues the same way.
    for kind in ["stdout", "stderr"] {
        let out = tokio::process::Command::new("python3")
            .env("WHARF_TEST_PASSWORD", PW)
            .arg(&script)
            .args([&g.server.port().to_string(), "acme", "200000", kind])
            .output()
            .await
            .expect("python3 with paramiko");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the script failed ({kind}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "closed", "the session stayed open ({kind})");
    }
    assert!(
        g.server
            .logs_within(
                "larger than the announced maximum packet size",
                Duration::from_secs(5)
            )
            .await,
        "no protocol violation logged"
    );
    honest.check(&g).await;
}

/// Complete SFTP packets out of a channel's data messages: (type, request id, rest).
fn sftp_packets(buf: &mut Vec<u8>) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        if buf.len() < 4 + len {
            break;
        }
        let body: Vec<u8> = buf.drain(..4 + len).skip(4).collect();
        let id = if body[0] == 2 {
            0 // VERSION has no request id
        } else {
            u32::from_be_bytes(body[1..5].try_into().unwrap())
        };
        out.push((body[0], id, body[5.min(body.len())..].to_vec()));
    }
    out
}

/// A TCP proxy holding every byte `one_way_ms` each way (`bench/delay_proxy.py`): a long link.
struct DelayProxy {
    _child: tokio::process::Child,
    port: u16,
}

impl DelayProxy {
    async fn start(upstream: std::net::SocketAddr, one_way_ms: u32) -> DelayProxy {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = tokio::process::Command::new("python3")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/delay_proxy.py"))
            .args(["0", &upstream.to_string(), &one_way_ms.to_string()])
            .arg(&port_file)
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        for _ in 0..100 {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                return DelayProxy {
                    _child: child,
                    port,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the delay proxy did not start");
    }
}

/// Uploads 64 MiB as 256 writes of 255 KiB all sent at once (four times what OpenSSH keeps in
/// flight) over `addr`, checks every reply, and returns every window size the server's
/// adjustments gave the client and the server's peak RSS meanwhile.
async fn deep_upload(g: &Gateway, addr: std::net::SocketAddr, name: &str) -> (Vec<u32>, u64) {
    use russh::ChannelMsg;
    const CHUNK: usize = 255 * 1024;
    const WRITES: usize = 256;
    let data = Arc::new(random_bytes(CHUNK * WRITES));
    let ssh = login(addr).await;
    let ch = ssh.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let (mut rd, wr) = ch.split();
    let mut buf = Vec::new();
    let mut windows: Vec<u32> = Vec::new();
    // Reads until `n` SFTP packets have come, noting every window adjustment.
    macro_rules! replies {
        ($n:expr) => {{
            let mut got = Vec::new();
            while got.len() < $n {
                match tokio::time::timeout(Duration::from_secs(60), rd.wait()).await {
                    Ok(Some(ChannelMsg::Data { data })) => {
                        buf.extend_from_slice(&data);
                        got.extend(sftp_packets(&mut buf));
                    }
                    Ok(Some(ChannelMsg::WindowAdjusted { new_size })) => windows.push(new_size),
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("the channel closed"),
                    Err(_) => panic!("no reply within 60 s"),
                }
            }
            got
        }};
    }
    wr.data(&[0u8, 0, 0, 5, 1, 0, 0, 0, 3][..]).await.unwrap();
    assert_eq!(replies!(1)[0].0, 2, "expected SSH_FXP_VERSION");
    let mut open = string(name.as_bytes());
    open.extend_from_slice(&0x1au32.to_be_bytes());
    open.extend_from_slice(&0u32.to_be_bytes());
    wr.data(&packet(FXP_OPEN, 1, &open)[..]).await.unwrap();
    let (t, _, rest) = replies!(1).remove(0);
    assert_eq!(t, FXP_HANDLE);
    let handle = rest[4..4 + u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize].to_vec();
    // Every write sent without waiting for a reply; only the SSH window holds the sender.
    let sender = {
        let (data, handle) = (data.clone(), handle.clone());
        tokio::spawn(async move {
            for i in 0..WRITES {
                let chunk = &data[i * CHUNK..(i + 1) * CHUNK];
                let p = packet(
                    FXP_WRITE,
                    10 + i as u32,
                    &write_body(&handle, (i * CHUNK) as u64, chunk),
                );
                wr.data(&p[..]).await.unwrap();
            }
            wr
        })
    };
    let mut peak_rss = g.server.rss_kib();
    let mut acked = 0;
    while acked < WRITES {
        for (t, id, rest) in replies!(1) {
            assert_eq!((t, id), (FXP_STATUS, 10 + acked as u32));
            assert_eq!(status(&rest).0, 0, "write {acked}: {:?}", status(&rest));
            acked += 1;
        }
        peak_rss = peak_rss.max(g.server.rss_kib());
    }
    let wr = sender.await.unwrap();
    wr.data(&packet(FXP_CLOSE, 9, &string(&handle))[..])
        .await
        .unwrap();
    let (t, _, rest) = replies!(1).remove(0);
    assert_eq!(
        (t, status(&rest).0),
        (FXP_STATUS, 0),
        "close: {:?}",
        status(&rest)
    );
    assert_eq!(
        g.stored(name).await.map(|d| Sha256::digest(d).to_vec()),
        Some(Sha256::digest(&data[..]).to_vec()),
        "{name} not stored byte for byte"
    );
    (windows, peak_rss)
}

/// On a long link (100 ms round trip through a delay proxy) the SSH window grows past the
/// 8 MiB it starts with, so a client is not held to 4 MiB per round trip, and never past its
/// 64 MiB cap; on a short link it stays at 8 MiB. Either way a client that sends everything at
/// once gains nothing in wharf's memory from the wider window (russh stops reading the
/// connection as soon as the SFTP request queue is full), and an honest upload still lands.
#[tokio::test(flavor = "multi_thread")]
async fn the_ssh_window_grows_on_a_long_link_only_and_never_past_its_cap() {
    const INITIAL: u32 = 8 << 20;
    const CAP: u32 = 64 << 20;
    let g = Gateway::start(false, &[]).await;
    let honest = Honest::start(&g, "honest.bin", 3 << 20);
    let rss_before = g.server.rss_kib();

    let proxy = DelayProxy::start(g.server.addr, 50).await;
    let far: std::net::SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let (windows, peak_far) = deep_upload(&g, far, "far.bin").await;
    let widest = windows.iter().copied().max().unwrap_or(0);
    eprintln!("long link: {} adjustments, widest {widest}", windows.len());
    assert!(widest > INITIAL, "the window never grew: {windows:?}");
    assert!(
        windows.iter().all(|w| *w <= CAP),
        "past the cap: {windows:?}"
    );
    drop(proxy);

    let (windows, peak_near) = deep_upload(&g, g.server.addr, "near.bin").await;
    eprintln!("short link: {} adjustments", windows.len());
    assert!(!windows.is_empty(), "no window adjustment at all");
    assert!(
        windows.iter().all(|w| *w <= INITIAL),
        "the window grew on a short link: {windows:?}"
    );
    // Each upload holds its S3 part buffers (5 MiB parts here, up to 4 in flight and 1
    // filling); what the wider window adds is nothing on top of that.
    let peak = peak_far.max(peak_near);
    assert!(
        peak < rss_before + 100 * 1024,
        "RSS grew from {rss_before} KiB to {peak} KiB"
    );
    honest.check(&g).await;
}
