//! The admin API (`[admin]`) and the audit trail, driven as onboarding automation and an
//! auditor would: the real binary on SQLite and Postgres, tokens made with the CLI, partners
//! onboarded over HTTP and uploading with OpenSSH `sftp`, the audit table tampered with
//! directly, and Schemathesis checking every operation against `/openapi.json`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::harness::{random_bytes, ssh_fingerprint, ssh_keygen, Auth, Gateway, Wharf};

const ADMIN: [(&str, &str); 2] = [
    ("WHARF_ADMIN__ENABLED", "true"),
    ("WHARF_ADMIN__LISTEN", "127.0.0.1:0"),
];

/// The gateway with the admin API on, on local storage; more settings in `extra`.
async fn gateway(postgres: bool, extra: &[(&str, &str)]) -> Gateway {
    let mut env: Vec<(&str, &str)> = ADMIN.to_vec();
    env.extend_from_slice(extra);
    Gateway::start_on(true, postgres, &env).await
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn of(g: &Gateway) -> Api {
        Api {
            base: format!(
                "http://{}",
                g.server
                    .admin_addr
                    .expect("the admin API announced its address")
            ),
            client: reqwest::Client::new(),
        }
    }

    /// One request: its status and its body (JSON, or the text as a JSON string).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(token), Some(body)).await
    }
}

