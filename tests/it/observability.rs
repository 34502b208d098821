//! What an operator sees: Prometheus counters that move by exactly what real sessions did,
//! `/healthz` and `/readyz` following the S3 server, and one JSON log line per activity.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::harness::{random_bytes, Auth, Gateway, Server, PW};

/// The value of one sample (`name{labels}`) in a scrape; 0 when absent.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

pub(crate) async fn scrape(s: &Server) -> String {
    let (status, body) = s.http_get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes until `series` reaches `want`.
async fn wait_sample(s: &Server, series: &str, want: f64) -> String {
    for _ in 0..100 {
        let text = scrape(s).await;
        if sample(&text, series) == want {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never reached {want}:\n{}", scrape(s).await);
}

/// Every S3 request wharf made so far, over all operations.
fn s3_requests(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("wharf_s3_request_duration_seconds_count{"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// A session of many small `put`s costs one S3 request per file: the stat OpenSSH sends
/// before each put and the one at open are answered from what the session already learnt.
/// A one-file session costs two (its stat, its PutObject). Each file still lands whole.
#[tokio::test(flavor = "multi_thread")]
async fn small_files_cost_one_s3_request_each() {
    let g = Gateway::start(false, &[]).await;
    let mut batch = String::new();
    let mut files = Vec::new();
    for i in 0..30 {
        let data = random_bytes(4096 + i);
        g.write_file(&format!("f{i}.csv"), &data);
        batch.push_str(&format!("put f{i}.csv\n"));
        files.push(data);
    }
    // A file already there, named as a prefix of others: the one-request stat tells them apart.
    g.write_file("f1", b"x");
    g.acme("put f1\n").ok();

    let before = scrape(&g.server).await;
    g.acme(&batch).ok();
    let after = scrape(&g.server).await;
    let n = s3_requests(&after) - s3_requests(&before);
    assert!(
        (30.0..=36.0).contains(&n),
        "{n} S3 requests for 30 small files:\n{after}"
    );
    assert_eq!(
        sample(
            &after,
            "wharf_s3_request_duration_seconds_count{operation=\"PutObject\"}"
        ) - sample(
            &before,
            "wharf_s3_request_duration_seconds_count{operation=\"PutObject\"}"
        ),
        30.0
    );
    for (i, data) in files.iter().enumerate() {
        assert_eq!(
            g.stored(&format!("f{i}.csv")).await.as_deref(),
            Some(&data[..])
        );
    }
    assert_eq!(g.stored("f1").await.as_deref(), Some(&b"x"[..]));

    let before = scrape(&g.server).await;
    g.write_file("one.csv", b"1\n");
    g.acme("put one.csv\n").ok();
    let after = scrape(&g.server).await;
    assert_eq!(s3_requests(&after) - s3_requests(&before), 2.0, "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_by_exactly_what_sessions_did() {
    let g = Gateway::start(false, &[]).await;
    let (small, large) = (random_bytes(1000), random_bytes(6 << 20));
    g.write_file("small.csv", &small);
    g.write_file("large.bin", &large);

    let (status, body) = g.server.http_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let before = scrape(&g.server).await;
    assert!(before.contains("# TYPE wharf_uploads counter"), "{before}");

    g.acme("put small.csv\nput large.bin\n").ok();
    let r = g.sftp("acme", &Auth::Password("not-the-password".into()), "ls\n");
    assert_ne!(r.code, Some(0));

    let delivered = "wharf_event_deliveries_total{sink=\"local\",outcome=\"delivered\"}";
    wait_sample(&g.server, delivered, sample(&before, delivered) + 2.0).await;
    let after = wait_sample(&g.server, "wharf_sessions_active{protocol=\"sftp\"}", 0.0).await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);

    assert_eq!(
        moved("wharf_uploads_total{protocol=\"sftp\",outcome=\"completed\"}"),
        2.0
    );
    assert_eq!(
        moved("wharf_uploads_total{protocol=\"sftp\",outcome=\"failed\"}"),
        0.0
    );
    assert_eq!(
        moved("wharf_upload_bytes_total{protocol=\"sftp\"}"),
        (small.len() + large.len()) as f64
    );
    assert_eq!(
        moved("wharf_upload_size_bytes_count{protocol=\"sftp\"}"),
        2.0
    );
    assert_eq!(
        moved("wharf_upload_size_bytes_sum{protocol=\"sftp\"}"),
        (small.len() + large.len()) as f64
    );
    assert_eq!(
        moved("wharf_upload_duration_seconds_count{protocol=\"sftp\"}"),
        2.0
    );
    assert_eq!(
        moved("wharf_auth_failures_total{protocol=\"sftp\",method=\"password\"}"),
        1.0
    );
    // The small file is one PutObject; the 6 MiB one is a multipart upload of 5 MiB parts.
    assert_eq!(
        moved("wharf_s3_request_duration_seconds_count{operation=\"PutObject\"}"),
        1.0
    );
    assert_eq!(
        moved("wharf_s3_request_duration_seconds_count{operation=\"UploadPart\"}"),
        2.0
    );
    assert_eq!(
        moved("wharf_s3_request_duration_seconds_count{operation=\"CompleteMultipartUpload\"}"),
        1.0
    );
    assert!(!after.contains("wharf_s3_request_errors_total{operation=\"PutObject\"}"));
    assert_eq!(sample(&after, "wharf_outbox_pending{sink=\"local\"}"), 0.0);
    assert_eq!(
        sample(
            &after,
            "wharf_outbox_oldest_pending_age_seconds{sink=\"local\"}"
        ),
        0.0
    );
    // No usernames or paths in labels.
    assert!(!after.contains("acme") && !after.contains("small.csv"));
}

/// A TCP relay in front of the S3 server, so a test can make S3 unreachable and bring it
/// back without disturbing other tests that share the server.
struct Relay {
    port: u16,
    target: String,
    tasks: JoinSet<()>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut r = Relay {
            port,
            target: target.into(),
            tasks: JoinSet::new(),
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target.clone();
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
    }

    /// Closes the listener and every relayed connection: S3 is unreachable.
    async fn stop(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

async fn wait_ready(s: &Server, want: u16) -> serde_json::Value {
    let mut last = (0, String::new());
    for _ in 0..60 {
        last = s.http_get("/readyz").await;
        if last.0 == want {
            return serde_json::from_str(&last.1).expect("readyz body is JSON");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("/readyz never answered {want}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_s3_server() {
    let s3 = crate::harness::S3Env::from_env();
    let target = s3
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut relay = Relay::start(&target).await;
    let endpoint = format!("http://127.0.0.1:{}", relay.port);
    let g = Gateway::start(false, &[("WHARF_STORAGE__S3__ENDPOINT", &endpoint)]).await;

    let ready = wait_ready(&g.server, 200).await;
    assert_eq!(ready["status"], "ready");
    for check in ["database", "storage", "host_keys"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }

    relay.stop().await;
    let down = wait_ready(&g.server, 503).await;
    assert_eq!(down["status"], "unavailable");
    assert_eq!(down["checks"]["database"], "ok", "{down}");
    assert_ne!(down["checks"]["storage"], "ok", "{down}");
    // Liveness is not readiness: the process is still up.
    assert_eq!(g.server.http_get("/healthz").await.0, 200);

    relay.restart().await;
    let back = wait_ready(&g.server, 200).await;
    assert_eq!(back["checks"]["storage"], "ok", "{back}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_activity_is_one_json_line_with_who_did_it() {
    let g = Gateway::start(false, &[]).await;
    g.grant_acme_everything();
    g.write_file("report.csv", b"id,amount\n1,100\n");
    let r = g.sftp("acme", &Auth::Password("wrong-password-1".into()), "ls\n");
    assert_ne!(r.code, Some(0));
    g.acme(
        "mkdir inbound\nput report.csv inbound/report.csv.filepart\n\
         rename inbound/report.csv.filepart inbound/report.csv\nchmod 600 inbound/report.csv\n\
         get inbound/report.csv copy.csv\nrm inbound/report.csv\nrmdir inbound\n",
    )
    .ok();
    // DISCONNECTED is written when the server notices the session ended.
    let mut log = String::new();
    for _ in 0..50 {
        log = g.server.log();
        if log.matches("\"DISCONNECTED\"").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        let Some(activity) = v["activity"].as_str() else {
            continue;
        };
        *seen.entry(activity.to_string()).or_default() += 1;
        if activity == "EVENT_DELIVERY" {
            // Not part of a session: the dispatcher's own line per attempt.
            assert!(v["event_id"].is_string() && v["attempt"].is_u64(), "{line}");
            assert_eq!(
                (&v["sink"], &v["outcome"]),
                (&"local".into(), &"delivered".into())
            );
            continue;
        }
        let span = &v["span"];
        for field in ["session_id", "protocol", "client_ip"] {
            assert!(span[field].is_string(), "{field} missing: {line}");
        }
        assert_eq!(span["protocol"], "sftp");
        if !matches!(activity, "CONNECTED" | "AUTH_FAILURE" | "DISCONNECTED") {
            assert_eq!(span["username"], "acme", "{line}");
        }
        match activity {
            "AUTH_FAILURE" => {
                assert_eq!(v["method"], "password", "{line}");
                assert_eq!(v["reason"], "bad_password", "{line}");
            }
            "AUTH_SUCCESS" => assert_eq!(v["method"], "password", "{line}"),
            "CLOSE" if v["mode"] == "write" => {
                assert!(
                    v["bytes_in"].is_u64() && v["duration_ms"].is_u64(),
                    "{line}"
                );
                assert_eq!(v["sha256"].as_str().map(str::len), Some(64), "{line}");
            }
            "CLOSE" => {
                assert_eq!(v["mode"], "read", "{line}");
                assert_eq!(v["bytes_out"], 16, "{line}");
            }
            "DISCONNECTED" => assert!(v["duration_ms"].is_u64(), "{line}"),
            _ => {}
        }
    }
    for activity in [
        "CONNECTED",
        "AUTH_FAILURE",
        "AUTH_SUCCESS",
        "MKDIR",
        "OPEN",
        "CLOSE",
        "RENAME",
        "SETSTAT",
        "DELETE",
        "RMDIR",
        "DISCONNECTED",
        "EVENT_DELIVERY",
    ] {
        assert!(
            seen.contains_key(activity),
            "no {activity} line in {seen:?}\n{log}"
        );
    }
    assert_eq!(seen["CLOSE"], 2, "an upload and a download: {seen:?}");
    assert_eq!(seen["CONNECTED"], 2, "{seen:?}");
    assert_eq!(seen["DISCONNECTED"], 2, "{seen:?}");
    assert!(!log.contains(PW) && !log.contains("wrong-password-1"));
}

/// A balancer checks each backend of an instance on its own (three per instance in the recipe
/// in `deploy/`, each every second). Checks that come within a second of each other share one
/// run of the checks: one S3 HeadBucket and one database ping, not one per check. A check
/// after that second runs them again, so an outage still shows within a second.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_checks_within_a_second_share_one_run() {
    let g = Gateway::start(false, &[]).await;
    let series = "wharf_s3_request_duration_seconds_count{operation=\"HeadBucket\"}";
    wait_ready(&g.server, 200).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let before = sample(&scrape(&g.server).await, series);
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..9).map(|_| g.server.http_get("/readyz"))).await;
    let elapsed = started.elapsed();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["checks"]["storage"], "ok", "{body}");
    }
    let heads = sample(&scrape(&g.server).await, series) - before;
    // One run, or one more for each second the nine checks took on a busy machine.
    assert!(
        heads >= 1.0 && heads <= 1.0 + elapsed.as_secs() as f64,
        "{heads} HeadBucket requests for 9 checks in {elapsed:?}"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = sample(&scrape(&g.server).await, series);
    assert_eq!(g.server.http_get("/readyz").await.0, 200);
    assert_eq!(
        sample(&scrape(&g.server).await, series) - before,
        1.0,
        "a check a second after the last run runs the checks again"
    );
}

/// A shutdown that begins while `/readyz` runs its checks is answered `draining`, not with
/// the checks' "ready": a balancer must not go on choosing an instance that said it drains.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_started_before_a_shutdown_answers_draining() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use wharf::telemetry::http::{serve, Check, Endpoint};
    let slow = Check {
        name: "slow",
        probe: Box::new(|| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(())
            })
        }),
    };
    let draining = Arc::new(AtomicBool::new(false));
    let endpoint = Arc::new(Endpoint {
        checks: vec![slow],
        draining: draining.clone(),
        refresh: Box::new(|| Box::pin(async {})),
        checked: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve(listener, endpoint, stop.clone()));
    let get = |addr| async move {
        let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // Ready while nothing drains.
    let (status, body) = get(addr).await;
    assert_eq!(status, 200, "{body}");
    // A check under way (the last outcome is over a second old), then the shutdown begins.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pending = tokio::spawn(get(addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    draining.store(true, Ordering::Release);
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    stop.cancel();
}
