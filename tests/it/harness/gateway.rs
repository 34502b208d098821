//! A gateway under test: `wharf serve` on S3 (garage) under a fresh prefix, or on a local
//! directory, with user `acme`.

use crate::harness::{sftp, Auth, PgDb, S3Env, Server, SftpRun, Wharf};

pub const PW: &str = "Settlement-Reports-2026";

/// A gateway on S3 under a fresh prefix, with user `acme` (password PW) and optionally
/// accounts in Postgres.
pub struct Gateway {
    pub w: Wharf,
    pub server: Server,
    pub s3: S3Env,
    pub prefix: String,
    /// Files under the working directory's `data/` instead of S3.
    pub local: bool,
    pub _pg: Option<PgDb>,
}

impl Gateway {
    pub async fn start(postgres: bool, extra_env: &[(&str, &str)]) -> Gateway {
        Self::start_on(false, postgres, extra_env).await
    }

    /// `start` on S3 (`local` false) or on the embedded default's local `data/` directory.
    pub async fn start_on(local: bool, postgres: bool, extra_env: &[(&str, &str)]) -> Gateway {
        let s3 = S3Env::from_env();
        let prefix = S3Env::fresh_prefix();
        let mut w = Wharf::embedded();
        if !local {
            for (k, v) in s3.wharf_env(&format!("s3://{}/{prefix}", s3.bucket)) {
                w = w.with_env(&k, &v);
            }
        }
        // Small parts so multi-part uploads stay quick to test.
        w = w.with_env("WHARF_STORAGE__S3__PART_SIZE", "5MiB");
        let pg = if postgres {
            let pg = PgDb::create().await;
            w = w.with_env("WHARF_DATABASE__URL", &pg.url);
            Some(pg)
        } else {
            None
        };
        for (k, v) in extra_env {
            w = w.with_env(k, v);
        }
        w.run_stdin(
            &["user", "add", "acme", "--password-stdin"],
            Some(&format!("{PW}\n")),
        )
        .ok();
        let server = Server::start(&w);
        Gateway {
            w,
            server,
            s3,
            prefix,
            local,
            _pg: pg,
        }
    }

    /// Starts the server again in the same directory (after a crash, say), with the
    /// variables named in `remove` left out and `add` added.
    pub fn restart(&mut self, remove: &[&str], add: &[(&str, &str)]) {
        self.w.env.retain(|(k, _)| !remove.contains(&k.as_str()));
        for (k, v) in add {
            self.w.env.retain(|(key, _)| key != k);
            self.w.env.push((k.to_string(), v.to_string()));
        }
        self.server = Server::start(&self.w);
    }

    /// Runs one statement on the server's database (its SQLite file, or its Postgres one).
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection as _;
        match &self._pg {
            Some(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
            None => {
                let url = format!("sqlite://{}", self.w.file("wharf.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
        }
    }

    /// Rows in one of the server's tables (its SQLite file, or its Postgres database).
    pub async fn count_rows(&self, table: &str) -> i64 {
        use sqlx::Connection as _;
        let q = format!("SELECT COUNT(*) FROM {table}");
        match &self._pg {
            Some(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                sqlx::query_scalar(&q).fetch_one(&mut c).await.unwrap()
            }
            None => {
                let url = format!("sqlite://{}", self.w.file("wharf.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(&q).fetch_one(&mut c).await.unwrap()
            }
        }
    }

    /// The content at `rel` below `storage.default_home` (any account's files, folders), if any.
    pub async fn object(&self, rel: &str) -> Option<Vec<u8>> {
        if self.local {
            std::fs::read(self.w.file("data").join(rel)).ok()
        } else {
            self.s3.get(&format!("{}{rel}", self.prefix)).await
        }
    }

    /// Waits up to 10 s for content at `rel` below `storage.default_home` (written by a
    /// background task: a receipt, say).
    pub async fn wait_object(&self, rel: &str) -> Option<Vec<u8>> {
        for _ in 0..100 {
            if let Some(data) = self.object(rel).await {
                return Some(data);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    }

    /// Writes `data` at `rel` below `storage.default_home`, as a pipeline would (not through
    /// wharf).
    pub async fn put_object(&self, rel: &str, data: &[u8]) {
        if self.local {
            let p = self.w.file("data").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        } else {
            self.s3
                .client
                .put_object()
                .bucket(&self.s3.bucket)
                .key(format!("{}{rel}", self.prefix))
                .body(aws_sdk_s3::primitives::ByteStream::from(data.to_vec()))
                .send()
                .await
                .unwrap();
        }
    }

    /// The content stored for `acme`'s file at `rel` (a path inside its home), if any.
    pub async fn stored(&self, rel: &str) -> Option<Vec<u8>> {
        if self.local {
            std::fs::read(self.w.file("data/acme").join(rel)).ok()
        } else {
            self.s3.get(&format!("{}acme/{rel}", self.prefix)).await
        }
    }

    /// Every file stored under `acme`'s home (relative paths), including temporary ones.
    pub async fn stored_files(&self) -> Vec<String> {
        if self.local {
            let root = self.w.file("data/acme");
            let mut out = Vec::new();
            let mut dirs = vec![root.clone()];
            while let Some(d) = dirs.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        dirs.push(p);
                    } else {
                        out.push(
                            p.strip_prefix(&root)
                                .unwrap()
                                .to_string_lossy()
                                .into_owned(),
                        );
                    }
                }
            }
            out.sort();
            out
        } else {
            let home = format!("{}acme/", self.prefix);
            let mut out: Vec<String> = self
                .s3
                .keys(&home)
                .await
                .into_iter()
                .filter_map(|k| k.strip_prefix(&home).map(String::from))
                .filter(|k| !k.ends_with('/'))
                .collect();
            out.sort();
            out
        }
    }

    /// The events the default `jsonl` sink (`events.jsonl`) has received so far.
    pub fn jsonl_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.w.file("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the `jsonl` sink's event of `type_` for `path` (`/in/x.csv`).
    pub async fn wait_jsonl_event(&self, type_: &str, path: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(e) = self
                .jsonl_events()
                .into_iter()
                .find(|e| e["type"] == type_ && e["data"]["path"] == path)
            {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {type_} event for {path}: {:#?}",
                self.jsonl_events()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Waits for the `jsonl` sink's event of `type_` whose subject is `subject`.
    pub async fn wait_jsonl_event_of(&self, type_: &str, subject: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(e) = self
                .jsonl_events()
                .into_iter()
                .find(|e| e["type"] == type_ && e["subject"] == subject)
            {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {type_} event for {subject}: {:#?}",
                self.jsonl_events()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn sftp(&self, user: &str, auth: &Auth, batch: &str) -> SftpRun {
        sftp(self.server.port(), user, auth, self.w.path(), batch)
    }

    pub fn acme(&self, batch: &str) -> SftpRun {
        self.sftp("acme", &Auth::Password(PW.into()), batch)
    }

    /// Gives `acme` every permission (the default has neither download nor delete).
    pub fn grant_acme_everything(&self) {
        let all = "list,upload,download,overwrite,delete,rename,mkdir";
        self.w
            .run(&["user", "set", "acme", "--permissions", all])
            .ok();
    }

    pub fn write_file(&self, name: &str, data: &[u8]) {
        std::fs::write(self.w.file(name), data).unwrap();
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}
