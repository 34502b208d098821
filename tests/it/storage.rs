//! The storage `Backend` contract, one body run against S3 (garage) and a local directory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wharf::config::{ByteSize, S3Config};
use wharf::storage::{Backend, ErrorKind, Home, S3Storage, Storage};

use crate::harness::S3Env;

async fn contract(b: Arc<dyn Backend>, settled: impl AsyncFn() -> Vec<String>) {
    // Nothing is visible while an upload runs; commit publishes it whole.
    let mut up = b
        .begin_upload("in/report.csv", wharf::storage::UploadContext::untracked())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"id,amount\n")).await.unwrap();
    assert_eq!(
        b.stat("in/report.csv").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    up.write(Bytes::from_static(b"1,10.00\n")).await.unwrap();
    let stored = up.commit().await.unwrap();
    assert_eq!(stored.bytes, 18);
    assert_eq!(
        stored.sha256,
        hex::encode(Sha256::digest(b"id,amount\n1,10.00\n"))
    );
    assert!(
        stored.location.uri.ends_with("in/report.csv"),
        "{:?}",
        stored.location
    );
    let m = b.stat("in/report.csv").await.unwrap();
    assert!(!m.is_dir && m.size == 18);
    assert!(b.stat("in").await.unwrap().is_dir);
    assert!(b.stat("").await.unwrap().is_dir);
    assert_eq!(&b.read("in/report.csv", 3, 6).await.unwrap()[..], b"amount");
    assert!(b.read("in/report.csv", 18, 10).await.unwrap().is_empty());

    // Large uploads cross part boundaries in uneven chunks and stay byte-exact.
    let big: Vec<u8> = (0..(11u32 << 20) + 777).map(|i| (i % 251) as u8).collect();
    let mut up = b
        .begin_upload("big.bin", wharf::storage::UploadContext::untracked())
        .await
        .unwrap();
    for chunk in big.chunks(255 * 1024 + 3) {
        up.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let stored = up.commit().await.unwrap();
    assert_eq!(stored.sha256, hex::encode(Sha256::digest(&big)));
    assert_eq!(b.stat("big.bin").await.unwrap().size, big.len() as u64);
    let mid = b.read("big.bin", 6 << 20, 1000).await.unwrap();
    assert_eq!(&mid[..], &big[6 << 20..(6 << 20) + 1000]);

    // Abort and drop leave nothing behind, even after parts were sent.
    let mut up = b
        .begin_upload("aborted.bin", wharf::storage::UploadContext::untracked())
        .await
        .unwrap();
    up.write(Bytes::from(big.clone())).await.unwrap();
    up.abort().await;
    let mut up = b
        .begin_upload("dropped.bin", wharf::storage::UploadContext::untracked())
        .await
        .unwrap();
    up.write(Bytes::from(big.clone())).await.unwrap();
    drop(up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in ["aborted.bin", "dropped.bin"] {
        assert_eq!(
            b.stat(p).await.unwrap_err().kind,
            ErrorKind::NotFound,
            "{p}"
        );
    }

    // Listing: files and directories, sorted; hidden in-progress files never appear.
    let _in_progress = b
        .begin_upload("in/partial.csv", wharf::storage::UploadContext::untracked())
        .await
        .unwrap();
    b.mkdir("empty").await.unwrap();
    assert_eq!(
        b.mkdir("empty").await.unwrap_err().kind,
        ErrorKind::AlreadyExists
    );
    let names: Vec<(String, bool)> = b
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.meta.is_dir))
        .collect();
    assert_eq!(
        names,
        [
            ("big.bin".to_string(), false),
            ("empty".to_string(), true),
            ("in".to_string(), true)
        ]
    );
    let inner: Vec<String> = b
        .list("in")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(inner, ["report.csv"]);
    assert!(b.list("empty").await.unwrap().is_empty());
    assert_eq!(b.list("nope").await.unwrap_err().kind, ErrorKind::NotFound);
    drop(_in_progress);

    // Rename replaces a file; the source is gone.
    let mut up = b
        .begin_upload("in/other.csv", wharf::storage::UploadContext::untracked())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"other")).await.unwrap();
    up.commit().await.unwrap();
    b.rename("in/report.csv", "in/other.csv", &Default::default())
        .await
        .unwrap();
    assert_eq!(
        b.stat("in/report.csv").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(b.stat("in/other.csv").await.unwrap().size, 18);
    assert_eq!(
        b.rename("nope", "x", &Default::default())
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );

    // rmdir only when empty; delete only files.
    assert_eq!(b.rmdir("in").await.unwrap_err().kind, ErrorKind::NotEmpty);
    b.rmdir("empty").await.unwrap();
    assert_eq!(
        b.rmdir("empty").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        b.delete("in").await.unwrap_err().kind,
        ErrorKind::IsDirectory
    );
    b.delete("in/other.csv").await.unwrap();
    assert_eq!(
        b.delete("in/other.csv").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    b.delete("big.bin").await.unwrap();

    assert!(
        settled().await.is_empty(),
        "left behind: {:?}",
        settled().await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_backend_meets_the_contract() {
    let env = S3Env::from_env();
    let cfg = S3Config {
        endpoint: env.endpoint.clone(),
        region: env.region.clone(),
        force_path_style: true,
        part_size: ByteSize(5 << 20),
        max_inflight_parts: 2,
        ..S3Config::default()
    };
    let storage = Storage::new(S3Storage::new(&cfg, 64 << 20).await);
    let prefix = S3Env::fresh_prefix();
    let home = Home::parse_uri(&format!("s3://{}/{prefix}", env.bucket)).unwrap();
    let backend = storage.backend(&home);
    contract(backend, async || {
        let mut left = env.keys(&prefix).await;
        left.extend(env.open_multipart_uploads(&prefix).await);
        left
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn local_backend_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let storage = Storage::new(S3Storage::new(&S3Config::default(), 1 << 20).await);
    let backend = storage.backend(&Home::Local { dir: root.clone() });
    contract(backend, async || walk(&root)).await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
                // Directories left by uploads (in/) are fine; files are not.
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
