//! The S3-compatible test server (garage, started by scripts/test.sh) and a client to check
//! what wharf stored there.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::Client;

/// Where the test S3 server is; each test works under a prefix of its own.
#[derive(Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub client: Client,
}

impl S3Env {
    pub fn from_env() -> S3Env {
        let get = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: run the tests with scripts/test.sh, which starts a garage S3 \
                     server, or set WHARF_TEST_S3_ENDPOINT/_REGION/_BUCKET and AWS_ACCESS_KEY_ID/\
                     AWS_SECRET_ACCESS_KEY for one of your own"
                )
            })
        };
        let endpoint = get("WHARF_TEST_S3_ENDPOINT");
        let region = get("WHARF_TEST_S3_REGION");
        let bucket = get("WHARF_TEST_S3_BUCKET");
        let access_key = get("AWS_ACCESS_KEY_ID");
        let secret_key = get("AWS_SECRET_ACCESS_KEY");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &access_key,
                &secret_key,
                None,
                None,
                "test",
            ))
            .build();
        S3Env {
            client: Client::from_conf(conf),
            endpoint,
            region,
            bucket,
            access_key,
            secret_key,
        }
    }

    /// A fresh prefix for one test: `t-<uuid>/`.
    pub fn fresh_prefix() -> String {
        format!("t-{}/", uuid::Uuid::now_v7().simple())
    }

    /// Environment that points wharf at this server.
    pub fn wharf_env(&self, default_home: &str) -> Vec<(String, String)> {
        vec![
            ("WHARF_STORAGE__DEFAULT_HOME".into(), default_home.into()),
            ("WHARF_STORAGE__S3__ENDPOINT".into(), self.endpoint.clone()),
            ("WHARF_STORAGE__S3__REGION".into(), self.region.clone()),
            ("WHARF_STORAGE__S3__FORCE_PATH_STYLE".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
        ]
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list objects");
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        out
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let o = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(o.body.collect().await.expect("object body").to_vec())
    }

    /// Multipart uploads still open under `prefix` (there must be none after any upload ends).
    pub async fn open_multipart_uploads(&self, prefix: &str) -> Vec<String> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list multipart uploads");
        out.uploads()
            .iter()
            .filter_map(|u| u.key().map(String::from))
            .collect()
    }
}
