//! Partner folders: a partner that sees `/inbound` and `/outbound`, each on its own storage
//! location with its own permissions, set up with the CLI alone; over SFTP and FTPS, on S3
//! and local storage. Nothing reaches outside a folder.

use sha2::{Digest, Sha256};

use crate::harness::{random_bytes, Gateway, Receiver, PW};

/// Where the folders live, relative to `storage.default_home`: the inbound one below the
/// account's home, the outbound one outside it.
const IN: &str = "acme/in-files";
const OUT: &str = "outgoing/acme";

fn set_up(g: &Gateway) {
    g.w.dir_add(
        "acme",
        "/inbound",
        IN,
        &["--permissions", "list,upload,rename"],
    )
    .ok();
    g.w.dir_add(
        "acme",
        "/outbound",
        OUT,
        &["--permissions", "list,download,delete"],
    )
    .ok();
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partner_sees_only_its_folders_each_with_its_own_rules() {
    for local in [false, true] {
        let g = Gateway::start_on(local, false, &[]).await;
        set_up(&g);
        let listed: serde_json::Value = serde_json::from_str(
            &g.w.run(&["user", "dir", "list", "acme", "--json"])
                .ok()
                .stdout,
        )
        .unwrap();
        assert_eq!(listed[0]["path"], "/inbound", "{listed}");
        assert_eq!(listed[1]["path"], "/outbound", "{listed}");
        assert_eq!(
            listed[1]["permissions"],
            serde_json::json!(["list", "download", "delete"])
        );
        assert!(listed[1]["location"]
            .as_str()
            .unwrap()
            .ends_with("outgoing/acme/"));
        g.w.dir_add("acme", "/inbound/x", "elsewhere", &[])
            .fails_with(&["overlaps"]);
        g.w.dir_add("acme", "/", "elsewhere", &[])
            .fails_with(&["invalid folder path"]);
        g.w.run(&["user", "dir", "rm", "acme", "/nothing"])
            .fails_with(&["no folder /nothing"]);

        let report = random_bytes((5 << 20) + 777);
        g.write_file("settle.csv", &report);
        let ack = random_bytes((4 << 20) + 4321);
        g.put_object(&format!("{OUT}/ack.xml"), &ack).await;
        let run = g.acme(
            "ls /\nput settle.csv /inbound/settle.csv\nls /outbound\n\
             get /outbound/ack.xml ack.xml\nrm /outbound/ack.xml\n",
        );
        run.ok();
        for name in ["inbound", "outbound", "ack.xml"] {
            assert!(run.stdout.contains(name), "no {name} in {run:?}");
        }
        assert_eq!(
            g.object(&format!("{IN}/settle.csv")).await.as_deref(),
            Some(&report[..])
        );
        assert_eq!(std::fs::read(g.w.file("ack.xml")).unwrap(), ack);
        assert!(g.object(&format!("{OUT}/ack.xml")).await.is_none());

        // Events name the path the partner used and the folder's storage location.
        let up = g
            .wait_jsonl_event("wharf.upload.completed", "/inbound/settle.csv")
            .await;
        assert!(
            up["data"]["location"]
                .as_str()
                .unwrap()
                .ends_with("acme/in-files/settle.csv"),
            "{up}"
        );
        assert_eq!(up["data"]["sha256"], sha(&report));
        let down = g
            .wait_jsonl_event("wharf.download.completed", "/outbound/ack.xml")
            .await;
        assert_eq!(down["data"]["sha256"], sha(&ack));
        g.wait_jsonl_event("wharf.file.deleted", "/outbound/ack.xml")
            .await;

        // Every refusal is the client's error and writes nothing.
        g.put_object(&format!("{OUT}/keep.xml"), b"keep").await;
        for (batch, why, says) in [
            (
                "put settle.csv /settle.csv\n",
                "outside the folders",
                "denied",
            ),
            ("mkdir /new\n", "a directory outside the folders", "denied"),
            (
                "put settle.csv /other/x.csv\n",
                "no such folder",
                "No such file",
            ),
            (
                "put settle.csv /outbound/x.csv\n",
                "no upload permission",
                "denied",
            ),
            (
                "get /inbound/settle.csv x.csv\n",
                "no download permission",
                "denied",
            ),
            ("rm /inbound/settle.csv\n", "no delete permission", "denied"),
            ("rmdir /outbound\n", "a folder itself", "denied"),
            (
                "rename /inbound/settle.csv /outbound/settle.csv\n",
                "between folders",
                "unsupported",
            ),
            ("rename /inbound /in2\n", "a folder itself", "denied"),
            (
                "get /outbound/../../acme/in-files/settle.csv x.csv\n",
                "escape",
                "",
            ),
        ] {
            let r = g.acme(batch);
            assert_ne!(r.code, Some(0), "{why}: {r:?}");
            assert!(
                r.stderr.to_lowercase().contains(&says.to_lowercase()),
                "{why}: {r:?}"
            );
        }
        assert!(!g.w.file("x.csv").exists());
        assert_eq!(g.stored_files().await, vec!["in-files/settle.csv"]);
        assert_eq!(
            g.object(&format!("{OUT}/keep.xml")).await.as_deref(),
            Some(&b"keep"[..])
        );

        // Without folders the account sees its home at / again.
        g.w.run(&["user", "dir", "rm", "acme", "/inbound"]).ok();
        g.w.run(&["user", "dir", "rm", "acme", "/outbound"]).ok();
        let run = g.acme("ls /\n");
        run.ok();
        assert!(run.stdout.contains("in-files"), "{run:?}");
    }
}

/// FTPS sees the same tree: folder names at `/`, uploads only inside a folder.
#[tokio::test(flavor = "multi_thread")]
async fn ftps_sees_the_same_folders() {
    let hook = Receiver::start().await;
    let g = crate::ftps::ftps_gateway_with(&hook, false, &[]).await;
    set_up(&g);
    let data = random_bytes(300_000);
    g.write_file("settle.csv", &data);
    let ack = random_bytes(5000);
    g.put_object(&format!("{OUT}/ack.xml"), &ack).await;
    let out = crate::ftps::lftp(
        &g,
        "acme",
        PW,
        "cls -1 /; cd /inbound; put settle.csv; cls -1 /outbound; get /outbound/ack.xml -o back.xml",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["/inbound/\n", "/outbound/\n", "/outbound/ack.xml\n"] {
        assert!(stdout.contains(name), "no {name:?} in {stdout}");
    }
    assert_eq!(
        g.object(&format!("{IN}/settle.csv")).await.as_deref(),
        Some(&data[..])
    );
    assert_eq!(std::fs::read(g.w.file("back.xml")).unwrap(), ack);
    let out = crate::ftps::lftp(&g, "acme", PW, "put settle.csv -o /top.csv");
    assert!(
        !out.status.success(),
        "an upload above the folders: {out:?}"
    );
    assert_eq!(g.stored_files().await, vec!["in-files/settle.csv"]);
}

/// A folder's rules: names outside `--allow` or inside `--deny` are refused before a byte is
/// stored (a temp-name upload is judged by the name it will arrive under), and an upload past
/// `--max-size` is cut with nothing stored and a failed event saying `too_large`.
#[tokio::test(flavor = "multi_thread")]
async fn folder_rules_refuse_names_and_sizes() {
    for local in [false, true] {
        let g = Gateway::start_on(local, false, &[]).await;
        g.w.dir_add(
            "acme",
            "/inbound",
            IN,
            &[
                "--permissions",
                "list,upload,rename",
                "--allow",
                "*.csv,*.xml",
                "--deny",
                "tmp-*",
                "--max-size",
                "10MiB",
            ],
        )
        .ok();
        g.w.dir_add("acme", "/x", "x", &["--allow", "[z-"])
            .fails_with(&["invalid name pattern"]);
        let shown =
            g.w.run(&["user", "dir", "list", "acme"])
                .ok()
                .stdout
                .clone();
        assert!(
            shown.contains("allow *.csv,*.xml; deny tmp-*; max 10485760 bytes"),
            "{shown}"
        );

        let small = random_bytes(70_000);
        g.write_file("ok.csv", &small);
        g.write_file("evil.exe", &small);
        g.write_file("tmp-1.csv", &small);
        let big = random_bytes((10 << 20) + 1);
        g.write_file("big.csv", &big);
        g.acme("put ok.csv /inbound/ok.csv\n").ok();
        // A temp name is judged by the name it arrives under.
        g.acme(
            "put ok.csv /inbound/t.csv.filepart\nrename /inbound/t.csv.filepart /inbound/t.csv\n",
        )
        .ok();
        for batch in [
            "put evil.exe /inbound/evil.exe\n",
            "put tmp-1.csv /inbound/tmp-1.csv\n",
            "put evil.exe /inbound/evil.exe.filepart\n",
            "rename /inbound/ok.csv /inbound/ok.exe\n",
        ] {
            let r = g.acme(batch);
            assert_ne!(r.code, Some(0), "{batch}: {r:?}");
            assert!(r.stderr.contains("Permission denied"), "{batch}: {r:?}");
        }
        let r = g.acme("put big.csv /inbound/big.csv\n");
        assert_ne!(r.code, Some(0), "{r:?}");
        let cut = g
            .wait_jsonl_event("wharf.upload.failed", "/inbound/big.csv")
            .await;
        assert_eq!(cut["data"]["failure_code"], "too_large", "{cut}");
        assert_eq!(
            g.stored_files().await,
            vec!["in-files/ok.csv", "in-files/t.csv"]
        );
        let log = g.server.log();
        assert!(
            log.contains("\"activity\":\"REFUSED\",\"reason\":\"name\"")
                && log.contains("\"activity\":\"REFUSED\",\"reason\":\"size\""),
            "{log}"
        );
        if !local {
            assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
        }
    }
}

/// `--no-reuse-names`: a name that arrived once is refused for ever after, even when the
/// pipeline has moved the file away, whichever way it comes back (put, temp name, rename).
#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_arrived_is_refused_after_it_was_moved_away() {
    for local in [false, true] {
        let g = Gateway::start_on(local, false, &[]).await;
        g.w.dir_add(
            "acme",
            "/inbound",
            IN,
            &[
                "--permissions",
                "list,upload,overwrite,rename",
                "--no-reuse-names",
            ],
        )
        .ok();
        let data = random_bytes(20_000);
        g.write_file("a.csv", &data);
        g.acme("put a.csv /inbound/a.csv\n").ok();
        g.acme(
            "put a.csv /inbound/b.csv.filepart\nrename /inbound/b.csv.filepart /inbound/b.csv\n",
        )
        .ok();
        // The pipeline picks both up.
        for name in ["a.csv", "b.csv"] {
            if local {
                std::fs::remove_file(g.w.file("data").join(format!("{IN}/{name}"))).unwrap();
            } else {
                g.s3.client
                    .delete_object()
                    .bucket(&g.s3.bucket)
                    .key(format!("{}{IN}/{name}", g.prefix))
                    .send()
                    .await
                    .unwrap();
            }
        }
        for batch in [
            "put a.csv /inbound/a.csv\n",
            "put a.csv /inbound/b.csv\n",
            "put a.csv /inbound/a.csv.filepart\n",
        ] {
            let r = g.acme(batch);
            assert_ne!(r.code, Some(0), "{batch}: {r:?}");
            assert!(r.stderr.contains("Permission denied"), "{batch}: {r:?}");
        }
        g.acme("put a.csv /inbound/c.csv.filepart\n").ok();
        let r = g.acme("rename /inbound/c.csv.filepart /inbound/a.csv\n");
        assert_ne!(r.code, Some(0), "{r:?}");
        // A new name still lands.
        g.acme("put a.csv /inbound/d.csv\n").ok();
        assert_eq!(
            g.stored_files().await,
            vec!["in-files/c.csv.filepart", "in-files/d.csv"]
        );
        assert!(g.server.log().contains("\"reason\":\"reused_name\""));
    }
}

/// `--receipt`: every arrival in the folder (a put, or a temp name renamed into place) gets a
/// JSON receipt in the partner's outbound folder, with the arrival's size, SHA-256 and event
/// id, which the partner can fetch. Receipts are not arrivals themselves.
#[tokio::test(flavor = "multi_thread")]
async fn each_arrival_gets_a_receipt_the_partner_can_fetch() {
    for local in [false, true] {
        let g = Gateway::start_on(local, false, &[]).await;
        g.w.dir_add(
            "acme",
            "/inbound",
            IN,
            &[
                "--permissions",
                "list,upload,rename",
                "--receipt",
                "/outbound/receipts/{name}.receipt.json",
            ],
        )
        .ok();
        g.w.dir_add(
            "acme",
            "/outbound",
            OUT,
            &["--permissions", "list,download"],
        )
        .ok();
        g.w.dir_add("acme", "/x", "x", &["--receipt", "/x/receipt.json"])
            .fails_with(&["invalid receipt path"]);
        let (a, b) = (random_bytes(9_000), random_bytes((5 << 20) + 3));
        g.write_file("a.csv", &a);
        g.write_file("b.csv", &b);
        g.acme(
            "put a.csv /inbound/a.csv\nput b.csv /inbound/b.csv.filepart\n\
                rename /inbound/b.csv.filepart /inbound/b.csv\n",
        )
        .ok();
        for (name, data) in [("a.csv", &a), ("b.csv", &b)] {
            let event = g
                .wait_jsonl_event("wharf.upload.completed", &format!("/inbound/{name}"))
                .await;
            let key = format!("{OUT}/receipts/{name}.receipt.json");
            let stored = g
                .wait_object(&key)
                .await
                .unwrap_or_else(|| panic!("no receipt for {name}: {}", g.server.log()));
            let r: serde_json::Value = serde_json::from_slice(&stored).unwrap();
            assert_eq!(r["name"], name, "{r}");
            assert_eq!(r["path"], format!("/inbound/{name}"), "{r}");
            assert_eq!(r["bytes"], data.len() as u64, "{r}");
            assert_eq!(r["sha256"], sha(data), "{r}");
            assert_eq!(r["event_id"], event["id"], "{r}");
            // The partner fetches it like any outbound file.
            g.acme(&format!(
                "get /outbound/receipts/{name}.receipt.json got.json\n"
            ))
            .ok();
            assert_eq!(std::fs::read(g.w.file("got.json")).unwrap(), stored);
        }
        // Receipts are written by wharf, not uploaded: no arrival events for them.
        assert!(g.jsonl_events().iter().all(|e| !e["subject"]
            .as_str()
            .unwrap_or_default()
            .contains("receipt")
            || e["type"] != "wharf.upload.completed"));
    }
}

/// Names are one name whatever their case (for `--allow`/`--deny`) or Unicode form (NFC and
/// NFD spellings of `é` are one name for `--no-reuse-names`, and one key in storage).
#[tokio::test(flavor = "multi_thread")]
async fn names_match_whatever_their_case_or_unicode_form() {
    let g = Gateway::start(false, &[]).await;
    g.w.dir_add(
        "acme",
        "/inbound",
        IN,
        &[
            "--permissions",
            "list,upload,rename",
            "--deny",
            "*.exe",
            "--no-reuse-names",
        ],
    )
    .ok();
    g.write_file("payload.bin", b"MZ\x90\x00");
    let run = g.acme("put payload.bin /inbound/PAYLOAD.EXE\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(g.object(&format!("{IN}/PAYLOAD.EXE")).await.is_none());
    assert!(
        g.server.log().contains("matches the refused pattern"),
        "{}",
        g.server.log()
    );
    // "relevé.csv": é as one code point (NFC), then as e + U+0301 (NFD).
    let (nfc, nfd) = ("relev\u{e9}.csv", "releve\u{301}.csv");
    g.write_file("first.csv", b"first\n");
    g.write_file("second.csv", b"second\n");
    g.acme(&format!("put first.csv \"/inbound/{nfd}\"\n")).ok();
    // Stored under the NFC spelling.
    assert_eq!(
        g.object(&format!("{IN}/{nfc}")).await.as_deref(),
        Some(&b"first\n"[..])
    );
    let run = g.acme(&format!("put second.csv \"/inbound/{nfc}\"\n"));
    assert_ne!(
        run.code,
        Some(0),
        "the NFC spelling was taken for another name: {run:?}"
    );
    assert!(g.server.log().contains("reused_name"), "{}", g.server.log());
    assert_eq!(
        g.object(&format!("{IN}/{nfc}")).await.as_deref(),
        Some(&b"first\n"[..])
    );
    let e = g
        .wait_jsonl_event("wharf.upload.completed", &format!("/inbound/{nfc}"))
        .await;
    assert_eq!(e["data"]["key"], format!("{}{IN}/{nfc}", g.prefix));
}
