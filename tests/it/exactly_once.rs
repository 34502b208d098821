//! Exactly once in a real cluster: instances on one database whose hosts' clocks disagree
//! (libfaketime), a database that goes away for 35 s, an instance paused for 40 s (SIGSTOP,
//! as a VM is paused), S3 answers lost after S3 did the work, renames onto final names, and
//! a pipeline's own multipart upload under a shared prefix, a pooled connection dropped
//! while idle. Every upload a client saw
//! succeed has its object and exactly one completed event; no object is left without its
//! event; no event describes bytes that are not there.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::faults::{PgOutage, S3Faults};
use crate::harness::{random_bytes, sftp, Auth, Gateway, Server, PW};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Recovery fast enough for a test: an instance silent for 6 s is taken for dead.
const RECOVERY: [(&str, &str); 2] = [
    ("WHARF_RECOVERY__HEARTBEAT", "2s"),
    ("WHARF_RECOVERY__INTERVAL", "2s"),
];

/// Every event in the outbox (the source of truth every sink is fed from), as CloudEvents.
async fn recorded(g: &Gateway) -> Vec<serde_json::Value> {
    use sqlx::Connection as _;
    let pg = g._pg.as_ref().expect("a Postgres gateway");
    let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM events ORDER BY seq")
        .fetch_all(&mut c)
        .await
        .unwrap();
    bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

fn of<'a>(events: &'a [serde_json::Value], kind: &str, path: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["path"] == path)
        .collect()
}

