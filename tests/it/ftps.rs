//! FTPS end to end with real clients (curl and lftp; explicit and implicit TLS) into
//! wharf -> garage: byte-exact objects, arrival events with `protocol: "ftps"`, plain FTP and
//! bad logins refused, the jail, and a transfer cut mid-way leaving nothing behind.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
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
    // The download (RETR), the rename of the arrived file (RNFR/RNTO) and the delete (DELE)
    // are announced like the upload: four events.
    let events: Vec<serde_json::Value> = hook
        .wait_accepted(4, Duration::from_secs(10))
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
    let renamed = find("wharf.file.renamed", "/in/s.csv");
    assert_eq!(renamed["data"]["from_path"], "/in/r.csv", "{renamed}");
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

/// A port no one listens on now: the single passive port of a gateway under test.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// vsftpd's `require_ssl_reuse` compares the data connection's TLS session with the control
/// connection's: resuming *a* session is not enough. An intruder with the partner's address
/// (behind a balancer, everyone's) who wins the race for the partner's passive port with a
/// full handshake is refused, but must not come away with a session it can resume on the
/// partner's next passive port and so pass for the partner's data connection: it gets no
/// byte of the partner's RETR and cannot supply its STOR, whether it tries tickets or session
/// IDs, or the session of a control connection of its own. The partner's own transfers, on
/// data connections resuming its control connection's session (Python's ftplib with
/// `session=`), go through. One passive port, so the intruder always knows where to go.
#[tokio::test(flavor = "multi_thread")]
async fn an_intruder_cannot_resume_its_way_into_a_partners_data_connection() {
    let hook = Receiver::start().await;
    let passive = free_port();
    let range = format!("{passive}-{passive}");
    let g = ftps_gateway_with(&hook, false, &[("WHARF_FTPS__PASSIVE_PORTS", &range)]).await;
    g.grant_acme_everything();
    let cases = [
        ("tls12-tickets", "race"),
        ("tls12-ids", "race"),
        ("tls12-tickets", "control"),
        ("tls12-ids", "control"),
    ];
    for (tls, source) in cases {
        let name = format!("statement-{tls}-{source}.bin");
        let seen = session_theft(port(&g), "acme", PW, &name, tls, source);
        let key = format!("{}acme/{name}", g.prefix);
        let stored = g.s3.get(&key).await.expect("the partner's upload");
        assert_eq!(
            hex::encode(Sha256::digest(&stored)),
            seen["partner_sha256"].as_str().unwrap(),
            "{tls}/{source}: the intruder's bytes were stored"
        );
    }
    // curl and lftp still resume the control session on the single passive port.
    g.write_file("r.csv", b"id,amount\n1,5\n");
    let out = curl_put(&g, "acme", PW, "r.csv", "curl.csv");
    assert!(out.status.success(), "{out:?}");
    let out = lftp(
        &g,
        "acme",
        PW,
        "put r.csv -o lftp.csv; get lftp.csv -o back.csv",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(g.w.file("back.csv")).unwrap(),
        b"id,amount\n1,5\n"
    );
}

