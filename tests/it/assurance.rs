//! Ingestion assurance: duplicates caught before a pipeline books them twice (`--duplicates
//! flag|refuse`), over SFTP and FTPS, with temp names, concurrent uploads and the window.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::ftps::{curl_put, ftps_gateway_with};
use crate::harness::{random_bytes, Gateway, Receiver, PW};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Events the webhook accepted, as JSON.
fn events(hook: &Receiver) -> Vec<serde_json::Value> {
    hook.accepted().iter().map(|r| r.json()).collect()
}

async fn wait_for(hook: &Receiver, kind: &str, path: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = events(hook)
            .into_iter()
            .find(|e| e["type"] == kind && e["data"]["path"] == path)
        {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} for {path}: {:#?}",
            events(hook)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A folder that flags duplicates lets them land with `duplicate_of`; one that refuses them
/// stores nothing, fails the close with a message naming the earlier file, and says
/// `duplicate` in a failed event. Different bytes under the same name are no duplicate, nor
/// is the same content after the window, nor the same content in another folder. Over SFTP
/// (put, and a temp name renamed) and FTPS.
#[tokio::test(flavor = "multi_thread")]
async fn duplicates_are_flagged_or_refused_before_they_are_visible() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(&hook, true, &[]).await;
    for (folder, policy) in [
        ("/flag", "flag"),
        ("/refuse", "refuse"),
        ("/short", "refuse"),
    ] {
        let mut more = vec![
            "--permissions",
            "list,upload,overwrite,rename",
            "--duplicates",
            policy,
        ];
        if folder == "/short" {
            more.extend(["--duplicate-window", "3s"]);
        }
        g.w.dir_add("acme", folder, &format!("acme{folder}"), &more)
            .ok();
    }
    g.w.dir_add(
        "acme",
        "/other",
        "acme/other",
        &["--permissions", "list,upload"],
    )
    .ok();
    let (report, changed) = (random_bytes(100_000), random_bytes(100_000));
    g.write_file("report.csv", &report);
    g.write_file("changed.csv", &changed);

    // flag: both land; the second names the first.
    g.acme("put report.csv /flag/settle-1.csv\nput report.csv /flag/settle-1-resend.csv\n")
        .ok();
    let first = wait_for(&hook, "wharf.upload.completed", "/flag/settle-1.csv").await;
    assert!(first["data"]["duplicate_of"].is_null(), "{first}");
    let second = wait_for(&hook, "wharf.upload.completed", "/flag/settle-1-resend.csv").await;
    assert_eq!(
        second["data"]["duplicate_of"]["event_id"], first["id"],
        "{second}"
    );
    assert_eq!(second["data"]["duplicate_of"]["path"], "/flag/settle-1.csv");
    assert!(second["data"]["duplicate_of"]["arrived_at"].is_string());
    assert!(g.object("acme/flag/settle-1-resend.csv").await.is_some());

    // refuse: the first lands; the same bytes under another name (SFTP), through a temp name,
    // and over FTPS are refused with nothing stored.
    g.acme("put report.csv /refuse/settle-2.csv\n").ok();
    let landed = wait_for(&hook, "wharf.upload.completed", "/refuse/settle-2.csv").await;
    let run = g.acme("put report.csv /refuse/settle-2-again.csv\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(g.object("acme/refuse/settle-2-again.csv").await.is_none());
    let failed = wait_for(&hook, "wharf.upload.failed", "/refuse/settle-2-again.csv").await;
    assert_eq!(failed["data"]["failure_code"], "duplicate", "{failed}");
    assert_eq!(failed["data"]["duplicate_of"]["event_id"], landed["id"]);
    let why = failed["data"]["failure_message"].as_str().unwrap();
    assert!(why.contains("/refuse/settle-2.csv"), "{why}");
    let run = g.acme("put report.csv /refuse/winscp.csv.filepart\nrename /refuse/winscp.csv.filepart /refuse/winscp.csv\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(g.object("acme/refuse/winscp.csv").await.is_none());
    assert!(g.object("acme/refuse/winscp.csv.filepart").await.is_none());
    let failed = wait_for(&hook, "wharf.upload.failed", "/refuse/winscp.csv").await;
    assert_eq!(failed["data"]["failure_code"], "duplicate", "{failed}");
    let out = curl_put(&g, "acme", PW, "report.csv", "refuse/by-ftps.csv");
    assert!(!out.status.success(), "{out:?}");
    assert!(g.object("acme/refuse/by-ftps.csv").await.is_none());
    let failed = wait_for(&hook, "wharf.upload.failed", "/refuse/by-ftps.csv").await;
    assert_eq!(failed["data"]["failure_code"], "duplicate", "{failed}");

    // Different bytes under the same name are no duplicate; nor are the same bytes in a
    // folder that does not check.
    g.acme("put changed.csv /refuse/settle-2.csv\nput report.csv /other/settle-2.csv\n")
        .ok();
    assert_eq!(g.object("acme/refuse/settle-2.csv").await.unwrap(), changed);
    // Past the window, the same content is new again.
    g.acme("put report.csv /short/a.csv\n").ok();
    assert_ne!(g.acme("put report.csv /short/b.csv\n").code, Some(0));
    tokio::time::sleep(Duration::from_secs(4)).await;
    g.acme("put report.csv /short/c.csv\n").ok();
    let late = wait_for(&hook, "wharf.upload.completed", "/short/c.csv").await;
    assert_eq!(late["data"]["sha256"], sha(&report));
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
}

/// Two clients upload the same bytes under different names at the same time into a folder
/// that refuses duplicates: exactly one lands. Large files too (multipart).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_identical_uploads_land_once() {
    for size in [200_000, (11 << 20) + 7] {
        let g = Gateway::start(true, &[]).await;
        g.w.dir_add(
            "acme",
            "/in",
            "acme/in",
            &["--permissions", "list,upload", "--duplicates", "refuse"],
        )
        .ok();
        let data = random_bytes(size);
        g.write_file("same.bin", &data);
        let children: Vec<_> = (0..4)
            .map(|i| {
                let c = crate::harness::spawn_acme_sftp(
                    g.server.port(),
                    g.w.path(),
                    &[],
                    format!("put same.bin /in/copy-{i}.bin\n").as_bytes(),
                );
                c
            })
            .collect();
        let ok = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap().status.success())
            .filter(|ok| *ok)
            .count();
        assert_eq!(ok, 1, "{size}: {ok} of 4 landed\n{}", g.server.log());
        let mut stored = 0;
        for i in 0..4 {
            stored += usize::from(g.object(&format!("acme/in/copy-{i}.bin")).await.is_some());
        }
        assert_eq!(stored, 1, "{size}");
        assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
    }
}

/// An account without folders sets its policy with `wharf user set`.
#[tokio::test(flavor = "multi_thread")]
async fn an_account_without_folders_refuses_duplicates_too() {
    let g = Gateway::start(false, &[]).await;
    g.w.run(&[
        "user",
        "set",
        "acme",
        "--duplicates",
        "refuse",
        "--duplicate-window",
        "31d",
    ])
    .ok();
    g.w.run(&["user", "set", "acme", "--duplicates", "sometimes"])
        .fails_with(&["allow, flag or refuse"]);
    let shown = g.w.run(&["user", "show", "acme", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown.ok().stdout).unwrap();
    assert_eq!(v["duplicates"], "refuse");
    g.write_file("a.csv", b"statement,1\n");
    g.acme("put a.csv\n").ok();
    assert_ne!(g.acme("put a.csv b.csv\n").code, Some(0));
    assert!(g.stored("b.csv").await.is_none());
}

/// A cron expression (with seconds, in UTC) for the one instant `t`.
fn at_instant(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike as _, Timelike as _};
    format!(
        "{} {} {} {} {} *",
        t.second(),
        t.minute(),
        t.hour(),
        t.day(),
        t.month()
    )
}

/// `wharf expect add NAME --user acme` with a window opening at `opens`, due `deadline`
/// seconds later, with `grace` more.
fn expect(
    g: &Gateway,
    name: &str,
    pattern: &str,
    opens: chrono::DateTime<chrono::Utc>,
    more: &[&str],
) {
    let schedule = at_instant(opens);
    let mut args = vec![
        "expect",
        "add",
        name,
        "--user",
        "acme",
        "--pattern",
        pattern,
        "--schedule",
        &schedule,
        "--timezone",
        "UTC",
        "--deadline",
        "6s",
        "--grace",
        "6s",
    ];
    args.extend_from_slice(more);
    g.w.run(&args).ok();
}

/// Expected arrivals on two instances: a window met by a matching upload; one late then
/// missed when nothing arrives; one late then met by a file after its deadline; one that a
/// file of another name, or one too small, does not meet. Each event exactly once across the
/// instances; `wharf expect status` shows the states.
#[tokio::test(flavor = "multi_thread")]
async fn expected_arrivals_are_met_late_or_missed_once_across_instances() {
    let hook = Receiver::start().await;
    let sinks = crate::events::webhook_sink(&hook);
    let g = Gateway::start(
        true,
        &[
            ("WHARF_EVENTS__SINKS", &sinks),
            ("WHARF_EXPECTATIONS__INTERVAL", "1s"),
        ],
    )
    .await;
    let second = crate::harness::Server::start(&g.w);
    g.w.dir_add(
        "acme",
        "/inbound",
        "acme/in",
        &["--permissions", "list,upload"],
    )
    .ok();
    let opens = chrono::Utc::now() + chrono::Duration::seconds(8);
    expect(&g, "met", "met_*.csv", opens, &["--folder", "/inbound"]);
    expect(&g, "missed", "missed_*.csv", opens, &[]);
    expect(&g, "late-met", "late_*.csv", opens, &[]);
    expect(
        &g,
        "not-these",
        "big_*.csv",
        opens,
        &["--min-bytes", "1KiB"],
    );
    g.w.run(&[
        "expect",
        "add",
        "bad",
        "--user",
        "acme",
        "--pattern",
        "*",
        "--schedule",
        "every day",
        "--timezone",
        "UTC",
        "--deadline",
        "1h",
    ])
    .fails_with(&["invalid --schedule"]);
    g.w.run(&[
        "expect",
        "add",
        "bad",
        "--user",
        "nobody",
        "--pattern",
        "*",
        "--schedule",
        "0 0 * * *",
        "--timezone",
        "UTC",
        "--deadline",
        "1h",
    ])
    .fails_with(&["no user nobody"]);
    let listed = g.w.run(&["expect", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&listed.ok().stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);

    g.write_file("met_1.csv", &random_bytes(2000));
    g.write_file("late_1.csv", &random_bytes(2000));
    g.write_file("big_1.csv", b"tiny\n");
    g.write_file("other.csv", &random_bytes(2000));
    // In the window, before the deadline.
    tokio::time::sleep_until(tokio::time::Instant::now() + secs_until(opens, 2)).await;
    g.acme("put met_1.csv /inbound/\nput big_1.csv /inbound/\nput other.csv /inbound/\n")
        .ok();
    // After the deadline, within the grace.
    tokio::time::sleep_until(tokio::time::Instant::now() + secs_until(opens, 8)).await;
    g.acme("put late_1.csv /inbound/\n").ok();
    // Past the grace, and a few evaluations more.
    tokio::time::sleep_until(tokio::time::Instant::now() + secs_until(opens, 18)).await;

    let got = events(&hook);
    let of = |kind: &str, name: &str| -> Vec<serde_json::Value> {
        got.iter()
            .filter(|e| e["type"] == kind && e["data"]["expectation"] == name)
            .cloned()
            .collect()
    };
    let met = of("wharf.expectation.met", "met");
    assert_eq!(met.len(), 1, "{got:#?}");
    assert_eq!(met[0]["data"]["late"], false);
    let arrival = got
        .iter()
        .find(|e| {
            e["type"] == "wharf.upload.completed" && e["data"]["path"] == "/inbound/met_1.csv"
        })
        .unwrap();
    assert_eq!(met[0]["data"]["arrival_event_ids"][0], arrival["id"]);
    assert!(of("wharf.expectation.late", "met").is_empty());
    for name in ["missed", "not-these"] {
        assert_eq!(
            of("wharf.expectation.late", name).len(),
            1,
            "{name}: {got:#?}"
        );
        assert_eq!(
            of("wharf.expectation.missed", name).len(),
            1,
            "{name}: {got:#?}"
        );
        assert!(of("wharf.expectation.met", name).is_empty(), "{name}");
    }
    assert_eq!(of("wharf.expectation.late", "late-met").len(), 1);
    let late_met = of("wharf.expectation.met", "late-met");
    assert_eq!(late_met.len(), 1, "{got:#?}");
    assert_eq!(late_met[0]["data"]["late"], true);
    assert!(of("wharf.expectation.missed", "late-met").is_empty());
    // No event twice, though two instances evaluate every second.
    let mut ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was delivered twice");

    let status = g.w.run(&["expect", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.ok().stdout).unwrap();
    let state = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|w| w["expectation"] == name)
            .map(|w| {
                (
                    w["state"].as_str().unwrap().to_string(),
                    w["late"].as_bool().unwrap(),
                )
            })
            .unwrap()
    };
    assert_eq!(state("met"), ("met".into(), false));
    assert_eq!(state("late-met"), ("met".into(), true));
    assert_eq!(state("missed"), ("missed".into(), false));
    let metrics = g.server.http_get("/metrics").await.1;
    assert!(
        metrics.contains("wharf_expectation_windows{state=\"missed\"} 2"),
        "{metrics}"
    );
    drop(second);
}

/// How long from now until `secs` seconds after `t`.
fn secs_until(t: chrono::DateTime<chrono::Utc>, secs: i64) -> Duration {
    (t + chrono::Duration::seconds(secs) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default()
}

/// Every instance stopped across a window's deadline and the end of its grace: at the next
/// start its late and missed events still come, once, with the times they were due.
#[tokio::test(flavor = "multi_thread")]
async fn a_window_that_closed_while_every_instance_was_down_is_settled_at_start() {
    let mut g = Gateway::start(false, &[("WHARF_EXPECTATIONS__INTERVAL", "1s")]).await;
    let opens = chrono::Utc::now() + chrono::Duration::seconds(3);
    expect(&g, "overnight", "settlement_*.csv", opens, &[]);
    assert!(g.server.terminate(Duration::from_secs(20)).is_some());
    tokio::time::sleep(secs_until(opens, 14)).await;
    g.restart(&[], &[]);
    let late = g
        .wait_jsonl_event_of("wharf.expectation.late", "overnight")
        .await;
    let missed = g
        .wait_jsonl_event_of("wharf.expectation.missed", "overnight")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = g.jsonl_events();
    assert_eq!(
        all.iter()
            .filter(|e| e["type"] == "wharf.expectation.missed")
            .count(),
        1
    );
    assert_eq!(
        all.iter()
            .filter(|e| e["type"] == "wharf.expectation.late")
            .count(),
        1
    );
    // The times they were due, not when the instance came back.
    let due = |e: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap()
    };
    assert_eq!(
        due(&late),
        chrono::DateTime::parse_from_rfc3339(late["data"]["deadline"].as_str().unwrap()).unwrap()
    );
    assert_eq!(
        due(&missed),
        chrono::DateTime::parse_from_rfc3339(missed["data"]["closes_at"].as_str().unwrap())
            .unwrap()
    );
    assert!(due(&missed) < chrono::Utc::now() - chrono::Duration::seconds(2));
}