fn signal(server: &Server, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(server.pid().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// A gateway on a database of its own, reached through a `PgOutage` proxy (outages, lost
/// answers), with `env` on top.
async fn behind_pg_proxy(env: &[(&str, &str)]) -> (Gateway, PgOutage) {
    let pg = crate::harness::PgDb::create().await;
    let upstream = url::Url::parse(&pg.url).unwrap();
    let proxy = PgOutage::start(&format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap_or(5432)
    ))
    .await;
    let url = proxy.url(&pg.url);
    let mut env = env.to_vec();
    env.push(("WHARF_DATABASE__URL", &url));
    let g = Gateway::start(false, &env).await;
    (Gateway { _pg: Some(pg), ..g }, proxy)
}

/// acme puts `name` (`data`) while the answer to the next execution of `statement` is lost;
/// fails the test unless an answer was lost.
fn put_losing_an_answer(
    g: &Gateway,
    proxy: &PgOutage,
    name: &str,
    data: &[u8],
    statement: &str,
) -> crate::harness::SftpRun {
    g.write_file(name, data);
    let before = proxy.lost();
    proxy.lose_reply(statement, 1);
    let run = g.acme(&format!("put {name}\n"));
    assert!(proxy.lost() > before, "{name}: no answer was lost");
    run
}

/// Waits until nothing is left for the reconciler: no commit intent, no tracked upload.
async fn settled(g: &Gateway, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (i, u) = (
            g.count_rows("commit_intents").await,
            g.count_rows("live_uploads").await,
        );
        if i == 0 && u == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{i} commit intents and {u} tracked uploads left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The invariants, for uploads (`client path -> (client saw success, bytes)`) that are all
/// over: a success has its object and exactly one completed event with its SHA-256; a
/// failure has no completed event and no object (at most one failed event); nothing is
/// left open.
async fn check(g: &Gateway, uploads: &HashMap<String, (bool, Vec<u8>)>) {
    settled(g, Duration::from_secs(60)).await;
    let events = recorded(g).await;
    for (path, (ok, data)) in uploads {
        let completed = of(&events, "wharf.upload.completed", path);
        let failed = of(&events, "wharf.upload.failed", path);
        let stored = g.stored(path.trim_start_matches('/')).await;
        if *ok {
            assert_eq!(
                stored.as_deref(),
                Some(&data[..]),
                "{path}: acknowledged but not stored"
            );
            assert_eq!(completed.len(), 1, "{path}: {completed:#?}");
            assert_eq!(completed[0]["data"]["sha256"], sha(data), "{path}");
        } else {
            assert!(
                completed.is_empty(),
                "{path}: refused but announced: {completed:#?}"
            );
            assert!(stored.is_none(), "{path}: refused but stored");
            assert!(failed.len() <= 1, "{path}: {failed:#?}");
        }
    }
    // No event for bytes that are not there.
    for e in events
        .iter()
        .filter(|e| e["type"] == "wharf.upload.completed")
    {
        let path = e["data"]["path"].as_str().unwrap();
        let stored = g.stored(path.trim_start_matches('/')).await;
        assert!(stored.is_some(), "{path}: announced, not stored");
    }
    assert!(
        g.s3.open_multipart_uploads(&g.prefix).await.is_empty(),
        "multipart uploads left open"
    );
}

/// Two instances on one database, the second on a host whose clock is 40 s behind
/// (libfaketime; its monotonic clock is left alone). Neither takes the other for dead: a
/// 30-second upload on the lagging one lands with exactly one completed event and no failed
/// one, and small uploads spread over both get one event each.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_whose_clock_is_40s_behind_keeps_its_work() {
    let g = Gateway::start(true, &RECOVERY).await;
    let lagging = Server::start_with(
        &g.w,
        &["faketime", "-f", "-40s"],
        &[("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
    );
    let big = random_bytes(45 << 20);
    g.write_file("big.bin", &big);
    let client = crate::harness::spawn_acme_sftp(
        lagging.port(),
        g.w.path(),
        &["-l", "12000"],
        b"put big.bin\n",
    );
    let started = Instant::now();
    let mut uploads = HashMap::new();
    for i in 0..20 {
        let name = format!("s{i:02}.csv");
        let data = format!("{i},settlement\n").repeat(50).into_bytes();
        g.write_file(&name, &data);
        let port = if i % 2 == 0 {
            g.server.port()
        } else {
            lagging.port()
        };
        let run = sftp(
            port,
            "acme",
            &Auth::Password(PW.into()),
            g.w.path(),
            &format!("put {name}\n"),
        );
        uploads.insert(format!("/{name}"), (run.code == Some(0), data));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = client.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lagging.log()
    );
    assert!(
        took > Duration::from_secs(20),
        "the upload took only {took:?}"
    );
    uploads.insert("/big.bin".into(), (true, big));
    assert!(uploads.values().all(|(ok, _)| *ok), "a small upload failed");
    check(&g, &uploads).await;
    let events = recorded(&g).await;
    assert!(of(&events, "wharf.upload.failed", "/big.bin").is_empty());
    for log in [g.server.log(), lagging.log()] {
        assert!(!log.contains("took over work"), "{log}");
        assert!(!log.contains("claim was lost"), "{log}");
    }
}

/// Uploads in flight on two instances while the database is gone for 35 s: every upload a
/// client saw succeed has its object and exactly one completed event; every other has
/// none, or one failed event, and no object.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_of_35s_leaves_every_upload_true() {
    let mut env: Vec<(&str, &str)> = RECOVERY.to_vec();
    env.push(("WHARF_DATABASE__CONNECT_TIMEOUT", "2s"));
    let (g, outage) = behind_pg_proxy(&env).await;
    let second = Server::start(&g.w);
    let ports = [g.server.port(), second.port()];
    // Writers on both instances: small files one after another, a large one now and then.
    let dir = g.w.path().to_path_buf();
    let mut writers = Vec::new();
    for (k, port) in ports.into_iter().enumerate() {
        let dir = dir.clone();
        writers.push(std::thread::spawn(move || {
            let mut done = Vec::new();
            let start = Instant::now();
            let mut i = 0;
            while start.elapsed() < Duration::from_secs(55) {
                let name = format!("w{k}-{i:03}.bin");
                let size = if i % 5 == 4 { (7 << 20) + i } else { 2000 + i };
                let data = random_bytes(size);
                std::fs::write(dir.join(&name), &data).unwrap();
                let run = sftp(
                    port,
                    "acme",
                    &Auth::Password(PW.into()),
                    &dir,
                    &format!("put {name}\n"),
                );
                done.push((format!("/{name}"), run.code == Some(0), data));
                i += 1;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    outage.down();
    tokio::time::sleep(Duration::from_secs(35)).await;
    outage.up();
    let mut uploads = HashMap::new();
    for w in writers {
        for (path, ok, data) in w.join().unwrap() {
            uploads.insert(path, (ok, data));
        }
    }
    let ok = uploads.values().filter(|(ok, _)| *ok).count();
    eprintln!(
        "database outage: {} uploads, {ok} acknowledged",
        uploads.len()
    );
    assert!(ok >= 4, "too few uploads went through");
    check(&g, &uploads).await;
    drop(second);
}

/// A pooled connection that the database dropped while it sat idle (longer than the second
/// within which a connection just back in its pool is handed out without a ping) is pinged
/// and replaced, not handed out: the next query succeeds, on a new backend.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_dropped_while_idle_is_replaced_not_used() {
    use sqlx::Connection as _;
    let pg = crate::harness::PgDb::create().await;
    let cfg = wharf::config::DatabaseConfig {
        url: secrecy::SecretString::from(pg.url.clone()),
        max_connections: 1,
        ..Default::default()
    };
    let db = wharf::db::Db::connect(&cfg).await.expect("connect");
    let wharf::db::Db::Postgres(pool) = &db else {
        unreachable!("a Postgres url")
    };
    let backend = "SELECT pg_backend_pid()";
    let pid: i32 = sqlx::query_scalar(backend).fetch_one(pool).await.unwrap();
    // Another session ends that backend while the pool's one connection sits idle.
    let mut admin = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(ended, "the backend was not ended");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again: i32 = sqlx::query_scalar(backend)
        .fetch_one(pool)
        .await
        .expect("a connection dropped while idle was handed out");
    assert_ne!(again, pid);
}

/// The database commits an upload's event transaction and the answer is lost (the connection
/// cut right after): the close finds out that the event is there and succeeds; the object is
/// kept; the event is not recorded twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_the_event_transaction_is_settled() {
    let (g, proxy) = behind_pg_proxy(&[]).await;
    let mut uploads = HashMap::new();
    for (name, size) in [("small.csv", 30_000), ("large.bin", (11 << 20) + 9)] {
        let data = random_bytes(size);
        let run = put_losing_an_answer(&g, &proxy, name, &data, "INSERT INTO events");
        assert_eq!(run.code, Some(0), "{name}: {run:?}\n{}", g.server.log());
        uploads.insert(format!("/{name}"), (true, data));
    }
    check(&g, &uploads).await;
}

/// The database makes the row that tracks a new multipart upload, or its renaming to the id S3
/// gave, and the answer is lost (the connection cut right after): the upload fails, the
/// multipart upload is aborted, and no tracking row outlives it. The reconciler takes over
/// only the rows of instances that are gone, so a row this live instance left would stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_tracking_a_multipart_upload_leaves_no_row() {
    let (g, proxy) = behind_pg_proxy(&[]).await;
    let mut uploads = HashMap::new();
    for (name, statement) in [
        ("tracked.bin", "INSERT INTO live_uploads"),
        ("renamed.bin", "UPDATE live_uploads"),
    ] {
        let data = random_bytes((11 << 20) + 7);
        let run = put_losing_an_answer(&g, &proxy, name, &data, statement);
        uploads.insert(format!("/{name}"), (run.code == Some(0), data));
    }
    check(&g, &uploads).await;
}

/// The database writes a commit intent (the lock on its file name) and the answer is lost:
/// the upload fails, and the intent does not outlive it, so the partner's next upload of that
/// name lands at once instead of waiting out the lock and being refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_writing_a_commit_intent_leaves_no_lock() {
    let (g, proxy) = behind_pg_proxy(&[]).await;
    let first = random_bytes(40_000);
    let run = put_losing_an_answer(
        &g,
        &proxy,
        "locked.csv",
        &first,
        "INSERT INTO commit_intents",
    );
    let mut uploads = HashMap::new();
    uploads.insert("/locked.csv".to_string(), (run.code == Some(0), first));
    let again = random_bytes(50_000);
    g.write_file("locked.csv", &again);
    let started = Instant::now();
    let run = g.acme("put locked.csv\n");
    assert_eq!(run.code, Some(0), "{run:?}\n{}", g.server.log());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the second upload waited {:?} for the lock",
        started.elapsed()
    );
    uploads.insert("/locked.csv".to_string(), (true, again));
    check(&g, &uploads).await;
}

/// An instance stopped (SIGSTOP) for 40 s mid-upload, then continued: its work is taken
/// over, but each upload ends with one outcome and the resumed instance records nothing
/// twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_paused_for_40s_records_nothing_twice() {
    let g = Gateway::start(true, &RECOVERY).await;
    let paused = Server::start(&g.w);
    let data = random_bytes(30 << 20);
    g.write_file("paused.bin", &data);
    let client = crate::harness::spawn_acme_sftp(
        paused.port(),
        g.w.path(),
        &["-l", "40000"],
        b"put paused.bin\n",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&paused, "STOP");
    tokio::time::sleep(Duration::from_secs(40)).await;
    // The other instance took the upload over meanwhile.
    assert!(
        g.server.log().contains("took over work"),
        "{}",
        g.server.log()
    );
    signal(&paused, "CONT");
    let out = client.wait_with_output().unwrap();
    let ok = out.status.success();
    let mut uploads = HashMap::new();
    uploads.insert("/paused.bin".to_string(), (ok, data));
    check(&g, &uploads).await;
    let events = recorded(&g).await;
    let all = of(&events, "wharf.upload.failed", "/paused.bin").len()
        + of(&events, "wharf.upload.completed", "/paused.bin").len();
    assert_eq!(all, 1, "{events:#?}");
}

/// A second instance that stops itself at pause point `point`, and an `sftp` running `batch`
/// against it, once the instance has stopped there.
async fn put_pausing_at(g: &Gateway, point: &str, batch: &str) -> (Server, std::process::Child) {
    let paused = Server::start_with(&g.w, &[], &[("WHARF_TEST_PAUSE_AT", point)]);
    let client = crate::harness::spawn_acme_sftp(paused.port(), g.w.path(), &[], batch);
    assert!(
        paused
            .logs_within(
                &format!("pause point {point} reached"),
                Duration::from_secs(60)
            )
            .await,
        "{}",
        paused.log()
    );
    (paused, client)
}

/// Paused at the worst moments of a commit (the object published, its event not yet
/// recorded; the intent confirmed, the object not yet published), for longer than it takes
/// another instance to take the commit over: the client's answer, the object and the
/// events agree, and the completed event is never recorded twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_paused_past_its_takeover_stays_true() {
    for (point, size) in [
        ("upload.after_commit", 200_000),
        ("upload.after_commit", (11 << 20) + 3),
        ("upload.before_commit", 200_000),
        ("upload.before_commit", (11 << 20) + 3),
    ] {
        let g = Gateway::start(true, &RECOVERY).await;
        let data = random_bytes(size);
        g.write_file("p.bin", &data);
        let (paused, client) = put_pausing_at(&g, point, "put p.bin\n").await;
        // Longer than the instance's lapse plus a round of the other's reconciler.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(
            g.server.log().contains("took over work"),
            "{point}: {}",
            g.server.log()
        );
        signal(&paused, "CONT");
        let out = client.wait_with_output().unwrap();
        let ok = out.status.success();
        let mut uploads = HashMap::new();
        uploads.insert("/p.bin".to_string(), (ok, data.clone()));
        check(&g, &uploads).await;
        let stored = g.stored("p.bin").await;
        assert_eq!(
            ok,
            stored.is_some(),
            "{point} {size}: the client's answer and storage disagree"
        );
        let events = recorded(&g).await;
        assert!(
            of(&events, "wharf.upload.completed", "/p.bin").len() <= 1,
            "{point} {size}: {events:#?}"
        );
        eprintln!(
            "{point} {size}: client ok={ok}, events: {:?}",
            of(&events, "wharf.upload.completed", "/p.bin")
                .iter()
                .chain(of(&events, "wharf.upload.failed", "/p.bin").iter())
                .map(|e| e["type"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        );
    }
}

/// An instance paused after publishing, past its takeover; meanwhile the other instance
/// announces what it found, and a second upload of the name lands through it. Then the
/// paused instance's request reaches S3 again, as a retry its S3 client sends once the
/// process runs again after answers were lost (the test writes that request's bytes and
/// metadata itself), putting the first content back over the second. The first upload's
/// instance must announce its content again: the location's last arrival event describes
/// what S3 holds. (The fault campaign found this: an acknowledged upload's bytes replaced
/// with no later arrival.)
#[tokio::test(flavor = "multi_thread")]
async fn content_put_back_after_a_takeover_is_announced_again() {
    let g = Gateway::start(true, &RECOVERY).await;
    let point = "upload.after_commit";
    let first = random_bytes(200_000);
    let second = random_bytes(150_000);
    g.write_file("first.bin", &first);
    g.write_file("second.bin", &second);
    let (paused, client) = put_pausing_at(&g, point, "put first.bin p.bin\n").await;
    let key = format!("{}acme/p.bin", g.prefix);
    let head =
        g.s3.client
            .head_object()
            .bucket(&g.s3.bucket)
            .key(&key)
            .send()
            .await
            .expect("the first upload is published");
    let metadata = head.metadata().cloned().unwrap_or_default();
    // Longer than the instance's lapse plus a round of the other's reconciler.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        g.server.log().contains("took over work"),
        "{}",
        g.server.log()
    );
    g.acme("put second.bin p.bin\n").ok();
    assert_eq!(g.stored("p.bin").await.as_deref(), Some(&second[..]));
    // The paused instance's request again, as its S3 client would send it.
    g.s3.client
        .put_object()
        .bucket(&g.s3.bucket)
        .key(&key)
        .set_metadata(Some(metadata))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .body(aws_sdk_s3::primitives::ByteStream::from(first.clone()))
        .send()
        .await
        .unwrap();
    signal(&paused, "CONT");
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        paused.log()
    );
    settled(&g, Duration::from_secs(60)).await;
    assert_eq!(g.stored("p.bin").await.as_deref(), Some(&first[..]));
    let events = recorded(&g).await;
    let completed = of(&events, "wharf.upload.completed", "/p.bin");
    let shas: Vec<&str> = completed
        .iter()
        .map(|e| e["data"]["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(
        shas.last().copied(),
        Some(sha(&first).as_str()),
        "the last arrival at /p.bin is not what S3 holds (first {}, second {}): {shas:?}\n{}",
        sha(&first),
        sha(&second),
        paused.log()
    );
    // The taker's announcement, the second upload's, and this one: each once.
    assert_eq!(
        shas,
        [sha(&first), sha(&second), sha(&first)],
        "{completed:#?}"
    );
}

