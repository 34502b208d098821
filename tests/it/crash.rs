//! Crash safety, with the real binary killed at the worst moments (the `WHARF_TEST_CRASH_AT`
//! points of debug builds abort the process like kill -9) and started again: every object is
//! either absent or present with exactly one completed event, no multipart upload or temp file
//! is left, and each event reaches each sink once. Also two writers of one name, two instances
//! behind a slow webhook, and an S3 whose answer to CompleteMultipartUpload is lost.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::{random_bytes, Gateway, Receiver};

const CRASH_AT: &str = "WHARF_TEST_CRASH_AT";
/// Recovery fast enough for a test: a dead instance is noticed after 3 s.
const FAST_RECOVERY: [(&str, &str); 3] = [
    ("WHARF_RECOVERY__HEARTBEAT", "1s"),
    ("WHARF_RECOVERY__INTERVAL", "1s"),
    ("WHARF_RECOVERY__ORPHAN_GRACE", "3s"),
];

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A gateway that will abort at `point`, with fast recovery.
async fn crashing(postgres: bool, point: &str, extra: &[(&str, &str)]) -> Gateway {
    let mut env: Vec<(&str, &str)> = FAST_RECOVERY.to_vec();
    env.push((CRASH_AT, point));
    env.extend_from_slice(extra);
    Gateway::start(postgres, &env).await
}

/// The server reached its crash point (and did not simply fail).
#[track_caller]
fn crashed(g: &mut Gateway, point: &str) {
    let status = g.server.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "the server did not crash at {point}");
    assert!(
        g.server
            .log()
            .contains(&format!("crash point {point} reached")),
        "{}",
        g.server.log()
    );
}

/// Completed (or failed) events of the jsonl sink for `path`.
fn events_for(g: &Gateway, kind: &str, path: &str) -> Vec<serde_json::Value> {
    g.jsonl_events()
        .into_iter()
        .filter(|e| e["type"] == kind && e["data"]["path"] == path)
        .collect()
}

/// Waits until the jsonl sink has an event of `kind` for `path`, then a little more (for
/// duplicates to show), and returns them all.
async fn settled(g: &Gateway, kind: &str, path: &str) -> Vec<serde_json::Value> {
    g.wait_jsonl_event(kind, path).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    events_for(g, kind, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_committed_before_its_event_is_announced_after_a_crash() {
    for (size, name) in [((12 << 20) + 7, "large.bin"), (100_000, "small.csv")] {
        let mut g = crashing(false, "upload.after_commit", &[]).await;
        let data = random_bytes(size);
        g.write_file(name, &data);
        let run = g.acme(&format!("put {name}\n"));
        assert_ne!(run.code, Some(0), "the client saw a success: {run:?}");
        crashed(&mut g, "upload.after_commit");
        // Visible, but nobody has been told.
        assert_eq!(g.stored(name).await.as_deref(), Some(&data[..]));
        assert!(events_for(&g, "wharf.upload.completed", &format!("/{name}")).is_empty());
        assert_eq!(g.count_rows("commit_intents").await, 1);

        g.restart(&[CRASH_AT], &[]);
        let got = settled(&g, "wharf.upload.completed", &format!("/{name}")).await;
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0]["data"]["sha256"], sha(&data));
        assert_eq!(got[0]["data"]["bytes"], size as u64);
        assert!(events_for(&g, "wharf.upload.failed", &format!("/{name}")).is_empty());
        assert_eq!(g.count_rows("commit_intents").await, 0);
        assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
        assert!(g.server.log().contains("\"RECOVERED\""));
    }
}

