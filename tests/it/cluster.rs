//! Several instances behind HAProxy, started by `scripts/cluster.sh` from the recipe in
//! `deploy/`: a rolling restart (each instance in turn stopped with SIGTERM and started again
//! only seconds later) fails no upload; kill -9 of an instance loses no acknowledged upload
//! and leaves nothing half-visible; FTPS reaches the instance that answered PASV through
//! per-instance passive ranges.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::{random_bytes, sftp, Auth, PgDb, Receiver, S3Env, PW};

/// A cluster of `wharf serve` instances and HAProxy, for one test.
struct Cluster {
    dir: PathBuf,
    lb: HashMap<String, String>,
    s3: S3Env,
    prefix: String,
    _pg: PgDb,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh")
}

impl Cluster {
    async fn up(n: usize, hook: &Receiver, extra: &[(&str, &str)]) -> Cluster {
        let pg = PgDb::create().await;
        let s3 = S3Env::from_env();
        let prefix = S3Env::fresh_prefix();
        let sinks = format!(
            "[{{name = \"hook\", type = \"webhook\", url = \"{}\", secret = \"s\"}}]",
            hook.url()
        );
        let mut attempt = 0;
        let dir = loop {
            attempt += 1;
            let dir = tempfile::tempdir().unwrap().keep();
            // A loopback net and a passive range of its own (below the ephemeral ports, all
            // of which HAProxy binds), so clusters run side by side; a range another process
            // holds a port of makes HAProxy fail, and then another is tried.
            let net = format!(
                "127.{}.{}",
                10 + rand::random::<u8>() % 200,
                1 + rand::random::<u8>() % 200
            );
            let passive = 10000 + (rand::random::<u16>() % 100) * 100;
            let mut cmd = Command::new(script());
            cmd.args(["up", &n.to_string()])
                .arg(&dir)
                .env("CLUSTER_NET", &net)
                .env("CLUSTER_PASSIVE_BASE", passive.to_string())
                .env("WHARF_BIN", env!("CARGO_BIN_EXE_wharf"))
                .env("WHARF_DATABASE__URL", &pg.url)
                .env("WHARF_EVENTS__SINKS", &sinks)
                .env("WHARF_STORAGE__S3__PART_SIZE", "5MiB")
                .env("WHARF_LOG__LEVEL", "info");
            for (k, v) in s3.wharf_env(&format!("s3://{}/{prefix}", s3.bucket)) {
                cmd.env(k, v);
            }
            for (k, v) in extra {
                cmd.env(k, v);
            }
            let out = cmd.output().expect("bash");
            if out.status.success() {
                break dir;
            }
            assert!(
                attempt < 3,
                "cluster.sh up: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let lb = std::fs::read_to_string(dir.join("cluster.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = Cluster {
            dir,
            lb,
            s3,
            prefix,
            _pg: pg,
        };
        let out = c.wharf(&["user", "add", "acme", "--password-stdin"], Some(PW));
        assert!(out.status.success(), "{out:?}");
        c
    }

    fn port(&self, name: &str) -> u16 {
        self.lb[name].parse().unwrap()
    }

    /// The CLI with the cluster's shared settings.
    fn wharf(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write as _;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg("set -a; . \"$0/shared.env\"; set +a; exec \"$WHARF_BIN\" \"$@\"")
            .arg(&self.dir)
            .args(args)
            .env("WHARF_BIN", env!("CARGO_BIN_EXE_wharf"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            writeln!(input, "{s}").unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// `cluster.sh stop|kill|start K`.
    fn ctl(&self, what: &str, k: usize) {
        let out = Command::new(script())
            .args([what, &k.to_string()])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster.sh {what} {k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn instance_log(&self, k: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("wharf{k}/err"))).unwrap_or_default()
    }

    async fn object(&self, rel: &str) -> Option<Vec<u8>> {
        self.s3.get(&format!("{}{rel}", self.prefix)).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(&self.dir).output();
    }
}

/// Client loops uploading the same 20 MiB under fresh names through the balancer, each
/// noting whether it saw every upload succeed, until `finish`.
struct Clients {
    data: Arc<Vec<u8>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    outcomes: Arc<Mutex<Vec<(String, bool)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(c: &Cluster, n: usize) -> Clients {
        let data = Arc::new(random_bytes(20 << 20));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outcomes: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let port = c.port("LB_SFTP");
        let threads = (0..n)
            .map(|id| {
                let (data, stop, outcomes) = (data.clone(), stop.clone(), outcomes.clone());
                let cwd = c.dir.join(format!("client{id}"));
                std::thread::spawn(move || {
                    std::fs::create_dir_all(&cwd).unwrap();
                    std::fs::write(cwd.join("up.bin"), &*data).unwrap();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        let name = format!("c{id}-{n}.bin");
                        let batch = format!("put up.bin {name}\n");
                        let run = sftp(port, "acme", &Auth::Password(PW.into()), &cwd, &batch);
                        let ok = run.code == Some(0);
                        if !ok {
                            eprintln!("client {id}: {name} failed: {}", run.stderr.trim());
                        }
                        outcomes.lock().unwrap().push((name, ok));
                    }
                })
            })
            .collect();
        Clients {
            data,
            stop,
            outcomes,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Waits (up to 2 minutes) until the loops have made `n` uploads.
    async fn wait_for(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while self.count() < n && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the loops; returns every upload and how many the clients saw fail.
    fn finish(self) -> (Vec<(String, bool)>, usize, Arc<Vec<u8>>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
        (outcomes, failed, self.data)
    }
}

/// Every upload the clients saw succeed has its object and exactly one completed event
/// whose size and SHA-256 are the client's; one they saw fail is either absent or, if the
/// server had committed it before the connection broke, announced like any other: nothing is
/// half-visible. A few objects are also read back byte for byte.
async fn check_outcomes(c: &Cluster, hook: &Receiver, outcomes: &[(String, bool)], data: &[u8]) {
    let want = hex::encode(Sha256::digest(data));
    let events = |hook: &Receiver, path: &str| -> Vec<serde_json::Value> {
        hook.accepted()
            .iter()
            .map(|r| r.json())
            .filter(|e| e["type"] == "wharf.upload.completed" && e["subject"] == path)
            .collect()
    };
    let stored: std::collections::HashSet<String> =
        c.s3.keys(&format!("{}acme/", c.prefix))
            .await
            .into_iter()
            .collect();
    for (i, (name, ok)) in outcomes.iter().enumerate() {
        let path = format!("/{name}");
        let present = stored.contains(&format!("{}acme/{name}", c.prefix));
        if !*ok && !present {
            continue;
        }
        assert!(present, "{name}: acknowledged but not stored");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while events(hook, &path).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} (client saw {ok}) has no completed event"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let e = events(hook, &path);
        assert_eq!(e.len(), 1, "{name}: events {e:?}");
        assert_eq!(e[0]["data"]["sha256"], want.as_str(), "{name}");
        assert_eq!(e[0]["data"]["bytes"], data.len(), "{name}");
        if i % 50 == 0 {
            let object = c.object(&format!("acme/{name}")).await.unwrap();
            assert_eq!(hex::encode(Sha256::digest(&object)), want, "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_behind_haproxy_fails_no_upload() {
    let hook = Receiver::start().await;
    let c = Cluster::up(3, &hook, &[]).await;
    let clients = Clients::start(&c, 3);
    for k in 1..=3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // SIGTERM, and back only after several seconds, as a replaced host or container.
        c.ctl("stop", k);
        tokio::time::sleep(Duration::from_secs(6)).await;
        c.ctl("start", k);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (outcomes, failed, data) = clients.finish();
    eprintln!(
        "rolling restart: {} uploads, {failed} failed",
        outcomes.len()
    );
    assert!(
        outcomes.len() >= 20,
        "too few uploads to mean anything: {}",
        outcomes.len()
    );
    check_outcomes(&c, &hook, &outcomes, &data).await;
    // Every instance drained: said so, and cut nobody.
    let mut warnings = String::new();
    for k in 1..=3 {
        let log = c.instance_log(k);
        assert!(log.contains("draining"), "instance {k}: {log}");
        for l in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            warnings.push_str(&format!("instance {k}: {l}\n"));
        }
    }
    assert_eq!(
        failed, 0,
        "uploads failed during the rolling restart; the instances warned:\n{warnings}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_an_instance_behind_haproxy_loses_no_acknowledged_upload() {
    let hook = Receiver::start().await;
    let c = Cluster::up(
        2,
        &hook,
        &[
            ("WHARF_RECOVERY__HEARTBEAT", "1s"),
            ("WHARF_RECOVERY__INTERVAL", "1s"),
            // An upload killed between CreateMultipartUpload and the row that tracks it is
            // found by the sweep for untracked ones, once this old.
            ("WHARF_RECOVERY__ORPHAN_GRACE", "5s"),
        ],
    )
    .await;
    let clients = Clients::start(&c, 3);
    // Kill once uploads are going, and go on until the survivor has taken several more.
    clients.wait_for(3).await;
    c.ctl("kill", 1);
    let before = clients.count();
    clients.wait_for(before + 6).await;
    let (outcomes, failed, data) = clients.finish();
    eprintln!("kill -9: {} uploads, {failed} failed", outcomes.len());
    let after_kill = outcomes[before..].iter().filter(|(_, ok)| *ok).count();
    assert!(
        after_kill >= 3,
        "the survivor took {after_kill} uploads: {outcomes:?}"
    );
    check_outcomes(&c, &hook, &outcomes, &data).await;
    // The dead instance's multipart uploads are aborted by the survivor: tracked ones once
    // the instance is dead, untracked ones after recovery.orphan_grace.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while !c.s3.open_multipart_uploads(&c.prefix).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "multipart uploads left open: {:?}",
            c.s3.open_multipart_uploads(&c.prefix).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ftps_behind_haproxy_reaches_the_instance_that_answered_pasv() {
    let hook = Receiver::start().await;
    let c = Cluster::up(2, &hook, &[]).await;
    let dir = c.dir.join("ftps-client");
    std::fs::create_dir_all(&dir).unwrap();
    let data = random_bytes((3 << 20) + 17);
    std::fs::write(dir.join("r.bin"), &data).unwrap();
    let mut names = Vec::new();
    for i in 0..20 {
        let name = format!("f{i}.bin");
        // Explicit TLS (AUTH TLS, PROT P) and implicit TLS, in turn; curl resumes the TLS
        // session on the data connection, as the instances require.
        let url = if i % 2 == 0 {
            format!("ftp://127.0.0.1:{}/{name}", c.port("LB_FTPS"))
        } else {
            format!("ftps://127.0.0.1:{}/{name}", c.port("LB_FTPS_IMPLICIT"))
        };
        let out = Command::new("curl")
            .current_dir(&dir)
            .args(["-sS", "--insecure", "--max-time", "60", "--ssl-reqd"])
            .args(["--user", &format!("acme:{PW}"), "-T", "r.bin", &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "upload {i}: {out:?}");
        names.push((name, true));
    }
    check_outcomes(&c, &hook, &names, &data).await;
    // Both instances took uploads: the balancer spread them, and each data connection went
    // to the instance whose passive range the PASV reply named.
    for k in 1..=2 {
        let url = format!("http://{}.{k}:9464/metrics", c.lb["CLUSTER_NET"]);
        let out = Command::new("curl").args(["-sS", &url]).output().unwrap();
        let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
        let served: u64 = metrics
            .lines()
            .find(|l| l.starts_with("wharf_uploads_total{protocol=\"ftps\",outcome=\"completed\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(served > 0, "instance {k} served no FTPS upload: {metrics}");
    }
}
