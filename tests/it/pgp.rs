//! PGP on arrival, with GnuPG playing the partner: files encrypted to the deployment's key
//! and signed with the partner's arrive over SFTP and FTPS and land decrypted, byte-exact,
//! with an event naming the signer; every check that fails leaves no plaintext and no open
//! multipart upload; a crash mid-decryption is finished, exactly once, after a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::ftps::ftps_gateway_with;
use crate::harness::{random_bytes, Gateway, Receiver, PW};

const WHARF_PASS: &str = "wharf-decryption-secret";

/// A GnuPG home of its own.
struct Gpg {
    home: PathBuf,
}

impl Gpg {
    fn new(dir: &Path) -> Gpg {
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        Gpg { home }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--yes", "--quiet", "--pinentry-mode", "loopback"])
            .args(["--trust-model", "always"])
            .args(args)
            .output()
            .expect("gpg (package gnupg) must be installed");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A new key: RSA (as banks use) or Ed25519/Curve25519; returns its fingerprint.
    fn generate(&self, email: &str, rsa: bool, passphrase: Option<&str>) -> String {
        let kind = if rsa {
            "Key-Type: RSA\nKey-Length: 2048\nSubkey-Type: RSA\nSubkey-Length: 2048\n"
        } else {
            "Key-Type: EDDSA\nKey-Curve: ed25519\nSubkey-Type: ECDH\nSubkey-Curve: cv25519\n"
        };
        let protection = match passphrase {
            Some(p) => format!("Passphrase: {p}\n"),
            None => "%no-protection\n".into(),
        };
        let params = format!(
            "{kind}Name-Real: {email}\nName-Email: {email}\nExpire-Date: 0\n{protection}%commit\n"
        );
        let file = self.home.join(format!("{email}.params"));
        std::fs::write(&file, params).unwrap();
        self.run(&["--gen-key", file.to_str().unwrap()]);
        let out = self.run(&["--with-colons", "--fingerprint", email]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .expect("a fingerprint")
    }

    fn export_public(&self, email: &str, to: &Path) {
        let out = self.run(&["--armor", "--export", email]);
        std::fs::write(to, out.stdout).unwrap();
    }

    fn export_secret(&self, email: &str, passphrase: &str, to: &Path) {
        let out = self.run(&[
            "--passphrase",
            passphrase,
            "--armor",
            "--export-secret-keys",
            email,
        ]);
        std::fs::write(to, out.stdout).unwrap();
    }

    /// Encrypts `input` to `to`, signed by `signer` when given; armored for `.asc`; with
    /// `extra` options.
    fn encrypt(&self, input: &Path, output: &Path, to: &str, signer: Option<&str>, extra: &[&str]) {
        let mut args = extra.to_vec();
        args.extend(["--passphrase", "", "--recipient", to, "--output"]);
        let out = output.to_str().unwrap();
        args.push(out);
        if output.extension().is_some_and(|e| e == "asc") {
            args.push("--armor");
        }
        if let Some(s) = signer {
            args.extend(["--local-user", s, "--sign"]);
        }
        args.extend(["--encrypt", input.to_str().unwrap()]);
        self.run(&args);
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Keys for a test: the deployment's (RSA, passphrase-protected), the partner's (Ed25519),
/// and two more the deployment does not know.
struct Keys {
    gpg: Gpg,
    dir: PathBuf,
    partner_fpr: String,
    wharf_fpr: String,
}

const WHARF: &str = "decrypt@wharf.test";
const PARTNER: &str = "reports@acquirer.test";
const STRANGER: &str = "mallory@stranger.test";
const OTHER: &str = "ops@other-gateway.test";

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap().keep();
    let gpg = Gpg::new(&dir);
    let wharf_fpr = gpg.generate(WHARF, true, Some(WHARF_PASS));
    let partner_fpr = gpg.generate(PARTNER, false, None);
    gpg.generate(STRANGER, false, None);
    gpg.generate(OTHER, false, None);
    gpg.export_secret(WHARF, WHARF_PASS, &dir.join("wharf.asc"));
    gpg.export_public(PARTNER, &dir.join("partner.asc"));
    Keys {
        gpg,
        dir,
        partner_fpr,
        wharf_fpr,
    }
}

impl Keys {
    /// The gateway's environment for these keys.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "WHARF_PGP__KEYS".into(),
                format!("[\"{}\"]", self.dir.join("wharf.asc").display()),
            ),
            (
                "WHARF_PGP__PASSPHRASE_ENV".into(),
                "WHARF_TEST_PGP_PASS".into(),
            ),
            ("WHARF_TEST_PGP_PASS".into(), WHARF_PASS.into()),
        ]
    }