/// An intent whose clearing was lost while its instance lives on does not lock its name for
/// ever: after 15 minutes the reconciler settles it like a dead instance's.
#[tokio::test(flavor = "multi_thread")]
async fn a_forsaken_commit_intent_of_a_live_instance_is_settled() {
    let mut g = crashing(false, "upload.after_commit", &[]).await;
    let data = random_bytes(100_000);
    g.write_file("late.csv", &data);
    let run = g.acme("put late.csv\n");
    assert_ne!(run.code, Some(0), "the client saw a success: {run:?}");
    crashed(&mut g, "upload.after_commit");
    assert_eq!(g.count_rows("commit_intents").await, 1);
    // An instance is taken for dead after three of its own heartbeats: as if the crashed
    // one beat once an hour, it counts as alive, and only the intent's age can settle it.
    g.execute("UPDATE instances SET lapse_us = 3 * 3600 * 1000000 WHERE id IN (SELECT instance FROM commit_intents)")
        .await;
    g.restart(&[CRASH_AT], &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(events_for(&g, "wharf.upload.completed", "/late.csv").is_empty());
    assert_eq!(g.count_rows("commit_intents").await, 1);
    g.execute("UPDATE commit_intents SET created_us = created_us - 16 * 60 * 1000000")
        .await;
    let got = settled(&g, "wharf.upload.completed", "/late.csv").await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["data"]["sha256"], sha(&data));
    assert_eq!(g.count_rows("commit_intents").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_by_a_crash_before_its_commit_leaves_nothing() {
    // Mid-multipart (parts in S3, the multipart upload open) and just before the commit.
    for point in ["upload.mid_multipart", "upload.before_commit"] {
        let mut g = crashing(true, point, &[]).await;
        let data = random_bytes((20 << 20) + 3);
        g.write_file("big.bin", &data);
        let run = g.acme("put big.bin\n");
        assert_ne!(run.code, Some(0), "{point}: {run:?}");
        crashed(&mut g, point);
        assert!(
            !g.s3.open_multipart_uploads(&g.prefix).await.is_empty(),
            "{point}: no multipart upload was open"
        );
        g.restart(&[CRASH_AT], &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !g.s3.open_multipart_uploads(&g.prefix).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{point}: the multipart upload is still open"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let failed = settled(&g, "wharf.upload.failed", "/big.bin").await;
        assert_eq!(failed.len(), 1, "{point}: {failed:#?}");
        assert_eq!(failed[0]["data"]["failure_code"], "interrupted");
        assert!(events_for(&g, "wharf.upload.completed", "/big.bin").is_empty());
        assert!(g.stored("big.bin").await.is_none(), "{point}");
        assert_eq!(g.count_rows("live_uploads").await, 0, "{point}");
        assert_eq!(g.count_rows("commit_intents").await, 0, "{point}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rename_cut_between_copy_and_delete_arrives_once() {
    let mut g = crashing(false, "rename.after_copy", &[]).await;
    let data = random_bytes(300_000);
    g.write_file("report.csv", &data);
    let run = g.acme("put report.csv report.csv.filepart\nrename report.csv.filepart report.csv\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    crashed(&mut g, "rename.after_copy");
    // Copied, not yet deleted, not announced.
    assert_eq!(g.stored("report.csv").await.as_deref(), Some(&data[..]));
    assert!(g.stored("report.csv.filepart").await.is_some());
    g.restart(&[CRASH_AT], &[]);
    let got = settled(&g, "wharf.upload.completed", "/report.csv").await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["data"]["sha256"], sha(&data));
    assert_eq!(got[0]["data"]["bytes"], data.len() as u64);
    assert_eq!(g.stored_files().await, ["report.csv"]);
    assert_eq!(g.count_rows("commit_intents").await, 0);
    assert_eq!(g.count_rows("staged_uploads").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_cut_before_it_is_recorded_is_not_written_twice() {
    // The dead instance's claim lapses after its lease (held at least the sink's timeout plus
    // 5 s while it delivered): about 15 s here.
    let mut g = crashing(
        false,
        "delivery.after_send",
        &[("WHARF_EVENTS__LEASE", "2s")],
    )
    .await;
    g.write_file("r.csv", b"id,amount\n1,5\n");
    // The close succeeds (the event is in the outbox); the crash comes with its delivery.
    g.acme("put r.csv\n").ok();
    crashed(&mut g, "delivery.after_send");
    let first = events_for(&g, "wharf.upload.completed", "/r.csv");
    assert_eq!(first.len(), 1, "the sink got it before the crash");
    g.restart(&[CRASH_AT], &[]);
    // Redelivered after the restart (the delivery was never recorded) but written once.
    let deadline = Instant::now() + Duration::from_secs(45);
    while !g.server.log().contains("\"EVENT_DELIVERY\"") {
        assert!(
            Instant::now() < deadline,
            "no redelivery: {}",
            g.server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lines = std::fs::read_to_string(g.w.file("events.jsonl")).unwrap();
    let id = first[0]["id"].as_str().unwrap();
    assert_eq!(lines.matches(id).count(), 1, "{lines}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_behind_a_slow_webhook_deliver_each_event_once_in_order() {
    let hook = Receiver::start().await;
    hook.delay_ms
        .store(700, std::sync::atomic::Ordering::SeqCst);
    let sinks = crate::events::webhook_sink(&hook);
    let mut g = Gateway::start(
        true,
        &[
            ("WHARF_EVENTS__SINKS", &sinks),
            ("WHARF_EVENTS__LEASE", "5s"),
        ],
    )
    .await;
    // A second instance on the same database.
    let second = crate::harness::Server::start(&g.w);
    let mut batch = String::new();
    for i in 0..40 {
        let name = format!("f{i:02}.csv");
        g.write_file(&name, format!("{i}\n").as_bytes());
        batch.push_str(&format!("put {name}\n"));
    }
    g.acme(&batch).ok();
    let got = hook.wait_accepted(40, Duration::from_secs(120)).await;
    assert_eq!(got.len(), 40, "events delivered: {}", got.len());
    // Nothing more comes: no event was sent twice.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let all = hook.all();
    let subjects: Vec<String> = all
        .iter()
        .map(|r| r.json()["subject"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("/f{i:02}.csv")).collect();
    assert_eq!(subjects, expected, "duplicates or out of order");
    drop(second);
    g.server.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_uploads_of_one_name_leave_one_writer_and_a_true_last_event() {
    for overwrite in [false, true] {
        let g = Gateway::start(false, &[]).await;
        let perms = if overwrite {
            "list,upload,overwrite,rename,mkdir"
        } else {
            "list,upload,rename,mkdir"
        };
        g.w.run(&["user", "set", "acme", "--permissions", perms])
            .ok();
        let (a, b) = (random_bytes((6 << 20) + 1), random_bytes((6 << 20) + 2));
        g.write_file("a.bin", &a);
        g.write_file("b.bin", &b);
        // Two sessions open the same name before either closes.
        let mut children = Vec::new();
        for src in ["a.bin", "b.bin"] {
            let mut c = crate::harness::sftp_command(
                g.server.port(),
                "acme",
                &crate::harness::Auth::Password(crate::harness::PW.into()),
                g.w.path(),
                &["-l", "20000"],
            )
            .spawn()
            .unwrap();
            use std::io::Write as _;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("put {src} same.bin\n").as_bytes())
                .unwrap();
            children.push(c);
        }
        let outs: Vec<std::process::Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let ok: Vec<bool> = outs.iter().map(|o| o.status.success()).collect();
        let why = || {
            format!(
                "{:?}\n{}",
                outs.iter()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .collect::<Vec<_>>(),
                g.server.log()
            )
        };
        let stored = g.stored("same.bin").await.expect("one of them landed");
        let completed: Vec<serde_json::Value> = {
            tokio::time::sleep(Duration::from_secs(2)).await;
            events_for(&g, "wharf.upload.completed", "/same.bin")
        };
        if overwrite {
            // Both land, one after the other; or, on an S3 server that keeps the upload
            // started last (garage), the older one is told it was superseded.
            let superseded = events_for(&g, "wharf.upload.failed", "/same.bin");
            match ok.iter().filter(|o| **o).count() {
                2 => assert_eq!(completed.len(), 2, "{completed:#?}"),
                1 => {
                    assert_eq!(completed.len(), 1, "{completed:#?}");
                    assert_eq!(superseded.len(), 1, "{}", why());
                    assert_eq!(superseded[0]["data"]["failure_code"], "superseded");
                }
                _ => panic!("neither landed: {}", why()),
            }
        } else {
            assert_eq!(ok.iter().filter(|o| **o).count(), 1, "{ok:?} {}", why());
            assert_eq!(completed.len(), 1, "{completed:#?}");
            let refused = events_for(&g, "wharf.upload.failed", "/same.bin");
            assert_eq!(refused.len(), 1, "{refused:#?} {}", why());
            assert_eq!(refused[0]["data"]["failure_code"], "already_exists");
        }
        // The last event for the key describes the bytes that are there.
        let last = completed.last().unwrap();
        assert_eq!(
            last["data"]["sha256"],
            sha(&stored),
            "overwrite={overwrite}"
        );
    }
}

/// Renames announce exactly what was renamed, whatever route the file took.
#[tokio::test(flavor = "multi_thread")]
async fn renamed_files_arrive_with_exact_sizes_and_hashes() {
    let g = Gateway::start(false, &[]).await;
    let data = random_bytes(700_000);
    g.write_file("r.csv", &data);
    // Final -> temp -> final: staged from its first arrival.
    g.acme("put r.csv\nrename r.csv r.csv.part\nrename r.csv.part back.csv\n")
        .ok();
    // A temp file wharf never saw uploaded (put straight into the bucket), renamed in.
    let other = random_bytes(12345);
    g.put_object("acme/direct.csv.tmp", &other).await;
    g.acme("rename direct.csv.tmp direct.csv\n").ok();
    for (path, content) in [("/back.csv", &data), ("/direct.csv", &other)] {
        let e = g.wait_jsonl_event("wharf.upload.completed", path).await;
        assert_eq!(e["data"]["bytes"], content.len() as u64, "{path}: {e}");
        assert_eq!(e["data"]["sha256"], sha(content), "{path}: {e}");
    }
}

/// A proxy in front of the S3 server that withholds the answer to the first
/// CompleteMultipartUpload for `hold` (S3 has done it; the client never hears).
async fn losing_complete_answers(s3: &str, hold: Duration) -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = s3.trim_start_matches("http://").to_string();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let hold_next = Arc::new(AtomicBool::new(false));
            let (armed, flag) = (armed.clone(), hold_next.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let head = String::from_utf8_lossy(&buf[..n.min(512)]);
                    let first = head.lines().next().unwrap_or_default();
                    if first.starts_with("POST ")
                        && first.contains("uploadId=")
                        && armed.swap(false, Ordering::SeqCst)
                    {
                        flag.store(true, Ordering::SeqCst);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if hold_next.swap(false, Ordering::SeqCst) {
                        tokio::time::sleep(hold).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_complete_multipart_upload_is_settled_by_the_object() {
    let s3 = crate::harness::S3Env::from_env();
    let proxy = losing_complete_answers(&s3.endpoint, Duration::from_secs(15)).await;
    let g = Gateway::start(
        false,
        &[
            ("WHARF_STORAGE__S3__ENDPOINT", &proxy),
            ("WHARF_STORAGE__S3__REQUEST_TIMEOUT", "2s"),
        ],
    )
    .await;
    let data = random_bytes((11 << 20) + 5);
    g.write_file("statement.bin", &data);
    let started = Instant::now();
    g.acme("put statement.bin\n").ok();
    assert!(
        g.server
            .log()
            .contains("CompleteMultipartUpload failed but the object is there"),
        "the answer was not lost: {}",
        g.server.log()
    );
    eprintln!(
        "upload with a lost CompleteMultipartUpload answer took {:?}",
        started.elapsed()
    );
    assert_eq!(g.stored("statement.bin").await.as_deref(), Some(&data[..]));
    let got = settled(&g, "wharf.upload.completed", "/statement.bin").await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["data"]["sha256"], sha(&data));
    assert!(events_for(&g, "wharf.upload.failed", "/statement.bin").is_empty());
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
}

/// A receipt exists for every arrival that asks for one, crash or not: the reconciler's
/// announcement of an object committed before a crash brings its receipt with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_is_written_for_an_arrival_announced_after_a_crash() {
    let mut g = crashing(false, "upload.after_commit", &[]).await;
    g.w.dir_add(
        "acme",
        "/inbound",
        "acme/in",
        &["--receipt", "/outbound/{name}.receipt.json"],
    )
    .ok();
    g.w.dir_add("acme", "/outbound", "acme/out", &[]).ok();
    let data = random_bytes(50_000);
    g.write_file("late.csv", &data);
    let run = g.acme("put late.csv /inbound/late.csv\n");
    assert_ne!(run.code, Some(0), "the client saw a success: {run:?}");
    crashed(&mut g, "upload.after_commit");
    assert!(g.stored("out/late.csv.receipt.json").await.is_none());

    g.restart(&[CRASH_AT], &[]);
    let got = settled(&g, "wharf.upload.completed", "/inbound/late.csv").await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let receipt = g.wait_object("acme/out/late.csv.receipt.json").await;
    let r: serde_json::Value =
        serde_json::from_slice(&receipt.expect("a receipt after recovery")).unwrap();
    assert_eq!(r["sha256"], sha(&data));
    assert_eq!(r["event_id"], got[0]["id"]);
}

/// An intent for `location`, as a session would write it before committing.
fn intent(id: &str, location: &str) -> wharf::session::Intent {
    wharf::session::Intent {
        id: id.into(),
        kind: wharf::session::IntentKind::Upload,
        event_id: format!("e-{id}"),
        failed_event_id: format!("f-{id}"),
        location: location.into(),
        home: "file:///nowhere/".into(),
        path: "a.csv".into(),
        client_path: "/a.csv".into(),
        from_path: None,
        from_client_path: None,
        username: "acme".into(),
        session_id: "s".into(),
        protocol: "sftp".into(),
        client_ip: "127.0.0.1".into(),
        bytes: 1,
        sha256: "00".into(),
        crc64nvme: None,
        upload_id: None,
        started_at: chrono::Utc::now(),
        remember_name: false,
        receipt: None,
        decrypt: None,
        job: None,
        digest: None,
        duplicate_of: None,
        scan: None,
    }
}

/// Intents are written in batches; the lock they are still holds. Of concurrent commits of
/// one location (in one batch or not) exactly one goes on, the others wait until it is
/// cleared, and commits of other locations in the same batch are not held up.
async fn one_writer_per_location(db: wharf::db::Db) {
    use wharf::session::CommitJournal as _;
    let outbox = wharf::events::outbox::Outbox::new(db.clone(), vec![]);
    let journal = wharf::journal::Journal::new(outbox, Duration::from_secs(10));
    let same: Vec<_> = (0..4)
        .map(|i| intent(&format!("same-{i}"), "file:///x/a.csv"))
        .collect();
    let others: Vec<_> = (0..4)
        .map(|i| intent(&format!("other-{i}"), &format!("file:///x/o{i}.csv")))
        .collect();
    let wait = Duration::from_millis(700);
    let tries = same.iter().chain(&others).map(|i| {
        let j = journal.clone();
        let i = i.clone();
        tokio::spawn(async move { tokio::time::timeout(wait, j.begin(&i)).await.is_ok() })
    });
    let mut took = Vec::new();
    for t in tries.collect::<Vec<_>>() {
        took.push(t.await.unwrap());
    }
    assert_eq!(took[..4].iter().filter(|t| **t).count(), 1, "{took:?}");
    assert!(took[4..].iter().all(|t| *t), "{took:?}");
    // Once the holder's intent is cleared, the next writer gets the location.
    let holder = took.iter().position(|t| *t).unwrap();
    journal.cancel(&same[holder]).await;
    let next = &same[(holder + 1) % 4];
    tokio::time::timeout(Duration::from_secs(5), journal.begin(next))
        .await
        .expect("the location is free again")
        .unwrap();
    db.close().await;
}

/// A commit that stops waiting while its intent is being written (its session dropped, or
/// timed out) leaves no lock behind: otherwise nothing clears it until the reconciler takes it
/// for forsaken, 15 minutes on, and the location is closed to every upload until then.
async fn an_abandoned_intent_is_cleared(db: wharf::db::Db) {
    use wharf::session::CommitJournal as _;
    let outbox = wharf::events::outbox::Outbox::new(db.clone(), vec![]);
    let journal = wharf::journal::Journal::new(outbox, Duration::from_secs(10));
    // Polled once, `begin` queues its intent and is dropped before the answer can come.
    for i in 0..3 {
        let gone = intent(&format!("gone-{i}"), "file:///x/a.csv");
        let waited = futures::FutureExt::now_or_never(journal.begin(&gone));
        assert!(waited.is_none(), "the commit was meant to stop waiting");
    }
    // Polled once, answered, and dropped without reading the answer (once the writer has
    // cleared what the others left: it would find the location held).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unread = intent("unread", "file:///x/a.csv");
    let mut begin = journal.begin(&unread);
    assert!(futures::poll!(&mut begin).is_pending());
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(begin);
    let next = intent("next", "file:///x/a.csv");
    tokio::time::timeout(Duration::from_secs(5), journal.begin(&next))
        .await
        .expect("the location is free for the next commit")
        .unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_intents_keep_one_writer_per_location() {
    crate::harness::each_database(|db| Box::pin(one_writer_per_location(db))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_stops_waiting_leaves_its_location_free() {
    crate::harness::each_database(|db| Box::pin(an_abandoned_intent_is_cleared(db))).await;
}