/// S3 request attempts of `op` that failed so far (the gateway's metrics).
async fn attempt_failures(g: &Gateway, op: &str) -> u64 {
    let (_, body) = g.server.http_get("/metrics").await;
    let series = format!("wharf_s3_request_attempt_failures_total{{operation=\"{op}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// S3 stores a PutObject, a CompleteMultipartUpload, a rename's copy or its delete, and
/// the answer is lost, again and again (beyond the SDK's own retries): the client's answer,
/// the object and the events agree.
#[tokio::test(flavor = "multi_thread")]
async fn lost_s3_answers_agree_with_the_client_and_the_events() {
    let s3 = crate::harness::S3Env::from_env();
    let faults = S3Faults::start(&s3.endpoint).await;
    let g = Gateway::start(
        true,
        &[
            ("WHARF_STORAGE__S3__ENDPOINT", &faults.endpoint),
            ("WHARF_STORAGE__S3__REQUEST_TIMEOUT", "3s"),
        ],
    )
    .await;
    let mut uploads = HashMap::new();
    for (op, name, size) in [
        ("PutObject", "put.csv", 100_000),
        ("CompleteMultipartUpload", "complete.bin", (11 << 20) + 5),
    ] {
        let data = random_bytes(size);
        g.write_file(name, &data);
        let before = faults.lost();
        let failed_before = attempt_failures(&g, op).await;
        faults.lose(op, 5);
        let run = g.acme(&format!("put {name}\n"));
        assert!(faults.lost() > before, "{op}: no answer was lost");
        uploads.insert(format!("/{name}"), (run.code == Some(0), data));
        assert_eq!(run.code, Some(0), "{op}: {run:?}\n{}", g.server.log());
        // Every attempt whose answer was lost is counted, and logged with its operation.
        assert_eq!(
            attempt_failures(&g, op).await - failed_before,
            (faults.lost() - before) as u64,
            "{op}"
        );
        assert!(
            g.server
                .log()
                .lines()
                .any(|l| l.contains("S3 request attempt failed")
                    && l.contains(&format!("\"operation\":\"{op}\""))),
            "{op}: no attempt failure logged\n{}",
            g.server.log()
        );
    }
    // A temp-name upload whose rename's copy answer is lost, then one whose delete's is.
    for (op, name) in [
        ("CopyObject", "copied.csv"),
        ("DeleteObject", "deleted.csv"),
    ] {
        let data = random_bytes(50_000);
        g.write_file(name, &data);
        g.acme(&format!("put {name} {name}.part\n")).ok();
        let before = faults.lost();
        faults.lose(op, 16);
        let run = g.acme(&format!("rename {name}.part {name}\n"));
        assert!(faults.lost() > before, "{op}: no answer was lost");
        assert_eq!(run.code, Some(0), "{op}: {run:?}\n{}", g.server.log());
        uploads.insert(format!("/{name}"), (true, data));
    }
    faults.lose("DeleteObject", 0);
    check(&g, &uploads).await;
}

/// S3 takes a PutObject, a CreateMultipartUpload or a part and never answers (garage does this
/// under load): the attempt is given up once its body's limit is over (15 s and a second per
/// MiB, not the minute of `request_timeout`), retried, and the upload lands with one event, soon enough
/// for a draining instance's grace (45 s in the deploy recipe) to let it finish.
#[tokio::test(flavor = "multi_thread")]
async fn an_s3_request_never_answered_is_retried_within_seconds() {
    let s3 = crate::harness::S3Env::from_env();
    let faults = S3Faults::start(&s3.endpoint).await;
    let g = Gateway::start(true, &[("WHARF_STORAGE__S3__ENDPOINT", &faults.endpoint)]).await;
    let mut uploads = HashMap::new();
    for (op, name, size) in [
        ("PutObject", "held.csv", 100_000),
        ("CreateMultipartUpload", "created.bin", (9 << 20) + 5),
        ("UploadPart", "held.bin", (9 << 20) + 3),
    ] {
        let data = random_bytes(size);
        g.write_file(name, &data);
        let before = faults.lost();
        faults.hold(op, 1);
        let started = std::time::Instant::now();
        let run = g.acme(&format!("put {name}\n"));
        let took = started.elapsed();
        assert_eq!(faults.lost(), before + 1, "{op}: no answer was held back");
        assert_eq!(run.code, Some(0), "{op}: {run:?}\n{}", g.server.log());
        assert!(
            took < Duration::from_secs(40),
            "{op}: the held request was given up only after {took:?}"
        );
        uploads.insert(format!("/{name}"), (true, data));
    }
    check(&g, &uploads).await;
}

/// A final name renamed onto another is an arrival at the target: journaled, announced
/// (`wharf.file.renamed`, with the bytes now there), and refused in a folder that accepts a
/// name once. A directory renamed with a temp suffix is no arrival.
#[tokio::test(flavor = "multi_thread")]
async fn a_final_name_renamed_onto_another_is_announced() {
    for local in [false, true] {
        let g = Gateway::start_on(local, false, &[]).await;
        let (a, b) = (random_bytes(40_000), random_bytes(50_000));
        g.write_file("a.csv", &a);
        g.write_file("b.csv", &b);
        g.acme("put a.csv\nput b.csv\nrename b.csv a.csv\n").ok();
        let e = g.wait_jsonl_event("wharf.file.renamed", "/a.csv").await;
        assert_eq!(e["data"]["sha256"], sha(&b), "local={local}");
        assert_eq!(e["data"]["bytes"], 50_000);
        assert_eq!(e["data"]["from_path"], "/b.csv");
        assert_eq!(g.stored("a.csv").await.as_deref(), Some(&b[..]));
        assert!(g.stored("b.csv").await.is_none());
        // The last event for /a.csv describes the bytes now there.
        let last = g
            .jsonl_events()
            .into_iter()
            .rfind(|e| e["data"]["path"] == "/a.csv")
            .unwrap();
        assert_eq!(last["data"]["sha256"], sha(&b));
        // A directory is never an arrival (S3 storage refuses to rename one at all).
        let run = g.acme("mkdir d.part\nrename d.part d\n");
        if local {
            run.ok();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            g.jsonl_events().iter().all(|e| e["data"]["path"] != "/d"),
            "{:#?}",
            g.jsonl_events()
        );
    }
    // A folder that accepts a name once refuses a rename onto a name that arrived.
    let g = Gateway::start(false, &[]).await;
    g.w.dir_add(
        "acme",
        "/in",
        "in",
        &[
            "--permissions",
            "list,upload,overwrite,rename",
            "--no-reuse-names",
        ],
    )
    .ok();
    g.write_file("x.csv", b"first\n");
    g.write_file("y.csv", b"second\n");
    let run = g.acme("put x.csv /in/x.csv\nput y.csv /in/y.csv\n");
    run.ok();
    let run = g.acme("rename /in/y.csv /in/x.csv\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("Permission denied"), "{run:?}");
    assert!(g.server.log().contains("reused_name"), "{}", g.server.log());
    assert_eq!(g.object("in/x.csv").await.as_deref(), Some(&b"first\n"[..]));
}

/// A multipart upload wharf did not start (a pipeline's own, under a prefix it shares with a
/// partner's home), older than `recovery.orphan_grace`, is never aborted.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_multipart_upload_under_a_shared_prefix_is_left_alone() {
    let g = Gateway::start(
        false,
        &[
            ("WHARF_RECOVERY__INTERVAL", "1s"),
            ("WHARF_RECOVERY__ORPHAN_GRACE", "1s"),
        ],
    )
    .await;
    let key = format!("{}acme/outbound/pipeline-export.bin", g.prefix);
    let up =
        g.s3.client
            .create_multipart_upload()
            .bucket(&g.s3.bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
    let id = up.upload_id().unwrap().to_string();
    // wharf's own work goes on meanwhile.
    let data = random_bytes((11 << 20) + 1);
    g.write_file("own.bin", &data);
    g.acme("put own.bin\n").ok();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let open = g.s3.open_multipart_uploads(&g.prefix).await;
    assert_eq!(open, vec![key.clone()], "the pipeline's upload was touched");
    g.s3.client
        .abort_multipart_upload()
        .bucket(&g.s3.bucket)
        .key(&key)
        .upload_id(id)
        .send()
        .await
        .unwrap();
}