/// Runs `ftps_session_theft.py` (a partner, and an intruder racing it for its passive port)
/// against the FTPS server on `port`, checks that the intruder got nowhere and the partner's
/// transfers went through, and returns what the script saw.
fn session_theft(
    port: u16,
    user: &str,
    password: &str,
    name: &str,
    tls: &str,
    source: &str,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/ftps_session_theft.py");
    let case = format!("{tls}/{source}");
    let out = Command::new("python3")
        .env("WHARF_TEST_PASSWORD", password)
        .arg(&script)
        .args([&port.to_string(), user, name, tls, source])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{case}: {out:?}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = |round: &str| {
        let replies = seen[round]["replies"].as_array().unwrap();
        replies.last().unwrap().as_str().unwrap().to_string()
    };
    // A passive port nobody connected to is closed by the next PASV, which can open it again.
    let pasv = seen["pasv_twice"].as_array().unwrap();
    assert!(
        pasv[0].as_str().unwrap().starts_with("227 "),
        "{case}: {seen:#}"
    );
    assert_eq!(pasv[0], pasv[1], "{case}: {seen:#}");
    // The race: the intruder's full handshake is refused, and leaves it nothing to resume.
    assert!(last("race").starts_with("425 "), "{case}: {seen:#}");
    if source == "control" {
        assert_eq!(
            seen["intruder_control_session_resumable"], true,
            "{case}: {seen:#}"
        );
    }
    // Its session is not the partner's on the next passive port: no resumption, no byte of
    // the partner's download, no upload in the partner's name.
    assert_eq!(seen["retr"]["resumed"], false, "{case}: {seen:#}");
    assert_eq!(seen["retr"]["bytes"], 0, "{case}: {seen:#}");
    assert!(last("retr").starts_with("425 "), "{case}: {seen:#}");
    assert_eq!(seen["stor"]["resumed"], false, "{case}: {seen:#}");
    assert!(last("stor").starts_with("425 "), "{case}: {seen:#}");
    // The partner's own data connections resume its control session and work: its file is
    // still its own.
    assert_eq!(seen["partner_download_intact"], true, "{case}: {seen:#}");
    assert_eq!(
        seen["partner_session_reused"],
        serde_json::json!([true, true]),
        "{case}: {seen:#}"
    );
    seen
}

