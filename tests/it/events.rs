//! Arrival events end to end: uploads with stock `sftp`, events received by a local webhook
//! receiver (signature, content type, body), the machine's NATS JetStream (msg ids), and the
//! outbox surviving sinks that are down, `kill -9` and a second instance.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::{random_bytes, Gateway, Receiver, Server};

const SECRET: &str = "pipeline-shared-secret";

fn nats_url() -> String {
    std::env::var("WHARF_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub(crate) fn webhook_sink(r: &Receiver) -> String {
    format!(
        "[{{name = \"hook\", type = \"webhook\", url = \"{}\", secret = \"{SECRET}\", timeout = \"2s\"}}]",
        r.url()
    )
}

fn verify_signature(r: &crate::harness::Received) {
    let expected = wharf::events::sinks::webhook::signature(SECRET, r.body.as_bytes());
    assert_eq!(r.headers.get("wharf-signature"), Some(&expected), "{r:?}");
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/cloudevents+json")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn completed_events_reach_the_webhook_and_jetstream() {
    let hook = Receiver::start().await;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (prefix, stream) = (format!("t{tag}"), format!("WHARF_T{tag}"));
    let sinks = format!(
        "[{{name = \"hook\", type = \"webhook\", url = \"{}\", secret = \"{SECRET}\"}}, \
          {{name = \"bus\", type = \"nats\", url = \"{}\", subject_prefix = \"{prefix}\", stream = \"{stream}\"}}]",
        hook.url(),
        nats_url()
    );
    let g = Gateway::start(
        true,
        &[
            ("WHARF_EVENTS__SINKS", &sinks),
            ("WHARF_EVENTS__SOURCE", "wharf://test-cluster"),
        ],
    )
    .await;
    let data = random_bytes(7 << 20);
    g.write_file("settlement.csv", &data);
    g.acme("mkdir inbound\nput settlement.csv inbound/settlement-2026-11-26.csv\n")
        .ok();

    let got = hook.wait_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    verify_signature(&got[0]);
    let ev = got[0].json();
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], "wharf.upload.completed");
    assert_eq!(ev["source"], "wharf://test-cluster");
    assert_eq!(ev["subject"], "/inbound/settlement-2026-11-26.csv");
    assert_eq!(ev["datacontenttype"], "application/json");
    let id = ev["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    let d = &ev["data"];
    let key = format!("{}acme/inbound/settlement-2026-11-26.csv", g.prefix);
    assert_eq!(d["username"], "acme");
    assert_eq!(d["protocol"], "sftp");
    assert_eq!(d["client_ip"], "127.0.0.1");
    assert_eq!(d["path"], "/inbound/settlement-2026-11-26.csv");
    assert_eq!(d["bucket"], g.s3.bucket.as_str());
    assert_eq!(d["key"], key.as_str());
    assert_eq!(d["location"], format!("s3://{}/{key}", g.s3.bucket));
    assert_eq!(d["bytes"], data.len() as u64);
    assert_eq!(d["sha256"], hex::encode(Sha256::digest(&data)));
    assert!(d["etag"]
        .as_str()
        .is_some_and(|e| !e.is_empty() && !e.contains('"')));
    assert!(d["failure_code"].is_null() && d["failure_message"].is_null());
    assert!(
        d["session_id"].is_string() && d["started_at"].is_string() && d["finished_at"].is_string()
    );
    // The pipeline can read the object the event names.
    assert_eq!(g.s3.get(&key).await.unwrap(), data);

    // JetStream has the same event, with the event id as Nats-Msg-Id.
    let client = async_nats::connect(nats_url())
        .await
        .expect("NATS with JetStream at WHARF_TEST_NATS_URL (scripts/test.sh starts one)");
    let js = async_nats::jetstream::new(client);
    let mut msg = None;
    for _ in 0..100 {
        if let Ok(mut s) = js.get_stream(&stream).await {
            if s.info().await.map(|i| i.state.messages).unwrap_or(0) >= 1 {
                msg = Some(s.get_raw_message(1).await.unwrap());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msg = msg.expect("event published to JetStream");
    assert_eq!(
        msg.subject.as_str(),
        format!("{prefix}.wharf.upload.completed")
    );
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["id"], id);
    let msg_id = msg.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    assert_eq!(msg_id.as_deref(), Some(id));
    let _ = js.delete_stream(&stream).await;

    // The outbox shows both deliveries done.
    let out = g.w.run(&["events", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out.ok().stdout).unwrap();
    let states: Vec<(String, String)> = listed[0]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["sink"].as_str().unwrap().into(),
                d["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("bus".to_string(), "delivered".to_string()),
            ("hook".into(), "delivered".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_down_then_back_gets_every_event_in_order() {
    let hook = Receiver::start().await;
    hook.status.store(503, std::sync::atomic::Ordering::SeqCst);
    let g = Gateway::start(false, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    for i in 0..5 {
        g.write_file(&format!("f{i}.csv"), format!("row {i}\n").as_bytes());
    }
    // Uploads succeed while the pipeline is down.
    g.acme("put f0.csv\nput f1.csv\nput f2.csv\nput f3.csv\nput f4.csv\n")
        .ok();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(hook.accepted().is_empty());
    assert!(!hook.all().is_empty(), "no delivery was attempted");
    let pending = g.w.run(&["events", "list", "--pending", "--json"]);
    let pending: serde_json::Value = serde_json::from_str(&pending.ok().stdout).unwrap();
    assert_eq!(pending.as_array().unwrap().len(), 5);
    // Delivery keeps commit order per account: only the oldest event was tried.
    let subjects: std::collections::BTreeSet<String> = hook
        .all()
        .iter()
        .map(|r| r.json()["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects.into_iter().collect::<Vec<_>>(), ["/f0.csv"]);

    hook.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let got = hook.wait_accepted(5, Duration::from_secs(15)).await;
    let order: Vec<String> = got
        .iter()
        .map(|r| r.json()["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        order,
        ["/f0.csv", "/f1.csv", "/f2.csv", "/f3.csv", "/f4.csv"]
    );
    for r in &got {
        verify_signature(r);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn undelivered_events_survive_kill_9() {
    let hook = Receiver::start().await;
    hook.status.store(500, std::sync::atomic::Ordering::SeqCst);
    let mut g = Gateway::start(true, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    g.write_file("a.csv", b"a\n");
    g.acme("put a.csv\nput a.csv b.csv\n").ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.server.child.kill().unwrap(); // SIGKILL
    let _ = g.server.child.wait();
    assert!(hook.accepted().is_empty());

    hook.status.store(200, std::sync::atomic::Ordering::SeqCst);
    g.server = Server::start(&g.w);
    let got = hook.wait_accepted(2, Duration::from_secs(15)).await;
    let subjects: Vec<String> = got
        .iter()
        .map(|r| r.json()["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects, ["/a.csv", "/b.csv"]);
}

/// Runs `sftp -b` sessions (port, user with password PW, batch) at once from the gateway's
/// directory, and checks that each succeeded.
fn at_once(g: &Gateway, sessions: &[(u16, &str, &str)]) {
    let dir = g.w.path().to_path_buf();
    let threads: Vec<_> = sessions
        .iter()
        .map(|&(port, user, batch)| {
            let (dir, user, batch) = (dir.clone(), user.to_string(), batch.to_string());
            std::thread::spawn(move || {
                crate::harness::sftp(
                    port,
                    &user,
                    &crate::harness::Auth::Password(crate::harness::PW.into()),
                    &dir,
                    &batch,
                )
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().ok();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_deliver_each_event_once() {
    let hook = Receiver::start().await;
    let g = Gateway::start(true, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    let second = Server::start(&g.w);
    let g2_port = second.port();
    g.write_file("x.csv", b"x\n");
    // Two partners upload through both instances at once.
    g.w.run_stdin(
        &["user", "add", "beta", "--password-stdin"],
        Some(&format!("{}\n", crate::harness::PW)),
    )
    .ok();
    let batch: String = (0..10).map(|i| format!("put x.csv x{i}.csv\n")).collect();
    at_once(
        &g,
        &[(g.server.port(), "acme", &batch), (g2_port, "beta", &batch)],
    );
    let got = hook.wait_accepted(20, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_after = hook.accepted();
    assert_eq!(got.len(), 20);
    let mut ids: Vec<String> = got_after
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((n, ids.len()), (20, 20), "duplicate deliveries");
    // Each account's events arrived in the order its uploads completed.
    for user in ["acme", "beta"] {
        let order: Vec<String> = got_after
            .iter()
            .map(|r| r.json())
            .filter(|e| e["data"]["username"] == user)
            .map(|e| e["subject"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("/x{i}.csv")).collect();
        assert_eq!(order, expected, "{user}");
    }
}

/// Claims of due deliveries an instance's dispatcher made for sink `hook` (its metrics).
async fn hook_claims(server: &Server) -> u64 {
    let (_, body) = server.http_get("/metrics").await;
    body.lines()
        .find(|l| l.starts_with("wharf_event_claims_total{sink=\"hook\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no claim counter for hook in {body}"))
}

/// Other instances' commits wake an instance's dispatcher through Postgres NOTIFY; a stream
/// of them costs one claim per coalescing window (50 ms), not one per commit; and its own
/// arrivals and ending runs at most one claim per 20 ms.
#[tokio::test(flavor = "multi_thread")]
async fn bursts_of_commits_cost_a_dispatcher_one_claim_per_window_not_one_per_event() {
    use sqlx::Connection as _;
    let hook = Receiver::start().await;
    let g = Gateway::start(true, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    let url = g._pg.as_ref().unwrap().url.clone();
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    // Quiet first: the instance's start-up claims are over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = hook_claims(&g.server).await;
    // 150 commits' NOTIFYs, one every ~4 ms, as other instances' arrivals would send them.
    let started = std::time::Instant::now();
    for _ in 0..150 {
        sqlx::query("SELECT pg_notify('wharf_events', '')")
            .execute(&mut db)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let burst = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = started.elapsed();
    let claims = hook_claims(&g.server).await - before;
    // One per 50 ms window of the burst, the polls (one a second) and a window left over;
    // one per commit, or one per 20 ms claim gap, would be well over this.
    let windows = burst.as_millis() as u64 / 50 + 1;
    let polls = spent.as_secs() + 1;
    eprintln!("{claims} claims for 150 commits over {burst:?}");
    assert!(
        claims <= windows + polls + 1,
        "{claims} claims for 150 commits over {burst:?} ({windows} windows, {polls} polls)"
    );
    // And the claim gap is no substitute: the burst is long enough for it to allow far more.
    assert!(
        burst.as_millis() as u64 / 20 > windows + polls + 1,
        "burst too short to tell: {burst:?}"
    );
    // This instance's own arrivals: four partners' bursts at once, each file a commit that
    // wakes the dispatcher, and every account's run ending in between. Still at most one
    // claim per 20 ms (and the polls), and every event delivered.
    g.write_file("f.csv", b"f\n");
    for u in ["b1", "b2", "b3"] {
        g.w.run_stdin(
            &["user", "add", u, "--password-stdin"],
            Some(&format!("{}\n", crate::harness::PW)),
        )
        .ok();
    }
    let before = hook_claims(&g.server).await;
    let started = std::time::Instant::now();
    let batch: String = (0..40).map(|i| format!("put f.csv f{i}.csv\n")).collect();
    let port = g.server.port();
    at_once(
        &g,
        &["acme", "b1", "b2", "b3"].map(|u| (port, u, batch.as_str())),
    );
    hook.wait_accepted(160, Duration::from_secs(30)).await;
    let spent = started.elapsed();
    let claims = hook_claims(&g.server).await - before;
    let gaps = spent.as_millis() as u64 / 20 + 1;
    let polls = spent.as_secs() + 1;
    eprintln!("{claims} claims for 160 arrivals over {spent:?}");
    assert!(
        claims <= gaps + polls,
        "{claims} claims for 160 arrivals over {spent:?} (at most {gaps} + {polls} polls)"
    );
    assert_eq!(hook.accepted().len(), 160);
}

/// A lone arrival costs its instance's dispatcher one claim: the one that takes it. Not a
/// second when its run ends having left nothing behind, nor a third when the instance's own
/// NOTIFY comes back through its LISTEN connection (it skips its own), nor a query for the
/// next due time after each.
#[tokio::test(flavor = "multi_thread")]
async fn a_lone_arrival_costs_its_dispatcher_one_claim() {
    let hook = Receiver::start().await;
    let g = Gateway::start(true, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    g.write_file("f.csv", b"f\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = hook_claims(&g.server).await;
    let started = std::time::Instant::now();
    const N: usize = 10;
    for i in 0..N {
        g.acme(&format!("put f.csv lone{i}.csv\n")).ok();
        hook.wait_accepted(i + 1, Duration::from_secs(10)).await;
        // Past the NOTIFY coalescing window, so a wake-up by the instance's own NOTIFY
        // would be a claim of its own.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let spent = started.elapsed();
    let claims = hook_claims(&g.server).await - before;
    // One per arrival, and the polls of a worker that waited a whole second (none while
    // arrivals keep coming, a few on a slow machine).
    let polls = spent.as_secs() + 1;
    eprintln!("{claims} claims for {N} lone arrivals over {spent:?}");
    assert!(
        claims <= N as u64 + polls,
        "{claims} claims for {N} lone arrivals over {spent:?} (at most {N} + {polls} polls)"
    );
    assert_eq!(hook.accepted().len(), N);
}

/// What a run leaves behind is claimed when the run ends, and a failed delivery's retry when
/// its backoff is over: neither waits for the next poll (1 s), though no run ending claims
/// again without cause (see the test above).
#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_a_run_and_a_retry_are_claimed_when_due_not_at_the_next_poll() {
    use std::sync::atomic::Ordering::SeqCst;
    let hook = Receiver::start().await;
    let g = Gateway::start(true, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    g.write_file("f.csv", b"f\n");
    // A slow pipeline: b.csv arrives while a.csv's delivery is in flight, so the claim it
    // wakes passes its account over.
    hook.delay_ms.store(500, SeqCst);
    g.acme("put f.csv a.csv\nput f.csv b.csv\n").ok();
    let got = hook.wait_accepted(2, Duration::from_secs(10)).await;
    let subject = |r: &crate::harness::Received| r.json()["subject"].as_str().unwrap().to_string();
    assert_eq!(
        got.iter().map(subject).collect::<Vec<_>>(),
        ["/a.csv", "/b.csv"]
    );
    let after_a = got[1]
        .at
        .duration_since(got[0].at + Duration::from_millis(500));
    eprintln!("b.csv sent {after_a:?} after a.csv was answered");
    assert!(
        after_a < Duration::from_millis(300),
        "b.csv waited {after_a:?} after a.csv's run ended"
    );

    // A delivery that fails is tried again after its backoff (0.4-0.6 s), not at a poll.
    hook.delay_ms.store(0, SeqCst);
    hook.status.store(503, SeqCst);
    g.acme("put f.csv c.csv\n").ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let tries = loop {
        let tries: Vec<_> = hook
            .all()
            .into_iter()
            .filter(|r| subject(r) == "/c.csv")
            .collect();
        if tries.len() >= 2 || std::time::Instant::now() > deadline {
            break tries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        tries.len() >= 2,
        "c.csv was not tried again: {}",
        tries.len()
    );
    let gap = tries[1].at.duration_since(tries[0].at);
    eprintln!("c.csv tried again after {gap:?}");
    assert!(
        gap >= Duration::from_millis(350) && gap < Duration::from_millis(850),
        "c.csv tried again after {gap:?}"
    );
    hook.status.store(200, SeqCst);
    hook.wait_accepted(3, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn temp_name_upload_arrives_once_on_rename() {
    let hook = Receiver::start().await;
    let g = Gateway::start(false, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    let data = random_bytes(6 << 20);
    g.write_file("r.csv", &data);
    g.acme("put r.csv report.csv.filepart\nrename report.csv.filepart report.csv\n")
        .ok();
    let got = hook.wait_accepted(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let all = hook.accepted();
    assert_eq!(
        all.len(),
        1,
        "{:?}",
        all.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
    );
    let ev = got[0].json();
    assert_eq!(ev["type"], "wharf.upload.completed");
    assert_eq!(ev["subject"], "/report.csv");
    assert_eq!(ev["data"]["key"], format!("{}acme/report.csv", g.prefix));
    assert_eq!(ev["data"]["bytes"], data.len() as u64);
    assert_eq!(ev["data"]["sha256"], hex::encode(Sha256::digest(&data)));
    // The ETag is the final object's (the S3 copy's), not the temp upload's.
    let head =
        g.s3.client
            .head_object()
            .bucket(&g.s3.bucket)
            .key(format!("{}acme/report.csv", g.prefix))
            .send()
            .await
            .unwrap();
    assert_eq!(ev["data"]["etag"].as_str(), head.e_tag(), "{ev}");
    assert!(head.e_tag().is_some());
    assert_eq!(
        g.s3.get(&format!("{}acme/report.csv", g.prefix))
            .await
            .unwrap(),
        data
    );
    assert!(g
        .s3
        .get(&format!("{}acme/report.csv.filepart", g.prefix))
        .await
        .is_none());

    // Renaming an arrived file is not a new upload: it is announced as a rename, with the
    // bytes now under the new name.
    g.acme("rename report.csv report-final.csv\n").ok();
    let got = hook.wait_accepted(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(hook.accepted().len(), 2);
    let ev = got[1].json();
    assert_eq!(ev["type"], "wharf.file.renamed");
    assert_eq!(ev["subject"], "/report-final.csv");
    assert_eq!(ev["data"]["from_path"], "/report.csv");
    assert_eq!(ev["data"]["sha256"], hex::encode(Sha256::digest(&data)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_upload_emits_a_failed_event() {
    let hook = Receiver::start().await;
    let g = Gateway::start(false, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    g.write_file("big.bin", &random_bytes(30 << 20));
    let mut child = crate::harness::sftp_command(
        g.server.port(),
        "acme",
        &crate::harness::Auth::Password(crate::harness::PW.into()),
        g.w.path(),
        &["-l", "16000"],
    )
    .spawn()
    .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put big.bin\n")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let got = hook.wait_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let ev = got[0].json();
    assert_eq!(ev["type"], "wharf.upload.failed");
    assert_eq!(ev["subject"], "/big.bin");
    assert_eq!(ev["data"]["failure_code"], "partial_upload");
    assert!(ev["data"]["failure_message"].is_string());
    let bytes = ev["data"]["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < 30 << 20, "{bytes}");
    assert!(ev["data"]["sha256"].is_null());
    assert!(g.s3.keys(&g.prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_delivers_again() {
    let hook = Receiver::start().await;
    let g = Gateway::start(false, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    g.write_file("a.csv", b"a\n");
    g.acme("put a.csv\n").ok();
    let first = hook.wait_accepted(1, Duration::from_secs(10)).await;
    let id = first[0].json()["id"].as_str().unwrap().to_string();
    g.w.run(&["events", "replay", "--id", &id]).ok();
    let again = hook.wait_accepted(2, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 2);
    assert_eq!(again[1].json()["id"], id.as_str());
    assert_eq!(
        again[1].body, first[0].body,
        "a replay sends the same bytes"
    );
    g.w.run(&["events", "replay", "--id", "nope"])
        .fails_with(&["no event", "nope"]);
    g.w.run(&[
        "events",
        "replay",
        "--since",
        "2020-01-01T00:00:00Z",
        "--sink",
        "ghost",
    ])
    .fails_with(&["unknown sink", "ghost"]);
    g.w.run(&["events", "list", "--since", "yesterday"])
        .fails_with(&["RFC 3339"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_temp_upload_is_forgotten() {
    let hook = Receiver::start().await;
    let g = Gateway::start(false, &[("WHARF_EVENTS__SINKS", &webhook_sink(&hook))]).await;
    g.w.run(&[
        "user",
        "set",
        "acme",
        "--permissions",
        "list,upload,overwrite,delete,rename",
    ])
    .ok();
    let (old, new) = (random_bytes(1000), random_bytes(2000));
    g.write_file("old.bin", &old);
    g.write_file("new.bin", &new);
    // A temp upload that is deleted, then a different file that reaches the same temp name
    // by a rename: its arrival must not be described with the deleted upload's content.
    g.acme(
        "put old.bin t.csv.filepart\nrm t.csv.filepart\nput new.bin final.csv\n\
         rename final.csv t.csv.filepart\nrename t.csv.filepart done.csv\n",
    )
    .ok();
    let got = hook.wait_accepted(2, Duration::from_secs(10)).await;
    let done = got
        .iter()
        .map(|r| r.json())
        .find(|e| e["subject"] == "/done.csv")
        .expect("an event for done.csv");
    // Exactly the facts of what arrived: the renamed file's.
    assert_eq!(
        done["data"]["sha256"],
        hex::encode(Sha256::digest(&new)),
        "{done}"
    );
    assert_eq!(done["data"]["bytes"], new.len() as u64, "{done}");
}

/// Downloads and deletes are announced on S3 and local storage: a whole `get` with the
/// SHA-256 of what was sent, a read that stops short as failed with the bytes sent, a delete
/// as `wharf.file.deleted`.
#[tokio::test(flavor = "multi_thread")]
async fn downloads_and_deletes_are_announced() {
    for local in [false, true] {
        let g = Gateway::start_on(local, false, &[]).await;
        g.grant_acme_everything();
        let data = random_bytes((5 << 20) + 12_345);
        g.write_file("ack.xml", &data);
        g.acme("put ack.xml\n").ok();
        g.acme("get ack.xml back.xml\n").ok();
        assert_eq!(std::fs::read(g.w.file("back.xml")).unwrap(), data);
        let done = g
            .wait_jsonl_event("wharf.download.completed", "/ack.xml")
            .await;
        assert_eq!(done["data"]["bytes"], data.len() as u64, "{done}");
        assert_eq!(
            done["data"]["sha256"],
            hex::encode(Sha256::digest(&data)),
            "{done}"
        );
        assert_eq!(done["data"]["username"], "acme");
        assert_eq!(done["data"]["protocol"], "sftp");
        assert!(done["data"]["failure_code"].is_null(), "{done}");

        // The first 1,000 bytes only (curl's libssh2 reads ahead, but not the whole file).
        let out = std::process::Command::new("curl")
            .current_dir(g.w.path())
            .args([
                "-sS",
                "--insecure",
                "--max-time",
                "60",
                "-r",
                "0-999",
                "-o",
                "head.xml",
            ])
            .args(["-u", &format!("acme:{}", crate::harness::PW)])
            .arg(format!("sftp://127.0.0.1:{}/ack.xml", g.server.port()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(g.w.file("head.xml")).unwrap(), &data[..1000]);
        let cut = g
            .wait_jsonl_event("wharf.download.failed", "/ack.xml")
            .await;
        assert_eq!(cut["data"]["failure_code"], "partial_download", "{cut}");
        let sent = cut["data"]["bytes"].as_u64().unwrap();
        assert!(sent >= 1000 && sent < data.len() as u64, "{cut}");
        assert!(cut["data"]["sha256"].is_null(), "{cut}");

        // A client killed mid-file (OpenSSH sftp, rate-limited, never sending CLOSE): the
        // download is announced as failed when the session ends.
        let mut sftp = crate::harness::sftp_command(
            g.server.port(),
            "acme",
            &crate::harness::Auth::Password(crate::harness::PW.into()),
            g.w.path(),
            &["-l", "2000"],
        )
        .spawn()
        .unwrap();
        {
            use std::io::Write as _;
            sftp.stdin
                .as_mut()
                .unwrap()
                .write_all(b"get ack.xml cut.xml\n")
                .unwrap();
        }
        // Once it has begun reading (its OPEN is the fifth read line: two OPEN/CLOSE pairs
        // came before), kill it.
        for _ in 0..200 {
            if g.server.log().matches("\"mode\":\"read\"").count() >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sftp.kill().unwrap();
        let _ = sftp.wait();
        let mut cut_off = None;
        for _ in 0..100 {
            let failed: Vec<_> = g
                .jsonl_events()
                .into_iter()
                .filter(|e| e["type"] == "wharf.download.failed")
                .collect();
            if failed.len() == 2 {
                cut_off = Some(failed[1].clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cut_off = cut_off.expect("a failed download event for the cut transfer");
        assert_eq!(
            cut_off["data"]["failure_code"], "partial_download",
            "{cut_off}"
        );
        assert!(
            cut_off["data"]["failure_message"]
                .as_str()
                .unwrap()
                .contains("not closed"),
            "{cut_off}"
        );
        g.acme("rm ack.xml\n").ok();
        let gone = g.wait_jsonl_event("wharf.file.deleted", "/ack.xml").await;
        assert!(
            gone["data"]["location"]
                .as_str()
                .unwrap()
                .ends_with("acme/ack.xml"),
            "{gone}"
        );
        // One event of each: the upload, the download, the cut one, the delete.
        let kinds: Vec<String> = g
            .jsonl_events()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "wharf.upload.completed",
                "wharf.download.completed",
                "wharf.download.failed",
                "wharf.download.failed",
                "wharf.file.deleted"
            ],
            "local={local}"
        );
    }
}

/// The rows a plan touched: each node's rows times its loops, summed over the plan.
fn rows_touched(plan: &serde_json::Value) -> f64 {
    let here =
        plan["Actual Rows"].as_f64().unwrap_or(0.0) * plan["Actual Loops"].as_f64().unwrap_or(1.0);
    here + plan["Plans"]
        .as_array()
        .map_or(0.0, |ps| ps.iter().map(rows_touched).sum())
}

/// Fills the outbox with 30,000 delivered and 20,000 pending deliveries over 5 accounts.
async fn backlog(db: &wharf::db::Db) {
    let fill = [
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 50000) INSERT INTO events (id, type, username, subject, created_us, body) SELECT 'e' || x, 'wharf.upload.completed', 'u' || (x % 5), '/f', x, '{}' FROM g",
        "INSERT INTO event_deliveries (event_seq, sink, username, next_at_us, state) SELECT seq, 'hook', username, 0, CASE WHEN seq <= 30000 THEN 'delivered' ELSE 'pending' END FROM events",
    ];
    for q in fill {
        match db {
            wharf::db::Db::Postgres(p) => sqlx::raw_sql(q).execute(p).await.map(drop),
            wharf::db::Db::Sqlite(p) => sqlx::raw_sql(q).execute(p).await.map(drop),
        }
        .unwrap();
    }
}

/// The real claim on a backlog takes each account's oldest 64 deliveries in commit order,
/// and a second claim takes none of them while the lease lasts.
async fn claims_take_each_accounts_oldest(db: &wharf::db::Db) {
    let outbox = wharf::events::outbox::Outbox::new(db.clone(), vec!["hook".into()]);
    let lease = std::time::Duration::from_secs(30);
    let got = outbox.claim("hook", lease, 32, 64).await.unwrap();
    assert_eq!(got.len(), 5 * 64);
    for u in 0..5 {
        let seqs: Vec<i64> = got
            .iter()
            .filter(|c| c.event.username == format!("u{u}"))
            .map(|c| c.seq)
            .collect();
        let first = (30_001..).find(|s| s % 5 == u).unwrap();
        let expected: Vec<i64> = (0..64).map(|i| first + 5 * i).collect();
        assert_eq!(seqs, expected, "account u{u}");
    }
    let again = outbox.claim("hook", lease, 32, 64).await.unwrap();
    assert!(again.is_empty(), "claimed twice: {}", again.len());
}

/// A claim costs what it claims and the number of accounts with pending events, not the
/// backlog or the history. With the backlog above, on a fresh database whose statistics
/// have not caught up (with the generic plan Postgres keeps for a prepared statement) and
/// after ANALYZE, the claim's plan touches a few thousand rows. The head lookup it replaced
/// (NOT EXISTS over every pending delivery) touched 160 million here.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_claim_cost_follows_accounts_not_the_backlog() {
    use sqlx::Connection as _;
    let pg = crate::harness::PgDb::create().await;
    let cfg = wharf::config::DatabaseConfig {
        url: secrecy::SecretString::from(pg.url.clone()),
        ..wharf::config::DatabaseConfig::default()
    };
    let db = wharf::db::Db::open(&cfg).await.expect("open database");
    backlog(&db).await;
    let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    sqlx::raw_sql(&format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE claim(text, bigint, bigint, text, bigint) AS {}",
        wharf::events::outbox::CLAIM_PG
    ))
    .execute(&mut c)
    .await
    .unwrap();
    for analyzed in [false, true] {
        if analyzed {
            sqlx::raw_sql("ANALYZE").execute(&mut c).await.unwrap();
        }
        sqlx::raw_sql("BEGIN").execute(&mut c).await.unwrap();
        let row = sqlx::raw_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim('hook', 32, 64, 'test', 1)",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
        let text: String = sqlx::Row::try_get_unchecked(&row, 0).unwrap();
        let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
        let touched = rows_touched(&plan[0]["Plan"]);
        assert!(
            touched < 5_000.0,
            "claim plan touched {touched} rows (analyzed: {analyzed}): {plan:#}"
        );
    }
    claims_take_each_accounts_oldest(&db).await;
    db.close().await;
}

/// The same claim on SQLite, on the same backlog.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_claim_takes_each_accounts_oldest_from_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = wharf::config::DatabaseConfig {
        url: secrecy::SecretString::from(format!("sqlite://{}", dir.path().join("w.db").display())),
        ..wharf::config::DatabaseConfig::default()
    };
    let db = wharf::db::Db::open(&cfg).await.expect("open database");
    backlog(&db).await;
    claims_take_each_accounts_oldest(&db).await;
    db.close().await;
}

/// A claim never takes deliveries another claim holds: when a replayed older event becomes
/// an account's head while a later run of that account is leased, the new claim gets the
/// replayed event alone, and the leased run stays its holder's.
async fn a_claim_leaves_anothers_lease_alone(db: &wharf::db::Db) {
    let fill = [
        "INSERT INTO events (id, type, username, subject, created_us, body) VALUES ('a1', 'wharf.upload.completed', 'u', '/1', 1, '{}'), ('a2', 'wharf.upload.completed', 'u', '/2', 2, '{}'), ('a3', 'wharf.upload.completed', 'u', '/3', 3, '{}')",
        "INSERT INTO event_deliveries (event_seq, sink, username, next_at_us, state) SELECT seq, 'hook', username, 0, CASE WHEN id = 'a1' THEN 'delivered' ELSE 'pending' END FROM events",
    ];
    for q in fill {
        match db {
            wharf::db::Db::Postgres(p) => sqlx::raw_sql(q).execute(p).await.map(drop),
            wharf::db::Db::Sqlite(p) => sqlx::raw_sql(q).execute(p).await.map(drop),
        }
        .unwrap();
    }
    let outbox = wharf::events::outbox::Outbox::new(db.clone(), vec!["hook".into()]);
    let lease = std::time::Duration::from_secs(30);
    let first = outbox.claim("hook", lease, 32, 64).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|c| c.event.id.as_str()).collect();
    assert_eq!(ids, ["a2", "a3"]);
    // The first event is replayed: pending again, older than the leased run.
    outbox
        .replay(Some("a1"), None, &["hook".to_string()])
        .await
        .unwrap();
    let second = outbox.claim("hook", lease, 32, 64).await.unwrap();
    let ids: Vec<&str> = second.iter().map(|c| c.event.id.as_str()).collect();
    assert_eq!(
        ids,
        ["a1"],
        "the second claim took another's leased deliveries"
    );
    // The first claim still holds its run.
    assert!(outbox.extend("hook", &first[0].lease, lease).await.unwrap());
    assert!(outbox
        .delivered("hook", &first[0].lease, "u", first[1].seq)
        .await
        .unwrap());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_never_takes_deliveries_another_claim_holds() {
    crate::harness::each_database(|db| {
        Box::pin(async move { a_claim_leaves_anothers_lease_alone(&db).await })
    })
    .await;
}

/// Runs that end together are recorded by one statement on Postgres, and each still learns
/// whether its own deliveries were its claim's: four accounts' runs of one claim are recorded
/// at once, one of whose accounts another instance took meanwhile, and one of which records
/// only the first of its two events.
async fn runs_recorded_together_answer_each_for_its_own(db: &wharf::db::Db) {
    let q = |sql: &'static str| {
        let db = db.clone();
        async move {
            match &db {
                wharf::db::Db::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
                wharf::db::Db::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
            }
            .unwrap()
        }
    };
    q("INSERT INTO events (id, type, username, subject, created_us, body) VALUES \
       ('a1', 'wharf.upload.completed', 'a', '/1', 1, '{}'), ('a2', 'wharf.upload.completed', 'a', '/2', 2, '{}'), \
       ('b1', 'wharf.upload.completed', 'b', '/1', 3, '{}'), ('b2', 'wharf.upload.completed', 'b', '/2', 4, '{}'), \
       ('c1', 'wharf.upload.completed', 'c', '/1', 5, '{}'), ('c2', 'wharf.upload.completed', 'c', '/2', 6, '{}'), \
       ('d1', 'wharf.upload.completed', 'd', '/1', 7, '{}'), ('d2', 'wharf.upload.completed', 'd', '/2', 8, '{}')").await;
    q("INSERT INTO event_deliveries (event_seq, sink, username, next_at_us) SELECT seq, 'hook', username, 0 FROM events").await;
    let outbox = wharf::events::outbox::Outbox::new(db.clone(), vec!["hook".into()]);
    let claimed = outbox
        .claim("hook", std::time::Duration::from_secs(30), 32, 64)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 8);
    let lease = claimed[0].lease.clone();
    let seq = |id: &str| claimed.iter().find(|c| c.event.id == id).unwrap().seq;
    // Another instance took account c (its lease lapsed there, say).
    q("UPDATE event_deliveries SET lease_owner = 'another' WHERE username = 'c'").await;
    let answers = futures::future::join_all([
        outbox.delivered("hook", &lease, "a", seq("a2")),
        outbox.delivered("hook", &lease, "b", seq("b2")),
        outbox.delivered("hook", &lease, "c", seq("c2")),
        outbox.delivered("hook", &lease, "d", seq("d1")),
    ])
    .await;
    let answers: Vec<bool> = answers.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(answers, [true, true, false, true]);
    type Row = (String, String, i32, Option<i64>, Option<String>);
    let rows: Vec<Row> = match db {
        wharf::db::Db::Postgres(p) => sqlx::query_as("SELECT e.id, d.state, d.attempts, d.delivered_us, d.lease_owner FROM event_deliveries d JOIN events e ON e.seq = d.event_seq ORDER BY e.id").fetch_all(p).await,
        wharf::db::Db::Sqlite(p) => sqlx::query_as("SELECT e.id, d.state, d.attempts, d.delivered_us, d.lease_owner FROM event_deliveries d JOIN events e ON e.seq = d.event_seq ORDER BY e.id").fetch_all(p).await,
    }
    .unwrap();
    let states: Vec<(&str, &str, i32, Option<&str>)> = rows
        .iter()
        .map(|(id, state, attempts, _, owner)| {
            (id.as_str(), state.as_str(), *attempts, owner.as_deref())
        })
        .collect();
    assert_eq!(
        states,
        [
            ("a1", "delivered", 1, None),
            ("a2", "delivered", 1, None),
            ("b1", "delivered", 1, None),
            ("b2", "delivered", 1, None),
            ("c1", "pending", 0, Some("another")),
            ("c2", "pending", 0, Some("another")),
            ("d1", "delivered", 1, None),
            ("d2", "pending", 0, Some(lease.as_str())),
        ]
    );
    if matches!(db, wharf::db::Db::Postgres(_)) {
        // One statement: the database's clock is read once for all of them.
        let times: std::collections::BTreeSet<i64> = rows.iter().filter_map(|r| r.3).collect();
        assert_eq!(
            times.len(),
            1,
            "recorded by more than one statement: {times:?}"
        );
    }
    db.close().await;
}

/// Current-thread: the four recordings are all queued before the writer runs.
#[tokio::test(flavor = "current_thread")]
async fn runs_that_end_together_are_recorded_together_each_for_its_own_claim() {
    crate::harness::each_database(|db| {
        Box::pin(async move { runs_recorded_together_answer_each_for_its_own(&db).await })
    })
    .await;
}