/// `wharf admin token add NAME --scope SCOPE [MORE]`: the token it printed once.
fn token(w: &Wharf, name: &str, scope: &str, more: &[&str]) -> String {
    let mut args = vec!["admin", "token", "add", name, "--scope", scope];
    args.extend_from_slice(more);
    let t = w.run(&args).ok().stdout.trim().to_string();
    assert!(t.starts_with("wharf_"), "{t}");
    t
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The README's walk-through: a token from the CLI, a partner with a key and two folders over
/// the API, an upload with `sftp`, and the support person's question — did it arrive?
async fn walkthrough(postgres: bool) {
    let g = gateway(postgres, &[]).await;
    let api = Api::of(&g);
    let tok = token(&g.w, "onboarding", "write", &["--expires", "90d"]);

    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");

    let key = ssh_keygen(g.w.path(), "globex", "ed25519", None);
    let line = std::fs::read_to_string(&key).unwrap();
    let (status, created) = api
        .post(
            "/v1/accounts",
            &tok,
            json!({"username": "globex", "ssh_keys": [line.trim()], "generate_password": true}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let password = created["password"].as_str().unwrap().to_string();
    assert_eq!(
        created["account"]["keys"][0]["fingerprint"],
        ssh_fingerprint(&key)
    );
    let (status, f) = api
        .post(
            "/v1/accounts/globex/folders",
            &tok,
            json!({"path": "/inbound", "location": "globex/inbound",
                   "permissions": ["list", "upload", "rename"], "allow": ["*.csv"]}),
        )
        .await;
    assert_eq!(status, 201, "{f}");
    let (status, f) = api
        .post(
            "/v1/accounts/globex/folders",
            &tok,
            json!({"path": "/outbound", "location": "globex/outbound",
                   "permissions": ["list", "download"]}),
        )
        .await;
    assert_eq!(status, 201, "{f}");
    let (status, account) = api.get("/v1/accounts/globex", &tok).await;
    assert_eq!(status, 200);
    assert_eq!(account["folders"][0]["path"], "/inbound", "{account}");
    assert_eq!(account["folders"][1]["path"], "/outbound", "{account}");
    // The same validation and words as the CLI.
    let (status, p) = api
        .post(
            "/v1/accounts/globex/folders",
            &tok,
            json!({"path": "/inbound/x", "location": "elsewhere"}),
        )
        .await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["type"], "urn:wharf:problem:folder-overlaps", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("overlaps"), "{p}");

    let data = random_bytes(300_000);
    g.write_file("settlement.csv", &data);
    g.sftp(
        "globex",
        &Auth::Key(key.with_extension("")),
        "put settlement.csv /inbound/settlement-2026-12-02.csv\n",
    )
    .ok();
    g.sftp("globex", &Auth::Password(password), "ls /outbound\n")
        .ok();
    assert_eq!(
        g.object("globex/inbound/settlement-2026-12-02.csv")
            .await
            .as_deref(),
        Some(&data[..])
    );

    let t = |d: chrono::DateTime<chrono::Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let now = chrono::Utc::now();
    let q = format!(
        "/v1/arrivals?user=globex&folder=/inbound&pattern=settlement-*.csv&since={}&until={}",
        t(now - chrono::Duration::days(1)),
        t(now + chrono::Duration::minutes(1))
    );
    let (status, arrivals) = api.get(&q, &tok).await;
    assert_eq!(status, 200, "{arrivals}");
    let items = arrivals["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{arrivals}");
    assert_eq!(items[0]["path"], "/inbound/settlement-2026-12-02.csv");
    assert_eq!(items[0]["username"], "globex");
    assert_eq!(items[0]["bytes"], data.len());
    assert_eq!(items[0]["sha256"], sha(&data));
    // Nothing for a name that did not arrive, nor for the day before.
    let (_, none) = api
        .get("/v1/arrivals?user=globex&pattern=remittance-*", &tok)
        .await;
    assert_eq!(none["items"], json!([]), "{none}");
    let (_, none) = api
        .get(
            &format!(
                "/v1/arrivals?user=globex&until={}",
                t(now - chrono::Duration::days(1))
            ),
            &tok,
        )
        .await;
    assert_eq!(none["items"], json!([]), "{none}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_readme_walkthrough_on_sqlite() {
    walkthrough(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_readme_walkthrough_on_postgres() {
    walkthrough(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_tokens_missing_wrong_expired_read_only_or_revoked_are_refused() {
    let g = gateway(false, &[("WHARF_SECURITY__BAN_AFTER_FAILURES", "0")]).await;
    let api = Api::of(&g);
    let write = token(&g.w, "ops", "write", &[]);
    let read = token(&g.w, "viewer", "read", &[]);
    let short = token(&g.w, "short", "write", &["--expires", "1s"]);
    let started = Instant::now();

    assert_eq!(api.get("/v1/accounts", &write).await.0, 200);
    assert_eq!(api.get("/v1/accounts", &read).await.0, 200);

    let refused = |(status, body): (u16, Value), want: u16, what: &str| {
        assert_eq!(status, want, "{what}: {body}");
        let slug = if want == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        assert_eq!(body["type"], format!("urn:wharf:problem:{slug}"), "{what}");
    };
    refused(
        api.call("GET", "/v1/accounts", None, None).await,
        401,
        "missing",
    );
    let mut wrong = write.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    refused(api.get("/v1/accounts", &wrong).await, 401, "wrong secret");
    refused(api.get("/v1/accounts", "nonsense").await, 401, "garbage");
    refused(
        api.call("GET", "/v1/accounts", None, None).await.clone(),
        401,
        "missing again",
    );
    // A read token may not change anything, and nothing changed.
    refused(
        api.post("/v1/accounts", &read, json!({"username": "mallory"}))
            .await,
        403,
        "read token on a write operation",
    );
    refused(
        api.call("DELETE", "/v1/accounts/acme", Some(&read), None)
            .await,
        403,
        "read token deleting",
    );
    assert_eq!(api.get("/v1/accounts/mallory", &write).await.0, 404);
    assert_eq!(api.get("/v1/accounts/acme", &write).await.0, 200);

    // Expired.
    if let Some(left) = Duration::from_millis(1500).checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    refused(api.get("/v1/accounts", &short).await, 401, "expired");

    // Revoked.
    g.w.run(&["admin", "token", "rm", "viewer"]).ok();
    refused(api.get("/v1/accounts", &read).await, 401, "revoked");
    g.w.run(&["admin", "token", "rm", "viewer"])
        .fails_with(&["no token named viewer"]);
    assert_eq!(api.get("/v1/accounts", &write).await.0, 200);

    // Listed without secrets.
    let list =
        g.w.run(&["admin", "token", "list", "--json"])
            .ok()
            .stdout
            .clone();
    let names: Vec<String> = serde_json::from_str::<Value>(&list)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["ops", "short"]);
    assert!(!list.contains(&write) && !list.contains(&short), "{list}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_wrong_token_costs_the_same_time_as_a_right_one() {
    let g = gateway(false, &[("WHARF_SECURITY__BAN_AFTER_FAILURES", "0")]).await;
    let api = Api::of(&g);
    let right = token(&g.w, "ops", "write", &[]);
    // The worst case for a leak: a known id with a wrong secret (the row is found).
    let (id, _) = right.rsplit_once('_').unwrap();
    let wrong_secret = format!("{id}_{}", "A".repeat(43));
    let unknown_id = format!("wharf_0123456789abcdef_{}", "A".repeat(43));
    let (mut r, mut w, mut u) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..240 {
        for (tok, out, want) in [
            (&right, &mut r, 200),
            (&wrong_secret, &mut w, 401),
            (&unknown_id, &mut u, 401),
        ] {
            let t = Instant::now();
            let (status, _) = api.get("/v1/host-keys", tok).await;
            let took = t.elapsed();
            assert_eq!(status, want);
            if round >= 40 {
                out.push(took);
            }
        }
    }
    let (mr, mw, mu) = (median(r), median(w), median(u));
    println!("admin token timing medians over 200 requests each: right {mr:?}, wrong secret {mw:?}, unknown id {mu:?}");
    // Loose: one database lookup each way; the bound is far below what a guess would need to
    // tell apart, and far above scheduling noise on a shared machine.
    let bound = Duration::from_millis(2) + mr / 2;
    for (what, m) in [("wrong secret", mw), ("unknown id", mu)] {
        let diff = m.abs_diff(mr);
        assert!(
            diff < bound,
            "{what}: median {m:?} vs right {mr:?} (differ by {diff:?}, bound {bound:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_wrong_tokens_count_toward_the_address_ban_and_the_ban_is_audited() {
    let g = gateway(false, &[("WHARF_SECURITY__BAN_AFTER_FAILURES", "3")]).await;
    let api = Api::of(&g);
    let right = token(&g.w, "ops", "write", &[]);
    for _ in 0..3 {
        assert_eq!(api.get("/v1/accounts", "wharf_wrong").await.0, 401);
    }
    // Banned: even the right token is refused from this address.
    assert_eq!(api.get("/v1/accounts", &right).await.0, 401);
    let bans: Value =
        serde_json::from_str(&g.w.run(&["ban", "list", "--json"]).ok().stdout).unwrap();
    assert_eq!(bans[0]["address"], "127.0.0.1", "{bans}");
    g.w.run(&["ban", "rm", "127.0.0.1"]).ok();
    // Every instance notices within seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get("/v1/accounts", &right).await.0 != 200 {
        assert!(Instant::now() < deadline, "the lifted ban still holds");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = audit_list(&g.w);
    let bans: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|r| r.1.starts_with("ban."))
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2.as_str()))
        .collect();
    assert_eq!(bans.len(), 2, "{audit:?}");
    assert!(bans[0].0.starts_with("server:"), "{audit:?}");
    assert_eq!(
        (bans[0].1, bans[0].2),
        ("ban.set", "address:127.0.0.1"),
        "{audit:?}"
    );
    assert!(bans[1].0.starts_with("cli:"), "{audit:?}");
    assert_eq!((bans[1].1, bans[1].2), ("ban.lift", "address:127.0.0.1"));
}

/// `wharf audit list --json` as (actor, action, target, changes).
fn audit_list(w: &Wharf) -> Vec<(String, String, String, Value)> {
    let out = w.run(&["audit", "list", "--json"]).ok().stdout.clone();
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_string(),
                r["action"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
                r["changes"].clone(),
            )
        })
        .collect()
}

/// Every row of `audit_log` and `admin_tokens` as text, as a dump would show them.
async fn dump(g: &Gateway) -> String {
    use sqlx::Connection as _;
    let q = [
        "SELECT CAST(seq AS TEXT) || ' ' || CAST(at_us AS TEXT) || ' ' || actor || ' ' || action || ' ' || target || ' ' || changes || ' ' || prev_hash || ' ' || hash FROM audit_log ORDER BY seq",
        "SELECT id || ' ' || name || ' ' || scope || ' ' || hash FROM admin_tokens",
    ];
    let mut out = Vec::new();
    for q in q {
        let rows: Vec<String> = match &g._pg {
            Some(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                sqlx::query_scalar(q).fetch_all(&mut c).await.unwrap()
            }
            None => {
                let url = format!("sqlite://{}", g.w.file("wharf.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(q).fetch_all(&mut c).await.unwrap()
            }
        };
        out.extend(rows);
    }
    out.join("\n")
}

async fn audit_trail(postgres: bool) {
    let g = gateway(postgres, &[]).await;
    let api = Api::of(&g);
    let tok = token(&g.w, "ci", "write", &[]);
    g.w.run(&["user", "set", "acme", "--permissions", "list,upload"])
        .ok();
    let (status, created) = api
        .post(
            "/v1/accounts",
            &tok,
            json!({"username": "globex", "generate_password": true}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let password = created["password"].as_str().unwrap().to_string();
    let key = ssh_keygen(g.w.path(), "k", "ed25519", None);
    let (status, body) = api
        .post(
            "/v1/accounts/globex/keys",
            &tok,
            json!({"keys": std::fs::read_to_string(&key).unwrap()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .post(
            "/v1/accounts/globex/folders",
            &tok,
            json!({"path": "/inbound", "location": "globex/in"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        api.post("/v1/accounts/globex/disable", &tok, json!({}))
            .await
            .0,
        200
    );
    let (status, body) = api
        .call(
            "PATCH",
            "/v1/accounts/globex",
            Some(&tok),
            Some(json!({"allowed_ips": ["192.0.2.0/24"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(
            "/v1/accounts/globex/password",
            &tok,
            json!({"generate": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let password2 = body["password"].as_str().unwrap().to_string();
    // A refused change leaves no record.
    assert_eq!(
        api.post("/v1/accounts", &tok, json!({"username": "globex"}))
            .await
            .0,
        409
    );
    g.w.run(&["user", "disable", "acme"]).ok();
    g.w.run_stdin(
        &["user", "passwd", "acme", "--password-stdin"],
        Some("Another-Secret-2026\n"),
    )
    .ok();

    let rows = audit_list(&g.w);
    let got: Vec<(String, &str, &str)> = rows
        .iter()
        .map(|(actor, action, target, _)| {
            let who = if actor.starts_with("cli:") && actor.contains('@') {
                "cli".to_string()
            } else {
                actor.clone()
            };
            (who, action.as_str(), target.as_str())
        })
        .collect();
    let want: Vec<(String, &str, &str)> = [
        ("cli", "account.create", "account:acme"),
        ("cli", "token.add", "token:ci"),
        ("cli", "account.update", "account:acme"),
        ("token:ci", "account.create", "account:globex"),
        ("token:ci", "key.add", "account:globex"),
        ("token:ci", "folder.add", "account:globex"),
        ("token:ci", "account.disable", "account:globex"),
        ("token:ci", "account.update", "account:globex"),
        ("token:ci", "account.password", "account:globex"),
        ("cli", "account.disable", "account:acme"),
        ("cli", "account.password", "account:acme"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.to_string(), b, c))
    .collect();
    assert_eq!(got, want, "{rows:#?}");
    // The changed fields are there.
    assert_eq!(
        rows[2].3["permissions"]["to"],
        json!(["list", "upload"]),
        "{rows:#?}"
    );
    assert_eq!(rows[7].3["allowed_ips"]["to"], json!(["192.0.2.0/24"]));
    // The API lists the same trail.
    let (status, page) = api.get("/v1/audit?actor=token:ci", &tok).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 6, "{page}");

    // No secret in the tables.
    let dumped = dump(&g).await;
    for secret in [
        password.as_str(),
        password2.as_str(),
        "Another-Secret-2026",
        tok.as_str(),
        tok.rsplit_once('_').unwrap().1,
        "$argon2",
    ] {
        assert!(!dumped.contains(secret), "{secret:?} is in the dump");
    }

    let verify = |needle: Option<&str>| {
        let out = g.w.run(&["audit", "verify"]);
        match needle {
            None => {
                out.ok();
                assert!(out.stdout.contains("intact"), "{out:?}");
            }
            Some(n) => {
                out.fails_with(&["audit trail broken", n]);
            }
        }
    };
    verify(None);
    g.execute("CREATE TABLE audit_copy AS SELECT * FROM audit_log")
        .await;
    let restore = || async {
        g.execute("DELETE FROM audit_log").await;
        g.execute("INSERT INTO audit_log SELECT * FROM audit_copy")
            .await;
    };
    // Edited.
    g.execute("UPDATE audit_log SET actor = 'cli:nobody@nowhere' WHERE seq = 5")
        .await;
    verify(Some("row 5"));
    restore().await;
    verify(None);
    g.execute("UPDATE audit_log SET changes = '{}' WHERE seq = 3")
        .await;
    verify(Some("row 3 was changed"));
    restore().await;
    // Deleted.
    g.execute("DELETE FROM audit_log WHERE seq = 4").await;
    verify(Some("row 4 was deleted"));
    restore().await;
    g.execute("DELETE FROM audit_log WHERE seq = 11").await;
    verify(Some("row 11"));
    restore().await;
    // Reordered: rows 6 and 7 swap places.
    g.execute("UPDATE audit_log SET seq = -6 WHERE seq = 6")
        .await;
    g.execute("UPDATE audit_log SET seq = 6 WHERE seq = 7")
        .await;
    g.execute("UPDATE audit_log SET seq = 7 WHERE seq = -6")
        .await;
    verify(Some("row 6"));
    restore().await;
    verify(None);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_each_cli_and_api_change_once_and_verify_finds_tampering_on_sqlite() {
    audit_trail(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_each_cli_and_api_change_once_and_verify_finds_tampering_on_postgres() {
    audit_trail(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_bounds_hostile_input_and_still_serves_honest_requests() {
    let g = gateway(false, &[]).await;
    let api = Api::of(&g);
    let tok = token(&g.w, "ops", "write", &[]);

    // Body size: over 1 MiB is refused before it is parsed.
    let big = json!({"keys": "x".repeat((1 << 20) + 10)});
    let (status, p) = api.post("/v1/accounts/acme/keys", &tok, big).await;
    assert_eq!(status, 413, "{p}");
    assert_eq!(p["type"], "urn:wharf:problem:payload-too-large");
    // Page size: at most 1000 per page.
    let (status, p) = api.get("/v1/accounts?limit=1001", &tok).await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(api.get("/v1/accounts?limit=1000", &tok).await.0, 200);
    // Not JSON, NUL characters, unknown fields.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/accounts", api.base))
        .header("authorization", format!("Bearer {tok}"))
        .header("content-type", "text/plain")
        .body("username=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert_eq!(api.get("/v1/accounts/ac%00me", &tok).await.0, 400);
    let (status, p) = api
        .post("/v1/accounts", &tok, json!({"username": "x", "evil": 1}))
        .await;
    assert!(status == 400 || status == 422, "{status} {p}");

    // Connections: at most 64 are served at once and one that sends no request head within
    // 10 s is closed, so a pile of idle connections delays an honest request on a new
    // connection by that much at most, and it is answered.
    let mut idle = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(g.server.admin_addr.unwrap()).await {
            idle.push(s);
        }
    }
    assert_eq!(idle.len(), 100);
    let t = Instant::now();
    let fresh = Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    };
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(40), fresh.get("/v1/host-keys", &tok))
            .await
            .expect("an honest request is answered while idle connections pile up");
    assert_eq!(status, 200);
    println!(
        "honest request on a new connection answered in {:?} with {} idle connections open",
        t.elapsed(),
        idle.len()
    );
    // The server closed the idle connections it took.
    let mut first = idle.remove(0);
    assert!(
        crate::harness::closed_within(&mut first, Duration::from_secs(15)).await,
        "an idle connection was kept open"
    );
    drop(idle);
    assert_eq!(api.get("/v1/accounts", &tok).await.0, 200);
}

/// Schemathesis, or a message saying how to get it.
fn schemathesis() -> String {
    let found = |c: &str| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found("schemathesis") {
        let _ = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "schemathesis"])
            .status();
    }
    assert!(
        found("schemathesis"),
        "schemathesis is not installed: python3 -m pip install schemathesis \
         (scripts/services.sh does it in ensure_client_tools)"
    );
    "schemathesis".into()
}

/// Generated cases per operation.
const SCHEMATHESIS_EXAMPLES: &str = "30";

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_holds_to_its_openapi_document_under_schemathesis() {
    let st = schemathesis();
    let g = gateway(false, &[("WHARF_SECURITY__BAN_AFTER_FAILURES", "0")]).await;
    let tok = token(&g.w, "schemathesis", "write", &[]);
    let addr = g.server.admin_addr.unwrap();
    let report = g.w.file("schemathesis.ndjson");
    let t = Instant::now();
    let out = std::process::Command::new(st)
        .current_dir(g.w.path())
        .args([
            "run",
            &format!("http://{addr}/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {tok}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            SCHEMATHESIS_EXAMPLES,
            "--seed",
            "2026",
            "--workers",
            "2",
            "--no-color",
            "--request-timeout",
            "20",
            "--report",
            "ndjson",
            "--report-ndjson-path",
        ])
        .arg(&report)
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("test cases") || l.contains("passed") || l.contains("Operations"))
        .collect();
    println!(
        "schemathesis ({SCHEMATHESIS_EXAMPLES} examples per operation) took {:?}:\n{}",
        t.elapsed(),
        summary.join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\n--- server log tail ---\n{}",
        g.server
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !g.server.log().contains("\"status\":500"),
        "a request got a 500"
    );
    // It got past the token: its changes are in the audit trail under the token's name.
    let by_it = audit_list(&g.w)
        .into_iter()
        .filter(|r| r.0 == "token:schemathesis")
        .count();
    println!("schemathesis made {by_it} audited changes");
    assert!(
        by_it > 0,
        "schemathesis changed nothing: was its token refused?"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_speaks_https_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = crate::ftps::make_cert(dir.path());
    let g = gateway(
        false,
        &[("WHARF_ADMIN__CERT", &crt), ("WHARF_ADMIN__KEY", &key)],
    )
    .await;
    let tok = token(&g.w, "viewer", "read", &[]);
    let addr = g.server.admin_addr.unwrap();
    let curl = |url: String| {
        std::process::Command::new("curl")
            .args([
                "-sk",
                "-m",
                "10",
                "-H",
                &format!("Authorization: Bearer {tok}"),
            ])
            .arg(url)
            .output()
            .expect("curl (package curl) must be installed")
    };
    let out = curl(format!("https://{addr}/v1/host-keys"));
    assert!(out.status.success(), "{out:?}");
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        keys[0]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:"),
        "{keys}"
    );
    // No plain HTTP on it.
    let out = curl(format!("http://{addr}/v1/host-keys"));
    assert!(
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("SHA256:"),
        "{out:?}"
    );
}

async fn sqlite_execute(w: &Wharf, sql: &str) {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}", w.file("wharf.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(sql).execute(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_prune_past_retention_reanchors_the_chain_and_verify_still_checks_it() {
    let w = Wharf::embedded().with_env("WHARF_AUDIT__RETENTION", "2s");
    w.run(&["user", "add", "first"]).ok();
    w.run(&["user", "add", "second"]).ok();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    w.run(&["user", "add", "third"]).ok();
    let out = w.run(&["audit", "prune"]);
    out.ok();
    assert!(
        out.stderr.contains("pruned 2 row(s) through row 2"),
        "{out:?}"
    );
    let rows = audit_list(&w);
    let kept: Vec<(&str, &str)> = rows.iter().map(|r| (r.1.as_str(), r.2.as_str())).collect();
    assert_eq!(
        kept,
        [
            ("account.create", "account:third"),
            ("audit.prune", "audit_log")
        ],
        "{rows:#?}"
    );
    assert_eq!(rows[1].3["through_seq"], 2);
    assert_eq!(rows[1].3["retention"], "2s");
    let ok = w.run(&["audit", "verify"]);
    ok.ok();
    assert!(ok.stdout.contains("intact: 2 row(s) from row 3"), "{ok:?}");
    // Nothing else is old enough.
    assert!(w.run(&["audit", "prune"]).ok().stderr.contains("nothing"));
    // The anchor is what lets the chain start at row 3: without it, rows are missing.
    sqlite_execute(&w, "DELETE FROM audit_anchors").await;
    w.run(&["audit", "verify"])
        .fails_with(&["audit trail broken at row 1", "rows 1 to 2 were deleted"]);
}

/// The README's walk-through exactly as written there (its shell block, run with bash and curl
/// against this server), so the README cannot drift from the API.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_readme_shell_block_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("TOKEN=$(wharf admin token add onboarding")
        .expect("the walk-through in the README");
    let block = &readme[start..];
    let block = &block[..block.find("```").unwrap()];
    assert!(block.contains("API=http://127.0.0.1:9465"), "{block}");
    let g = gateway(false, &[]).await;
    ssh_keygen(g.w.path(), "globex", "ed25519", None);
    let script = format!(
        "set -euo pipefail\nwharf() {{ '{}' \"$@\"; }}\n{}",
        crate::harness::bin(),
        block.replace(
            "API=http://127.0.0.1:9465",
            &format!("API=http://{}", g.server.admin_addr.unwrap())
        )
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(&script).current_dir(g.w.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("WHARF_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in &g.w.env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Four answers: the account (with its one-time password), two folders, the arrivals.
    let answers: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers.len(), 4, "{stdout}");
    assert_eq!(answers[0]["account"]["username"], "globex");
    assert!(answers[0]["password"].is_string());
    assert_eq!(answers[1]["path"], "/inbound");
    assert_eq!(answers[2]["path"], "/outbound");
    assert_eq!(answers[3]["items"], json!([]), "nothing arrived yesterday");
}
