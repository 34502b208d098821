//! Ingestion assurance: duplicates caught before a pipeline books them twice (`--duplicates
//! flag|refuse`), over SFTP and FTPS, with temp names, concurrent uploads and the window.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::ftps::{curl_put, ftps_gateway_with};
use crate::harness::{random_bytes, sftp_command, Auth, Gateway, Receiver, PW};

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
                let mut c = sftp_command(
                    g.server.port(),
                    "acme",
                    &Auth::Password(PW.into()),
                    g.w.path(),
                    &[],
                )
                .spawn()
                .unwrap();
                use std::io::Write as _;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("put same.bin /in/copy-{i}.bin\n").as_bytes())
                    .unwrap();
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