/// The same binding in libunftp itself, as upstream uses it: one server (`listen`) whose
/// connections all share one TLS configuration, with TLS 1.3 on (wharf's FTPS speaks TLS 1.2).
/// A TLS 1.3 intruder's full handshake on the partner's passive port, or its own control
/// connection, yields tickets the partner's data connections do not take; curl and lftp still
/// resume over TLS 1.3.
#[tokio::test(flavor = "multi_thread")]
async fn libunftp_binds_data_connections_to_their_control_session_over_tls13_too() {
    use libunftp::options::{FtpsRequired, TlsFlags};

    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = make_cert(dir.path());
    let files = Memory::default();
    let (control, passive) = (free_port(), free_port());
    let storage = files.clone();
    let server = libunftp::ServerBuilder::new(Box::new(move || storage.clone()))
        .ftps(crt, key)
        .ftps_tls_flags(
            TlsFlags::LATEST_VERSIONS | TlsFlags::RESUMPTION_SESS_ID | TlsFlags::RESUMPTION_TICKETS,
        )
        .ftps_required(FtpsRequired::All, FtpsRequired::All)
        .ftps_require_data_session_resumption(true)
        .passive_ports(passive..=passive)
        .build()
        .unwrap();
    tokio::spawn(server.listen(format!("127.0.0.1:{control}")));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", control))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (tls, source) in [
        ("tls13", "race"),
        ("tls13", "control"),
        ("tls12-tickets", "race"),
        ("tls12-ids", "control"),
    ] {
        let name = format!("{tls}-{source}.bin");
        let seen = tokio::task::spawn_blocking(move || {
            session_theft(control, "partner", "any", &name, tls, source)
        })
        .await
        .unwrap();
        if tls == "tls13" {
            assert_eq!(seen["race"]["version"], "TLSv1.3", "{seen:#}");
            assert_eq!(seen["partner_tls"], "TLSv1.3", "{seen:#}");
        }
    }

    // curl and lftp over TLS 1.3: their data connections resume the control connection's.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("r.csv"), b"id,amount\n1,5\n").unwrap();
    let out = tokio::task::spawn_blocking({
        let cwd = work.path().to_path_buf();
        move || {
            let url = format!("ftp://127.0.0.1:{control}/curl.csv");
            Command::new("curl")
                .current_dir(&cwd)
                .args([
                    "-sS",
                    "--insecure",
                    "--max-time",
                    "60",
                    "--tlsv1.3",
                    "--ssl-reqd",
                ])
                .args(["--user", "partner:any", "-T", "r.csv", &url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = tokio::task::spawn_blocking({
        let cwd = work.path().to_path_buf();
        move || {
            let open = format!(
                "set ssl:verify-certificate no; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
                 set ssl:priority NORMAL:-VERS-ALL:+VERS-TLS1.3; set net:max-retries 1; set net:timeout 10; \
                 open -u partner,any -p {control} 127.0.0.1; put r.csv -o lftp.csv; get curl.csv -o back.csv"
            );
            Command::new("lftp")
                .current_dir(&cwd)
                .args(["-c", &open])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(work.path().join("back.csv")).unwrap(),
        b"id,amount\n1,5\n"
    );
    let lftp_file = files.0.lock().unwrap().get(Path::new("/lftp.csv")).cloned();
    assert_eq!(lftp_file.as_deref(), Some(&b"id,amount\n1,5\n"[..]));
}

/// Files in memory, for the libunftp server above: enough for STOR and RETR.
#[derive(Debug, Clone, Default)]
struct Memory(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, Vec<u8>>>>);

#[derive(Debug)]
struct MemoryFile(u64);

impl unftp_core::storage::Metadata for MemoryFile {
    fn len(&self) -> u64 {
        self.0
    }
    fn is_dir(&self) -> bool {
        false
    }
    fn is_file(&self) -> bool {
        true
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> unftp_core::storage::Result<std::time::SystemTime> {
        Ok(std::time::SystemTime::now())
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
}

#[async_trait::async_trait]
impl unftp_core::storage::StorageBackend<unftp_core::auth::DefaultUser> for Memory {
    type Metadata = MemoryFile;

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<MemoryFile> {
        let files = self.0.lock().unwrap();
        match files.get(path.as_ref()) {
            Some(data) => Ok(MemoryFile(data.len() as u64)),
            None => Err(unftp_core::storage::ErrorKind::PermanentFileNotAvailable.into()),
        }
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        _: P,
    ) -> unftp_core::storage::Result<Vec<unftp_core::storage::Fileinfo<PathBuf, MemoryFile>>> {
        Ok(vec![])
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        path: P,
        _: u64,
    ) -> unftp_core::storage::Result<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        let files = self.0.lock().unwrap();
        match files.get(path.as_ref()) {
            Some(data) => Ok(Box::new(std::io::Cursor::new(data.clone()))),
            None => Err(unftp_core::storage::ErrorKind::PermanentFileNotAvailable.into()),
        }
    }

    async fn put<
        P: AsRef<Path> + Send + Debug,
        R: tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
    >(
        &self,
        _: &unftp_core::auth::DefaultUser,
        mut input: R,
        path: P,
        _: u64,
    ) -> unftp_core::storage::Result<u64> {
        use tokio::io::AsyncReadExt;
        let mut data = Vec::new();
        input.read_to_end(&mut data).await?;
        let n = data.len() as u64;
        self.0
            .lock()
            .unwrap()
            .insert(path.as_ref().to_path_buf(), data);
        Ok(n)
    }

    async fn del<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<()> {
        self.0.lock().unwrap().remove(path.as_ref());
        Ok(())
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        _: P,
    ) -> unftp_core::storage::Result<()> {
        Err(unftp_core::storage::ErrorKind::CommandNotImplemented.into())
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        _: P,
        _: P,
    ) -> unftp_core::storage::Result<()> {
        Err(unftp_core::storage::ErrorKind::CommandNotImplemented.into())
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        _: P,
    ) -> unftp_core::storage::Result<()> {
        Err(unftp_core::storage::ErrorKind::CommandNotImplemented.into())
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(
        &self,
        _: &unftp_core::auth::DefaultUser,
        _: P,
    ) -> unftp_core::storage::Result<()> {
        Ok(())
    }
}
