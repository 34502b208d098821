//! Malware scanning before commit, with a real clamd (started by scripts/test.sh with a
//! signature database generated from the EICAR test string): nothing infected becomes
//! visible, over SFTP (one part and multipart, temp names) and FTPS; clamd down, silent or
//! given too much follows the configured policy; many scans at once wait for their turn.

use std::time::Duration;

use crate::ftps::{curl_put, ftps_gateway_with};
use crate::harness::{random_bytes, Gateway, Receiver, PW};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn clamd() -> String {
    std::env::var("WHARF_TEST_CLAMD").unwrap_or_else(|_| {
        panic!(
            "WHARF_TEST_CLAMD is not set: run the tests with scripts/test.sh, which starts a clamd \
             (Debian's clamav-daemon) with a generated signature database"
        )
    })
}

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

/// The EICAR file over SFTP (one PutObject) and FTPS, and a 30 MiB file with EICAR at its
/// end (multipart), and a temp-name upload of it: each refused, with nothing in storage, no
/// multipart upload left and a failed event naming the signature (the client hears only
/// "rejected by content scan"). A clean file next to them lands with its `scan` field, and
/// a clean temp-name upload's arrival carries it too.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_infected_becomes_visible() {
    let hook = Receiver::start().await;
    let clamd = clamd();
    let g = ftps_gateway_with(&hook, false, &[("WHARF_SCAN__CLAMD", &clamd)]).await;
    g.write_file("eicar.com", EICAR);
    let mut big = random_bytes(30 << 20);
    big.extend_from_slice(EICAR);
    g.write_file("big.bin", &big);
    let clean = random_bytes(200_000);
    g.write_file("clean.csv", &clean);

    let run = g.acme("put eicar.com\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    let run = g.acme("put big.bin\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    let run = g.acme("put eicar.com sneaky.csv.filepart\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    let out = curl_put(&g, "acme", PW, "eicar.com", "by-ftps.com");
    assert!(!out.status.success(), "{out:?}");
    for path in [
        "/eicar.com",
        "/big.bin",
        "/sneaky.csv.filepart",
        "/by-ftps.com",
    ] {
        let e = wait_for(&hook, "wharf.upload.failed", path).await;
        assert_eq!(e["data"]["failure_code"], "infected", "{e}");
        assert_eq!(
            e["data"]["failure_message"],
            format!("{path}: rejected by content scan"),
            "{e}"
        );
        assert_eq!(e["data"]["scan"]["result"], "infected", "{e}");
        assert!(
            e["data"]["scan"]["signature"]
                .as_str()
                .unwrap()
                .contains("Wharf-Test-EICAR"),
            "{e}"
        );
    }
    assert!(
        g.stored_files().await.is_empty(),
        "{:?}",
        g.stored_files().await
    );
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
    assert!(g.server.log().contains("rejected by content scan"));

    g.acme("put clean.csv\nput clean.csv report.csv.part\nrename report.csv.part report.csv\n")
        .ok();
    for path in ["/clean.csv", "/report.csv"] {
        let e = wait_for(&hook, "wharf.upload.completed", path).await;
        assert_eq!(e["data"]["scan"]["engine"], "clamav", "{e}");
        assert_eq!(e["data"]["scan"]["result"], "clean", "{e}");
        assert!(e["data"]["scan"]["signature_db"].is_string(), "{e}");
    }
    assert_eq!(g.stored("clean.csv").await.unwrap(), clean);
    let metrics = g.server.http_get("/metrics").await.1;
    assert!(
        metrics.contains("wharf_scans_total{result=\"infected\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("wharf_clamd_reachable 1"), "{metrics}");
}

/// A folder with `--no-scan` is not scanned; `scan.by_default = false` scans only folders
/// that say `--scan`.
#[tokio::test(flavor = "multi_thread")]
async fn folders_choose_whether_they_are_scanned() {
    let hook = Receiver::start().await;
    let sinks = crate::events::webhook_sink(&hook);
    let clamd = clamd();
    let g = Gateway::start(
        false,
        &[
            ("WHARF_SCAN__CLAMD", &clamd),
            ("WHARF_SCAN__BY_DEFAULT", "false"),
            ("WHARF_EVENTS__SINKS", &sinks),
        ],
    )
    .await;
    g.w.dir_add(
        "acme",
        "/scanned",
        "acme/scanned",
        &["--permissions", "list,upload", "--scan"],
    )
    .ok();
    g.w.dir_add(
        "acme",
        "/plain",
        "acme/plain",
        &["--permissions", "list,upload"],
    )
    .ok();
    g.write_file("eicar.com", EICAR);
    assert_ne!(g.acme("put eicar.com /scanned/e.com\n").code, Some(0));
    g.acme("put eicar.com /plain/e.com\n").ok();
    let e = wait_for(&hook, "wharf.upload.completed", "/plain/e.com").await;
    assert!(e["data"]["scan"].is_null(), "{e}");
}

/// clamd unreachable: `scan.unavailable = "refuse"` fails the upload with its event, and
/// `"allow"` lets it land saying so. A clamd that takes the connection and never answers is
/// bounded by `scan.timeout`. A file over `scan.max_bytes`: refused, or let through unscanned.
#[tokio::test(flavor = "multi_thread")]
async fn what_the_scanner_cannot_judge_follows_the_policy() {
    // A closed port, and a listener that accepts and never reads a byte.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let clamd = clamd();
    let cases: [(&str, String, &str, &str, usize); 5] = [
        (
            "down-refuse",
            format!("tcp://{closed}"),
            "refuse",
            "refuse",
            100_000,
        ),
        (
            "down-allow",
            format!("tcp://{closed}"),
            "allow",
            "refuse",
            100_000,
        ),
        (
            "silent-refuse",
            format!("tcp://{silent_addr}"),
            "refuse",
            "refuse",
            100_000,
        ),
        ("big-refuse", clamd.clone(), "refuse", "refuse", 3 << 20),
        ("big-allow", clamd.clone(), "refuse", "allow", 3 << 20),
    ];
    for (case, url, unavailable, oversize, size) in cases {
        let hook = Receiver::start().await;
        let sinks = crate::events::webhook_sink(&hook);
        let g = Gateway::start(
            false,
            &[
                ("WHARF_SCAN__CLAMD", &url),
                ("WHARF_SCAN__UNAVAILABLE", unavailable),
                ("WHARF_SCAN__OVERSIZE", oversize),
                ("WHARF_SCAN__MAX_BYTES", "1MiB"),
                ("WHARF_SCAN__TIMEOUT", "2s"),
                ("WHARF_EVENTS__SINKS", &sinks),
            ],
        )
        .await;
        let data = random_bytes(size);
        g.write_file("f.bin", &data);
        let started = std::time::Instant::now();
        let run = g.acme("put f.bin\n");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(30), "{case}: took {took:?}");
        let allowed = case.ends_with("allow");
        assert_eq!(run.code == Some(0), allowed, "{case}: {run:?}");
        if allowed {
            let e = wait_for(&hook, "wharf.upload.completed", "/f.bin").await;
            let expected = if case.starts_with("big") {
                "skipped"
            } else {
                "unavailable"
            };
            assert_eq!(e["data"]["scan"]["result"], expected, "{case}: {e}");
            assert_eq!(g.stored("f.bin").await.unwrap(), data, "{case}");
        } else {
            let e = wait_for(&hook, "wharf.upload.failed", "/f.bin").await;
            let code = if case.starts_with("big") {
                "too_large_to_scan"
            } else {
                "scan_unavailable"
            };
            assert_eq!(e["data"]["failure_code"], code, "{case}: {e}");
            assert!(g.stored("f.bin").await.is_none(), "{case}");
            assert!(
                g.s3.open_multipart_uploads(&g.prefix).await.is_empty(),
                "{case}"
            );
        }
        if case.starts_with("down") {
            assert!(g.server.log().contains("clamd is unreachable"), "{case}");
            let metrics = g.server.http_get("/metrics").await.1;
            assert!(
                metrics.contains("wharf_clamd_reachable 0"),
                "{case}: {metrics}"
            );
            // A scanner outage is not the gateway's: it stays ready.
            assert_eq!(g.server.http_get("/readyz").await.0, 200, "{case}");
        }
    }
}

/// 32 uploads at once, every one scanned, with `scan.max_concurrent = 4`: they wait their
/// turn and all land, the server's memory bounded.
#[tokio::test(flavor = "multi_thread")]
async fn many_scans_at_once_wait_their_turn() {
    let clamd = clamd();
    let g = Gateway::start(
        false,
        &[
            ("WHARF_SCAN__CLAMD", &clamd),
            ("WHARF_SCAN__MAX_CONCURRENT", "4"),
        ],
    )
    .await;
    let mut children = Vec::new();
    for i in 0..32 {
        let name = format!("f{i:02}.bin");
        g.write_file(&name, &random_bytes((2 << 20) + i));
        let c = crate::harness::spawn_acme_sftp(
            g.server.port(),
            g.w.path(),
            &[],
            format!("put {name}\n").as_bytes(),
        );
        children.push(c);
    }
    let mut peak = 0;
    let ok = loop {
        peak = peak.max(g.server.rss_kib());
        let done: Vec<bool> = children
            .iter_mut()
            .map(|c| c.try_wait().unwrap().is_some())
            .collect();
        if done.iter().all(|d| *d) {
            break children
                .into_iter()
                .map(|c| c.wait_with_output().unwrap().status.success())
                .filter(|ok| *ok)
                .count();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ok, 32);
    assert_eq!(g.stored_files().await.len(), 32);
    eprintln!(
        "32 scanned uploads, 4 scans at a time: peak RSS {} MiB",
        peak / 1024
    );
    assert!(peak < 600 << 10, "peak RSS {peak} KiB");
}