    /// Encrypts `plain` (written in the gateway's directory as `name` without its suffix)
    /// into `name` there.
    fn encrypt(&self, g: &Gateway, name: &str, plain: &[u8], to: &str, signer: Option<&str>) {
        self.encrypt_with(g, name, plain, to, signer, &[]);
    }

    /// `encrypt` with more options for gpg.
    fn encrypt_with(
        &self,
        g: &Gateway,
        name: &str,
        plain: &[u8],
        to: &str,
        signer: Option<&str>,
        extra: &[&str],
    ) {
        let clear = self.dir.join(format!("{name}.clear"));
        std::fs::write(&clear, plain).unwrap();
        let out = g.w.file(name);
        let _ = std::fs::remove_file(&out);
        self.gpg.encrypt(&clear, &out, to, signer, extra);
    }
}

/// `acme` with /inbound (decrypted into /plain, signed files only), /loose (decrypted into
/// /plain, signature optional) and /plain; the partner's key added with the CLI.
fn set_up(g: &Gateway, k: &Keys) {
    let key = k.dir.join("partner.asc");
    let out =
        g.w.run(&["user", "pgp", "add", "acme", key.to_str().unwrap()]);
    out.ok();
    assert!(out.stdout.contains(&k.partner_fpr), "{}", out.stdout);
    g.w.run(&["user", "pgp", "add", "acme", key.to_str().unwrap()])
        .fails_with(&["already has the key"]);
    // The plaintext's folder first: a --decrypt-to must name a folder the partner can only
    // read.
    g.w.dir_add(
        "acme",
        "/plain",
        "acme/plain",
        &["--permissions", "list,download"],
    )
    .ok();
    g.w.dir_add(
        "acme",
        "/inbound",
        "acme/in",
        &[
            "--permissions",
            "list,upload,rename",
            "--decrypt-to",
            "/plain",
            "--require-signature",
        ],
    )
    .ok();
    g.w.dir_add(
        "acme",
        "/loose",
        "acme/loose",
        &["--permissions", "list,upload", "--decrypt-to", "/plain"],
    )
    .ok();
    let keys = g.w.run(&["pgp", "keys"]);
    keys.ok();
    assert!(keys.stdout.contains(&k.wharf_fpr), "{}", keys.stdout);
    let listed = g.w.run(&["user", "pgp", "list", "acme"]);
    assert!(listed.ok().stdout.contains(&k.partner_fpr));
}

