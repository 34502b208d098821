//! A randomized fault campaign (`scripts/chaos.sh`, Jepsen-style): three instances behind
//! HAProxy on a private Postgres cluster, partners uploading small, large, temp-name and
//! contended files through the balancer, while a nemesis kills, pauses (SIGSTOP) and moves the
//! clocks of instances, restarts or stops Postgres and makes S3 lose answers after doing the
//! work. Once every fault is undone and the cluster has settled, the checker finds no
//! violation: every acknowledged upload has exactly one completed event and its bytes (or a
//! later arrival's) in the bucket, no object without its event, no event for bytes that are
//! not there, no refused upload announced, no multipart upload left open, every event
//! delivered to the webhook.

use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn a_two_minute_fault_campaign_finds_no_violation() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chaos.sh");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .arg("2")
            .env("WHARF_BIN", env!("CARGO_BIN_EXE_wharf"))
            .output()
    })
    .await
    .unwrap()
    .expect("bash");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "the fault campaign found violations (report above; the campaign's log follows):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
