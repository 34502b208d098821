//! FTPS end to end with real clients (curl and lftp; explicit and implicit TLS) into
//! wharf -> garage: byte-exact objects, arrival events with `protocol: "ftps"`, plain FTP and
//! bad logins refused, the jail, and a transfer cut mid-way leaving nothing behind.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::{closed_within, random_bytes, Auth, Gateway, Receiver, PW};

/// A self-signed certificate for 127.0.0.1, made for this test.
pub(crate) fn make_cert(dir: &Path) -> (String, String) {
    let (crt, key) = (dir.join("ftps.crt"), dir.join("ftps.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl (package openssl) must be installed");
    assert!(out.status.success(), "{out:?}");
    (
        crt.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

async fn ftps_gateway(hook: &Receiver) -> Gateway {
    ftps_gateway_with(hook, false, &[]).await
}

pub(crate) async fn ftps_gateway_with(
    hook: &Receiver,
    postgres: bool,
    extra: &[(&str, &str)],
) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let (crt, key) = make_cert(&dir);
    // A passive range of its own, so parallel tests do not compete for ports.
    let base = 20000 + (rand::random::<u16>() % 400) * 100;
    let ports = format!("{}-{}", base, base + 99);
    let sinks = format!(
        "[{{name = \"hook\", type = \"webhook\", url = \"{}\", secret = \"s\"}}]",
        hook.url()
    );
    let mut env = vec![
        ("WHARF_FTPS__CERT", crt.as_str()),
        ("WHARF_FTPS__KEY", key.as_str()),
        ("WHARF_FTPS__LISTEN", "127.0.0.1:0"),
        ("WHARF_FTPS__PASSIVE_PORTS", ports.as_str()),
        ("WHARF_EVENTS__SINKS", sinks.as_str()),
    ];
    env.extend_from_slice(extra);
    Gateway::start(postgres, &env).await
}

fn port(g: &Gateway) -> u16 {
    g.server.ftps_addr.expect("ftps listening").port()
}

pub(crate) fn curl(g: &Gateway, args: &[&str]) -> Output {
    Command::new("curl")
        .current_dir(g.w.path())
        .args(["-sS", "--insecure", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl (package curl) must be installed")
}

/// `curl --ssl-reqd -T FILE` to `remote` on the gateway's FTPS port (explicit TLS).
pub(crate) fn curl_put(
    g: &Gateway,
    user: &str,
    password: &str,
    file: &str,
    remote: &str,
) -> Output {
    let url = format!("ftp://127.0.0.1:{}/{remote}", port(g));
    let login = format!("{user}:{password}");
    curl(g, &["--ssl-reqd", "--user", &login, "-T", file, &url])
}

pub(crate) fn lftp(g: &Gateway, user: &str, password: &str, script: &str) -> Output {
    let open = format!(
        "set ssl:verify-certificate no; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
         set net:max-retries 1; set net:timeout 10; open -u {user},{password} -p {} 127.0.0.1; {script}",
        port(g)
    );
    Command::new("lftp")
        .current_dir(g.w.path())
        .args(["-c", &open])
        .output()
        .expect("lftp (package lftp) must be installed")
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_and_lftp_upload_over_explicit_tls_into_s3_with_events() {
    let hook = Receiver::start().await;
    let g = ftps_gateway(&hook).await;
    let data = random_bytes(7 << 20);
    g.write_file("settle.bin", &data);

    let out = curl_put(&g, "acme", PW, "settle.bin", "settlement.bin");
    assert!(out.status.success(), "{out:?}");
    let key = format!("{}acme/settlement.bin", g.prefix);
    assert_eq!(g.s3.get(&key).await.as_deref(), Some(&data[..]));

    // lftp: a directory, a temp-name upload renamed into place, a listing.
    let out = lftp(
        &g,
        "acme",
        PW,
        "mkdir inbound; cd inbound; put settle.bin -o report.csv.filepart; \
         mv report.csv.filepart report.csv; cls -1",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "report.csv");
    let final_key = format!("{}acme/inbound/report.csv", g.prefix);
    assert_eq!(g.s3.get(&final_key).await.as_deref(), Some(&data[..]));
    assert!(g.s3.get(&format!("{final_key}.filepart")).await.is_none());

    let got = hook.wait_accepted(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hook.accepted().len(),
        2,
        "one event per arrival, none for the temp name"
    );
    let sha = hex::encode(Sha256::digest(&data));
    let mut subjects: Vec<String> = got
        .iter()
        .map(|r| {
            let ev = r.json();
            assert_eq!(ev["type"], "wharf.upload.completed", "{ev}");
            assert_eq!(ev["data"]["protocol"], "ftps", "{ev}");
            assert_eq!(ev["data"]["bytes"], data.len() as u64, "{ev}");
            assert_eq!(ev["data"]["sha256"], sha, "{ev}");
            ev["subject"].as_str().unwrap().to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["/inbound/report.csv", "/settlement.bin"]);

    // Activity lines: each CLOSE belongs to a session whose CONNECTED and AUTH_SUCCESS share
    // its session_id.
    let lines: Vec<serde_json::Value> = g
        .server
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let of = |activity: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|v| v["activity"] == activity).collect()
    };
    let closes = of("CLOSE");
    assert_eq!(closes.len(), 2, "{lines:?}");
    for c in closes {
        assert_eq!(c["span"]["protocol"], "ftps", "{c}");
        assert_eq!(c["span"]["username"], "acme", "{c}");
        let id = &c["span"]["session_id"];
        for activity in ["CONNECTED", "AUTH_SUCCESS", "DISCONNECTED"] {
            assert!(
                of(activity).iter().any(|v| &v["span"]["session_id"] == id),
                "no {activity} for session {id}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_ftp_bad_logins_and_escapes_are_refused() {
    let hook = Receiver::start().await;
    let g = ftps_gateway(&hook).await;
    g.write_file("r.csv", b"id,amount\n1,5\n");
    let url = format!("ftp://127.0.0.1:{}/r.csv", port(&g));

    // Plain FTP: refused before the password is even sent, with a reply asking for TLS.
    let out = curl(&g, &["--user", &format!("acme:{PW}"), "-T", "r.csv", &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("534"),
        "{out:?}"
    );

    for (user, pw) in [("acme", "wrong"), ("nobody", PW)] {
        let out = curl_put(&g, user, pw, "r.csv", "r.csv");
        assert!(!out.status.success(), "{user} logged in");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("530"),
            "{out:?}"
        );
    }

    // Paths that climb out of the home are refused; nothing lands anywhere.
    let out = lftp(
        &g,
        "acme",
        PW,
        "put r.csv -o ../../../escape.csv; put r.csv -o /../etc.csv",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("553").count(), 2, "{out:?}");
    assert!(g.s3.keys(&g.prefix).await.is_empty());
    let log = g.server.log();
    assert!(log.contains("\"AUTH_FAILURE\""), "{log}");
    assert!(!log.contains(PW) && !log.contains("\"wrong\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_cut_mid_way_leaves_nothing_and_emits_a_failed_event() {
    let hook = Receiver::start().await;
    let g = ftps_gateway(&hook).await;
    g.write_file("big.bin", &random_bytes(40 << 20));
    let url = format!("ftp://127.0.0.1:{}/big.bin", port(&g));
    let mut child = Command::new("curl")
        .current_dir(g.w.path())
        .args(["-sS", "--insecure", "--ssl-reqd", "--limit-rate", "2M"])
        .args(["--user", &format!("acme:{PW}"), "-T", "big.bin", &url])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // SIGKILL: the data connection ends without a TLS close_notify.
    child.kill().unwrap();
    let _ = child.wait();

    let got = hook.wait_accepted(1, Duration::from_secs(15)).await;
    let ev = got[0].json();
    assert_eq!(ev["type"], "wharf.upload.failed", "{ev}");
    assert_eq!(ev["data"]["protocol"], "ftps");
    assert_eq!(ev["data"]["failure_code"], "partial_upload", "{ev}");
    assert!(ev["data"]["bytes"].as_u64().unwrap() > 0, "{ev}");
    let key = format!("{}acme/big.bin", g.prefix);
    assert!(g.s3.get(&key).await.is_none());
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_never_log_in_are_closed_at_login_timeout() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(&hook, false, &[("WHARF_SFTP__LOGIN_TIMEOUT", "1s")]).await;
    let mut sock = tokio::net::TcpStream::connect(g.server.ftps_addr.unwrap())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // The greeting, then nothing from us: the server must hang up on its own.
    assert!(
        closed_within(&mut sock, Duration::from_secs(10)).await,
        "still open after 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = g.server.log();
    assert!(log.contains("login_timeout"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failures_ban_the_address_for_every_protocol_until_lifted() {
    let hook = Receiver::start().await;
    // On Postgres: the bans table is what instances share.
    let g = ftps_gateway_with(&hook, true, &[("WHARF_SECURITY__BAN_AFTER_FAILURES", "3")]).await;
    g.write_file("r.csv", b"id,amount\n1,5\n");
    for _ in 0..3 {
        let r = g.sftp("acme", &Auth::Password("guess".into()), "ls\n");
        assert_ne!(r.code, Some(0));
    }
    // Now even the right password is refused, over SFTP and over FTPS alike.
    let r = g.acme("put r.csv\n");
    assert_ne!(r.code, Some(0), "banned address logged in over SFTP: {r:?}");
    let out = curl_put(&g, "acme", PW, "r.csv", "r.csv");
    assert!(!out.status.success(), "banned address logged in over FTPS");
    assert!(g.s3.keys(&g.prefix).await.is_empty());

    let log = g.server.log();
    assert!(log.contains("\"BAN\""), "{log}");
    assert!(log.contains("\"reason\":\"banned\""), "{log}");
    let (_, metrics) = g.server.http_get("/metrics").await;
    assert!(metrics.contains("wharf_bans_active 1"), "{metrics}");

    let listed = g.w.run(&["ban", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&listed.ok().stdout).unwrap();
    assert_eq!(v[0]["address"], "127.0.0.1", "{v}");
    assert_eq!(v[0]["failures"], 3, "{v}");
    g.w.run(&["ban", "rm", "127.0.0.1"]).ok();
    g.w.run(&["ban", "rm", "127.0.0.1"])
        .fails_with(&["127.0.0.1 is not banned"]);

    // Every instance re-reads bans within seconds.
    let mut ok = false;
    for _ in 0..20 {
        if g.acme("put r.csv\n").code == Some(0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ok, "login still refused after the ban was lifted");
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_uploads_over_implicit_tls() {
    let hook = Receiver::start().await;
    let g = ftps_gateway_with(
        &hook,
        false,
        &[("WHARF_FTPS__IMPLICIT_LISTEN", "127.0.0.1:0")],
    )
    .await;
    let addr = g
        .server
        .ftps_implicit_addr
        .expect("ftps-implicit listening");
    let data = random_bytes(6 << 20);
    g.write_file("imp.bin", &data);
    // curl's ftps:// scheme is implicit TLS: the TLS handshake comes before any FTP.
    let url = format!("ftps://127.0.0.1:{}/implicit.bin", addr.port());
    let out = curl(
        &g,
        &["--user", &format!("acme:{PW}"), "-T", "imp.bin", &url],
    );
    assert!(out.status.success(), "{out:?}");
    let key = format!("{}acme/implicit.bin", g.prefix);
    assert_eq!(g.s3.get(&key).await.as_deref(), Some(&data[..]));
    let list = format!("ftps://127.0.0.1:{}/", addr.port());
    let out = curl(&g, &["--user", &format!("acme:{PW}"), "--list-only", &list]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "implicit.bin");

    let got = hook.wait_accepted(1, Duration::from_secs(10)).await;
    let ev = got[0].json();
    assert_eq!(ev["type"], "wharf.upload.completed", "{ev}");
    assert_eq!(ev["data"]["protocol"], "ftps", "{ev}");
    assert_eq!(
        ev["data"]["sha256"],
        hex::encode(Sha256::digest(&data)),
        "{ev}"
    );

    // A wrong password is refused there as on the explicit port.
    let out = curl(&g, &["--user", "acme:wrong", "-T", "imp.bin", &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("530"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_commands_partners_clients_send_work_over_ftps() {
    let hook = Receiver::start().await;
    let g = ftps_gateway(&hook).await;
    g.grant_acme_everything();
    g.write_file("r.csv", b"id,amount\n");
    let out = lftp(
        &g,
        "acme",
        PW,
        "mkdir in; cd in; pwd; put r.csv; ls; nlist; cls -l; quote MLST r.csv; \
         quote SIZE r.csv; quote MDTM r.csv; quote TYPE I; quote MODE S; quote STRU F; \
         quote OPTS UTF8 ON; quote NOOP; quote FEAT; get r.csv -o back.csv; \
         mv r.csv s.csv; cls; rm s.csv; cd ..; quote PWD; rmdir in; quote REST 5",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (what, needle) in [
        ("PWD after CWD", ":{port}/in\n"),
        ("LIST", " r.csv\n"),
        ("MLST", "type=file;size=10;"),
        ("SIZE", "213 10\n"),
        ("MDTM", "213 20"),
        ("TYPE", "200 Always in binary mode"),
        ("MODE", "200 Using Stream transfer mode"),
        ("STRU", "200 In File structure mode"),
        ("OPTS UTF8", "200 Always in UTF-8 mode"),
        ("NOOP", "200 "),
        ("FEAT", "\nMLST\n"),
        ("listing after RNFR/RNTO", "s.csv\n"),
        ("PWD after cd ..", "257 \"/\""),
    ] {
        let needle = needle.replace("{port}", &port(&g).to_string());
        assert!(
            stdout.contains(&needle) || stderr.contains(&needle),
            "{what}: no {needle:?} in\n{stdout}\n{stderr}"
        );
    }
    // Uploads stream once, front to back: no resuming. (EPSV is what every transfer above used.)
    assert!(
        stdout.contains("502 ") || stderr.contains("502 "),
        "REST was not refused:\n{stdout}\n{stderr}"
    );
    assert_eq!(std::fs::read(g.w.file("back.csv")).unwrap(), b"id,amount\n");
    // The download (RETR) and the delete (DELE) are announced like the upload.
    let events: Vec<serde_json::Value> = hook
        .wait_accepted(3, Duration::from_secs(10))
        .await
        .iter()
        .map(|r| r.json())
        .collect();
    let find = |kind: &str, subject: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["subject"] == subject)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} for {subject}: {events:#?}"))
    };
    let down = find("wharf.download.completed", "/in/r.csv");
    assert_eq!(down["data"]["protocol"], "ftps", "{down}");
    assert_eq!(down["data"]["bytes"], 10, "{down}");
    assert_eq!(
        down["data"]["sha256"],
        hex::encode(Sha256::digest(b"id,amount\n")),
        "{down}"
    );
    find("wharf.file.deleted", "/in/s.csv");
    // RNFR/RNTO, DELE and RMD really happened in storage.
    assert!(g.s3.keys(&g.prefix).await.is_empty(), "{stderr}");

    // APPE onto an existing file is refused and leaves it as it was.
    let out = curl_put(&g, "acme", PW, "r.csv", "a.csv");
    assert!(out.status.success(), "{out:?}");
    let url = format!("ftp://127.0.0.1:{}/a.csv", port(&g));
    let login = format!("acme:{PW}");
    let out = curl(
        &g,
        &[
            "--ssl-reqd",
            "--user",
            &login,
            "--append",
            "-T",
            "r.csv",
            &url,
        ],
    );
    assert!(!out.status.success(), "APPE accepted: {out:?}");
    let key = format!("{}acme/a.csv", g.prefix);
    assert_eq!(g.s3.get(&key).await.as_deref(), Some(&b"id,amount\n"[..]));
}

/// Behind a load balancer every client has the balancer's address, so a passive data
/// connection cannot be matched to its session by address. Another client that connects to a
/// partner's passive port first must get neither the partner's transfer nor a way to write
/// into the partner's account: its TLS session is not the partner's.
#[tokio::test(flavor = "multi_thread")]
async fn a_passive_port_taken_by_another_client_gets_no_transfer() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ftps_hijack.py");
    let intrude = |g: &Gateway, mode: &str| -> serde_json::Value {
        let out = Command::new("python3")
            .current_dir(g.w.path())
            .env("WHARF_TEST_PASSWORD", PW)
            .arg(&script)
            .args([&port(g).to_string(), "acme", mode])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let hook = Receiver::start().await;
    let g = ftps_gateway(&hook).await;
    for mode in ["tls", "garbage"] {
        let seen = intrude(&g, mode);
        let replies = seen["replies"].to_string();
        assert!(replies.contains("425 "), "{mode}: {seen}");
        assert!(
            g.s3.keys(&g.prefix).await.is_empty(),
            "{mode}: something was stored"
        );
    }
    assert!(
        g.server
            .logs_within("must resume the TLS session", Duration::from_secs(5))
            .await
    );
    // The server is unharmed (no task panicked) and serves the partner.
    g.write_file("r.csv", b"id,amount\n1,5\n");
    let out = curl_put(&g, "acme", PW, "r.csv", "r.csv");
    assert!(out.status.success(), "{out:?}");
    drop(g);

    // With the rule relaxed for legacy clients, the intruder's bytes land in the partner's
    // account: what the rule prevents.
    let g = ftps_gateway_with(
        &hook,
        false,
        &[("WHARF_FTPS__REQUIRE_TLS_SESSION_REUSE", "false")],
    )
    .await;
    let seen = intrude(&g, "tls");
    assert!(seen["replies"].to_string().contains("226 "), "{seen}");
    let key = format!("{}acme/partner.csv", g.prefix);
    assert_eq!(
        g.s3.get(&key).await.as_deref(),
        Some(&b"forged settlement data\n"[..])
    );
}
