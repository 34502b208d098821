//! A gateway under test: `wharf serve` on S3 (garage) under a fresh prefix, with user `acme`.

use crate::harness::{sftp, Auth, PgDb, S3Env, Server, SftpRun, Wharf};

pub const PW: &str = "Settlement-Reports-2026";

/// A gateway on S3 under a fresh prefix, with user `acme` (password PW) and optionally
/// accounts in Postgres.
pub struct Gateway {
    pub w: Wharf,
    pub server: Server,
    pub s3: S3Env,
    pub prefix: String,
    pub _pg: Option<PgDb>,
}

impl Gateway {
    pub async fn start(postgres: bool, extra_env: &[(&str, &str)]) -> Gateway {
        let s3 = S3Env::from_env();
        let prefix = S3Env::fresh_prefix();
        let mut w = Wharf::embedded();
        for (k, v) in s3.wharf_env(&format!("s3://{}/{prefix}", s3.bucket)) {
            w = w.with_env(&k, &v);
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
            _pg: pg,
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