/// Waits for the webhook's event of `type_` whose subject is `subject`.
async fn hook_event(hook: &Receiver, type_: &str, subject: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = hook
            .accepted()
            .iter()
            .map(|r| r.json())
            .find(|e| e["type"] == type_ && e["subject"] == subject)
        {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {type_} event for {subject}: {:#?}",
            hook.accepted().iter().map(|r| r.json()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_encrypted_files_land_decrypted_over_sftp_and_ftps() {
    let k = keys();
    let hook = Receiver::start().await;
    let env = k.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let g = ftps_gateway_with(&hook, true, &env).await;
    set_up(&g, &k);

    // Incompressible and larger than a part: the plaintext goes up as a multipart upload.
    let settle = random_bytes((7 << 20) + 333);
    k.encrypt(&g, "settle.csv.pgp", &settle, WHARF, Some(PARTNER));
    let statement = b"date,amount\n2026-12-01,100.00\n".repeat(5000);
    k.encrypt(&g, "statement.txt.asc", &statement, WHARF, Some(PARTNER));

    g.acme("put settle.csv.pgp /inbound/settle.csv.pgp\n").ok();
    let out = crate::ftps::curl_put(
        &g,
        "acme",
        PW,
        "statement.txt.asc",
        "inbound/statement.txt.asc",
    );
    assert!(out.status.success(), "{out:?}");

    for (path, plain, source) in [
        ("/plain/settle.csv", &settle[..], "/inbound/settle.csv.pgp"),
        (
            "/plain/statement.txt",
            &statement[..],
            "/inbound/statement.txt.asc",
        ),
    ] {
        let e = hook_event(&hook, "wharf.decrypt.completed", path).await;
        let d = &e["data"];
        assert_eq!(d["source_path"], source, "{e}");
        assert_eq!(d["signer_fingerprint"], k.partner_fpr.as_str(), "{e}");
        assert_eq!(d["signature"], "valid", "{e}");
        assert_eq!(d["bytes"], plain.len(), "{e}");
        assert_eq!(d["sha256"], sha(plain), "{e}");
        assert!(
            d["key"].as_str().unwrap().ends_with(&format!("acme{path}")),
            "{e}"
        );
        assert!(
            d["source_key"]
                .as_str()
                .unwrap()
                .ends_with(&format!("acme/in{}", &source[8..])),
            "{e}"
        );
        let rel = format!("acme{path}");
        assert_eq!(g.object(&rel).await.as_deref(), Some(plain), "{path}");
        // The upload's own event is unchanged, and the encrypted original stays.
        hook_event(&hook, "wharf.upload.completed", source).await;
        assert!(g
            .object(&format!("acme/in{}", &source[8..]))
            .await
            .is_some());
    }
    // The partner can fetch the plaintext.
    g.acme("get /plain/statement.txt got.txt\n").ok();
    assert_eq!(std::fs::read(g.w.file("got.txt")).unwrap(), statement);
    // One outcome each.
    let completed = hook
        .accepted()
        .iter()
        .filter(|r| r.json()["type"] == "wharf.decrypt.completed")
        .count();
    assert_eq!(completed, 2);
    assert_eq!(g.count_rows("decrypt_jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_that_fail_a_check_get_a_failed_event_and_leave_no_plaintext() {
    let k = keys();
    let env = k.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let g = Gateway::start(false, &env).await;
    set_up(&g, &k);
    let plain = random_bytes((12 << 20) + 5);

    k.encrypt(&g, "unsigned.csv.pgp", &plain, WHARF, None);
    k.encrypt(&g, "stranger.csv.pgp", &plain, WHARF, Some(STRANGER));
    k.encrypt(&g, "other.csv.pgp", &plain, OTHER, Some(PARTNER));
    k.encrypt(&g, "truncated.csv.pgp", &plain, WHARF, Some(PARTNER));
    k.encrypt(&g, "tampered.csv.pgp", &plain, WHARF, Some(PARTNER));
    // Without compression (`--compress-algo none`) the message is read on one thread, with
    // it (GnuPG's default) on two: both paths are checked, tampered and whole.
    let none = ["--compress-algo", "none"];
    k.encrypt_with(
        &g,
        "flat-tampered.csv.pgp",
        &plain,
        WHARF,
        Some(PARTNER),
        &none,
    );
    k.encrypt_with(&g, "flat.csv.pgp", &plain, WHARF, Some(PARTNER), &none);
    k.encrypt(&g, "optional.csv.gpg", &plain, WHARF, None);
    // Compresses a thousandfold: more plaintext than pgp.max_expansion allows.
    k.encrypt(
        &g,
        "bomb.csv.pgp",
        &vec![0u8; 150 << 20],
        WHARF,
        Some(PARTNER),
    );
    let full = std::fs::read(g.w.file("truncated.csv.pgp")).unwrap();
    std::fs::write(g.w.file("truncated.csv.pgp"), &full[..full.len() * 2 / 3]).unwrap();
    for name in ["tampered.csv.pgp", "flat-tampered.csv.pgp"] {
        let mut bad = std::fs::read(g.w.file(name)).unwrap();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x5a;
        std::fs::write(g.w.file(name), &bad).unwrap();
    }
    std::fs::write(g.w.file("junk.csv.pgp"), b"not pgp at all\n").unwrap();

    g.acme(
        "put unsigned.csv.pgp /inbound/\nput stranger.csv.pgp /inbound/\n\
         put other.csv.pgp /inbound/\nput truncated.csv.pgp /inbound/\n\
         put tampered.csv.pgp /inbound/\nput junk.csv.pgp /inbound/\n\
         put flat-tampered.csv.pgp /inbound/\nput flat.csv.pgp /inbound/\n\
         put optional.csv.gpg /loose/\nput bomb.csv.pgp /loose/\n",
    )
    .ok();

    for (name, code, folder) in [
        ("unsigned.csv", "unsigned", "inbound"),
        ("stranger.csv", "bad_signature", "inbound"),
        ("other.csv", "no_key", "inbound"),
        ("truncated.csv", "corrupt", "inbound"),
        ("tampered.csv", "corrupt", "inbound"),
        ("flat-tampered.csv", "corrupt", "inbound"),
        ("junk.csv", "corrupt", "inbound"),
        ("bomb.csv", "corrupt", "loose"),
    ] {
        let source = format!("/{folder}/{name}.pgp");
        let e = wait_event(&g, "wharf.decrypt.failed", &source).await;
        assert_eq!(e["data"]["failure_code"], code, "{e}");
        assert!(
            !e["data"]["failure_message"].as_str().unwrap().is_empty(),
            "{e}"
        );
        assert_eq!(e["data"]["path"], format!("/plain/{name}"), "{e}");
        assert!(
            g.object(&format!("acme/plain/{name}")).await.is_none(),
            "{name}"
        );
    }
    let ok = wait_event(&g, "wharf.decrypt.completed", "/plain/optional.csv").await;
    assert_eq!(ok["data"]["signature"], "none", "{ok}");
    assert!(ok["data"]["signer_fingerprint"].is_null(), "{ok}");
    assert_eq!(g.object("acme/plain/optional.csv").await.unwrap(), plain);
    let flat = wait_event(&g, "wharf.decrypt.completed", "/plain/flat.csv").await;
    assert_eq!(flat["data"]["signature"], "valid", "{flat}");
    assert_eq!(g.object("acme/plain/flat.csv").await.unwrap(), plain);
    // The failed plaintext uploads (multipart: 12 MiB in 5 MiB parts) were aborted.
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
    assert_eq!(g.count_rows("decrypt_jobs").await, 0);
}

/// The event of `type_` for `path` (`data.path`, or `data.source_path` of a failure).
async fn wait_event(g: &Gateway, type_: &str, path: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = g.jsonl_events().into_iter().find(|e| {
            e["type"] == type_ && (e["data"]["path"] == path || e["data"]["source_path"] == path)
        }) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {type_} event for {path}: {:#?}",
            g.jsonl_events()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decryption_cut_by_a_crash_completes_exactly_once_after_restart() {
    let k = keys();
    let mut env = k.env();
    // A dead instance's claims and uploads are taken over within seconds.
    env.push(("WHARF_EVENTS__LEASE".into(), "2s".into()));
    env.push(("WHARF_RECOVERY__HEARTBEAT".into(), "1s".into()));
    env.push(("WHARF_RECOVERY__INTERVAL".into(), "1s".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut g = Gateway::start(true, &env).await;
    set_up(&g, &k);
    let plain = random_bytes((20 << 20) + 11);
    k.encrypt(&g, "big.csv.pgp", &plain, WHARF, Some(PARTNER));

    for (i, point) in [
        "decrypt.writing",
        "decrypt.before_commit",
        "decrypt.after_commit",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("big{i}.csv");
        std::fs::copy(g.w.file("big.csv.pgp"), g.w.file(&format!("{name}.pgp"))).unwrap();
        g.restart(&[], &[("WHARF_TEST_CRASH_AT", point)]);
        // The crash may come before the client has hung up: its exit status says nothing.
        let _ = g.acme(&format!("put {name}.pgp /inbound/{name}.pgp\n"));
        assert!(
            g.server.wait_exit(Duration::from_secs(60)).is_some(),
            "{point}: the server did not crash: {}",
            g.server.log()
        );
        g.restart(&["WHARF_TEST_CRASH_AT"], &[]);
        // The upload was acknowledged before the crash, so it arrived.
        wait_event(
            &g,
            "wharf.upload.completed",
            &format!("/inbound/{name}.pgp"),
        )
        .await;
        let e = wait_event(&g, "wharf.decrypt.completed", &format!("/plain/{name}")).await;
        assert_eq!(e["data"]["sha256"], sha(&plain), "{e}");
        assert_eq!(
            g.object(&format!("acme/plain/{name}")).await.unwrap(),
            plain
        );
        // Exactly once: no second outcome however long we wait.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let outcomes = g
            .jsonl_events()
            .into_iter()
            .filter(|e| {
                e["type"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("wharf.decrypt.")
                    && e["data"]["source_path"] == format!("/inbound/{name}.pgp")
            })
            .count();
        assert_eq!(outcomes, 1, "{point}");
        assert_eq!(g.count_rows("decrypt_jobs").await, 0);
    }
    // A job whose attempts all ended without an outcome is given up with a failed event,
    // not run again for ever.
    std::fs::copy(g.w.file("big.csv.pgp"), g.w.file("poison.csv.pgp")).unwrap();
    g.restart(&[], &[("WHARF_TEST_CRASH_AT", "decrypt.writing")]);
    let _ = g.acme("put poison.csv.pgp /inbound/poison.csv.pgp\n");
    assert!(g.server.wait_exit(Duration::from_secs(60)).is_some());
    g.execute("UPDATE decrypt_jobs SET attempts = 6").await;
    g.restart(&["WHARF_TEST_CRASH_AT"], &[]);
    let e = wait_event(&g, "wharf.decrypt.failed", "/inbound/poison.csv.pgp").await;
    assert_eq!(e["data"]["failure_code"], "storage_error", "{e}");
    assert!(
        e["data"]["failure_message"]
            .as_str()
            .unwrap()
            .contains("given up"),
        "{e}"
    );
    assert!(g.object("acme/plain/poison.csv").await.is_none());
    // The multipart upload the crashes left open were aborted by recovery.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !g.s3.open_multipart_uploads(&g.prefix).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a multipart upload was left open"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An OpenPGP packet in the new format: tag, length, body.
fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0xc0 | tag];
    let n = body.len();
    if n < 192 {
        p.push(n as u8);
    } else if n < 8384 {
        let m = n - 192;
        p.push((m >> 8) as u8 + 192);
        p.push(m as u8);
    } else {
        p.push(0xff);
        p.extend_from_slice(&(n as u32).to_be_bytes());
    }
    p.extend_from_slice(body);
    p
}

/// A literal packet holding `data`.
fn literal(data: &[u8]) -> Vec<u8> {
    let mut body = vec![b'b', 0, 0, 0, 0, 0];
    body.extend_from_slice(data);
    packet(11, &body)
}

/// `inner` in `layers` compressed packets of algorithm 0 ("uncompressed"): a few bytes each.
fn nested(inner: Vec<u8>, layers: usize) -> Vec<u8> {
    (0..layers).fold(inner, |acc, _| {
        let mut body = vec![0u8];
        body.extend_from_slice(&acc);
        packet(8, &body)
    })
}

impl Keys {
    /// Encrypts `packets` as they are (`gpg --no-literal`: no literal packet of its own) to
    /// the deployment's key, with GnuPG's `compress` algorithm, into `name` in the
    /// gateway's directory.
    fn encrypt_packets(&self, g: &Gateway, name: &str, packets: &[u8], compress: &str) {
        let raw = self.dir.join(format!("{name}.raw"));
        std::fs::write(&raw, packets).unwrap();
        let out = g.w.file(name);
        let _ = std::fs::remove_file(&out);
        self.gpg.run(&[
            "--recipient",
            WHARF,
            "--no-literal",
            "--compress-algo",
            compress,
            "--output",
            out.to_str().unwrap(),
            "--encrypt",
            raw.to_str().unwrap(),
        ]);
    }
}

/// A hostile partner's PGP files, each made to exhaust the decryption: 10,000 and 100 nested
/// compression layers (each 3–6 bytes; the 10,000-layer file overflowed the gateway's stack
/// before decryption ran in a worker), a million session-key packets before the encrypted
/// data, and 20 million one-pass-signature packets compressed into a few hundred KB (their
/// parsing exhausts the worker's address space). Each fails as `corrupt` once, with a
/// message that says why; the instance stays up and ready; an honest signed file uploaded
/// right after decrypts byte-exact.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_pgp_files_end_only_their_worker() {
    let k = keys();
    let env = k.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut g = Gateway::start(false, &env).await;
    set_up(&g, &k);
    k.encrypt_packets(
        &g,
        "deep.csv.pgp",
        &nested(literal(b"pay,1\n"), 10_000),
        "none",
    );
    k.encrypt_packets(
        &g,
        "hundred.csv.pgp",
        &nested(literal(b"pay,2\n"), 100),
        "none",
    );
    // 20 million one-pass signatures (v3, SHA-256, EdDSA), then the literal data.
    let ops = packet(4, &[3, 0, 8, 22, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
    let mut many = Vec::with_capacity(ops.len() * 20_000_000 + 64);
    for _ in 0..20_000_000 {
        many.extend_from_slice(&ops);
    }
    many.extend_from_slice(&literal(b"pay,3\n"));
    k.encrypt_packets(&g, "signatures.csv.pgp", &many, "zlib");
    drop(many);
    // A million session-key packets (each a copy of the file's own) before its data.
    let honest_small = g.w.file("small.csv.pgp");
    k.encrypt(&g, "small.csv.pgp", b"pay,4\n", WHARF, None);
    let small = std::fs::read(&honest_small).unwrap();
    let esk_len = {
        // The first packet (GnuPG writes old-format headers; new ones are read too).
        let b = small[0];
        let (head, len) = if b & 0x40 == 0 {
            let n = [1, 2, 4][(b & 3) as usize];
            let len = small[1..=n]
                .iter()
                .fold(0usize, |a, x| (a << 8) | *x as usize);
            (1 + n, len)
        } else if (small[1] as usize) < 192 {
            (2, small[1] as usize)
        } else {
            (
                3,
                ((small[1] as usize - 192) << 8) + small[2] as usize + 192,
            )
        };
        head + len
    };
    let mut esks = Vec::new();
    for _ in 0..1_000_000 {
        esks.extend_from_slice(&small[..esk_len]);
    }
    esks.extend_from_slice(&small[esk_len..]);
    std::fs::write(g.w.file("keys.csv.pgp"), &esks).unwrap();
    drop(esks);
    for f in ["deep", "hundred", "signatures", "keys"] {
        g.acme(&format!("put {f}.csv.pgp /loose/\n")).ok();
        let e = wait_event(&g, "wharf.decrypt.failed", &format!("/loose/{f}.csv.pgp")).await;
        assert_eq!(e["data"]["failure_code"], "corrupt", "{f}: {e}");
        let why = e["data"]["failure_message"].as_str().unwrap();
        let expected = match f {
            "deep" | "hundred" => "more than 16 nested layers",
            "keys" => "more than 64 packets before the encrypted data",
            _ => "refused as hostile",
        };
        assert!(why.contains(expected), "{f}: {why}");
        assert!(g.object(&format!("acme/plain/{f}.csv")).await.is_none());
        // Still up and ready.
        assert_eq!(g.server.http_get("/readyz").await.0, 200, "{f}");
    }
    // An honest file right after.
    let plain = random_bytes(3 << 20);
    k.encrypt(&g, "honest.csv.pgp", &plain, WHARF, Some(PARTNER));
    g.acme("put honest.csv.pgp /inbound/\n").ok();
    let ok = wait_event(&g, "wharf.decrypt.completed", "/plain/honest.csv").await;
    assert_eq!(ok["data"]["sha256"], sha(&plain), "{ok}");
    assert_eq!(g.object("acme/plain/honest.csv").await.unwrap(), plain);
    // Each hostile file got one outcome, and no job is left to run again.
    let outcomes = g
        .jsonl_events()
        .into_iter()
        .filter(|e| e["type"] == "wharf.decrypt.failed")
        .count();
    assert_eq!(outcomes, 4);
    assert_eq!(g.count_rows("decrypt_jobs").await, 0);
    assert!(
        g.server.child.try_wait().unwrap().is_none(),
        "the instance ended"
    );
}

/// Verified plaintext lands only where the partner can only read: the CLI refuses an
/// account-level --decrypt-to, a target folder the partner can write to, and one that is
/// not there yet; with a right set-up the partner can neither replace nor delete the
/// plaintext, and an honest file still decrypts.
#[tokio::test(flavor = "multi_thread")]
async fn plaintext_lands_only_in_a_folder_the_partner_can_only_read() {
    let k = keys();
    let env = k.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let g = Gateway::start(false, &env).await;
    g.w.run(&["user", "set", "acme", "--decrypt-to", "/clear"])
        .fails_with(&["no folders", "wharf user dir add"]);
    g.w.dir_add("acme", "/in", "acme/in", &["--decrypt-to", "/clear"])
        .fails_with(&[
            "in none of the account's folders",
            "--permissions list,download",
        ]);
    g.w.dir_add(
        "acme",
        "/clear",
        "acme/clear",
        &["--permissions", "list,upload,download"],
    )
    .ok();
    g.w.dir_add("acme", "/in", "acme/in", &["--decrypt-to", "/clear"])
        .fails_with(&["/clear", "upload", "only read"]);
    g.w.run(&["user", "dir", "rm", "acme", "/clear"]).ok();
    g.w.dir_add(
        "acme",
        "/clear",
        "acme/clear",
        &["--permissions", "list,download"],
    )
    .ok();
    g.w.dir_add(
        "acme",
        "/in",
        "acme/in",
        &[
            "--permissions",
            "list,upload,overwrite,rename,delete",
            "--decrypt-to",
            "/clear",
        ],
    )
    .ok();
    // The plaintext folder cannot be removed while a folder decrypts into it.
    g.w.run(&["user", "dir", "rm", "acme", "/clear"])
        .fails_with(&["--decrypt-to /clear"]);
    let key = k.dir.join("partner.asc");
    g.w.run(&["user", "pgp", "add", "acme", key.to_str().unwrap()])
        .ok();
    let plain = b"settlement,100.00\n".to_vec();
    k.encrypt(&g, "pay.csv.pgp", &plain, WHARF, Some(PARTNER));
    g.acme("put pay.csv.pgp /in/\n").ok();
    let e = wait_event(&g, "wharf.decrypt.completed", "/clear/pay.csv").await;
    assert_eq!(e["data"]["signature"], "valid", "{e}");
    // Whoever holds the partner's password cannot replace or remove it.
    g.write_file("forged.csv", b"settlement,999999.00\n");
    let run = g.acme("put forged.csv /clear/pay.csv\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    let run = g.acme("rm /clear/pay.csv\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    let run = g.acme("rename /in/pay.csv.pgp /clear/x.csv\n");
    assert_ne!(run.code, Some(0), "{run:?}");
    assert_eq!(g.object("acme/clear/pay.csv").await.unwrap(), plain);
}

/// A decrypted plaintext bound for a scanned folder is scanned before it is published (the
/// ciphertext cannot be): an encrypted EICAR file fails with `infected` and leaves no
/// plaintext; a clean one lands with its `scan` field.
#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_is_scanned_before_it_is_published() {
    let clamd = std::env::var("WHARF_TEST_CLAMD")
        .expect("WHARF_TEST_CLAMD: run the tests with scripts/test.sh, which starts a clamd");
    let k = keys();
    let mut env = k.env();
    env.push(("WHARF_SCAN__CLAMD".into(), clamd));
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let g = Gateway::start(false, &env).await;
    set_up(&g, &k);
    let eicar = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    k.encrypt(&g, "bad.csv.pgp", eicar, WHARF, Some(PARTNER));
    let clean = random_bytes(100_000);
    k.encrypt(&g, "good.csv.pgp", &clean, WHARF, Some(PARTNER));
    // The ciphertext itself passes the scan (it is ciphertext).
    g.acme("put bad.csv.pgp /inbound/\nput good.csv.pgp /inbound/\n")
        .ok();
    let e = wait_event(&g, "wharf.decrypt.failed", "/inbound/bad.csv.pgp").await;
    assert_eq!(e["data"]["failure_code"], "infected", "{e}");
    assert!(g.object("acme/plain/bad.csv").await.is_none());
    let ok = wait_event(&g, "wharf.decrypt.completed", "/plain/good.csv").await;
    assert_eq!(ok["data"]["scan"]["result"], "clean", "{ok}");
    assert_eq!(g.object("acme/plain/good.csv").await.unwrap(), clean);
    assert!(g.s3.open_multipart_uploads(&g.prefix).await.is_empty());
}
