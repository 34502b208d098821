//! Arbitrary client bytes through wharf's SFTP framing and russh-sftp's request decoding:
//! never a panic or a hang, never a frame over the cap handed on, every reply well framed.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAP: u32 = 4096;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    RT.block_on(async move {
        let (client, server_side) = tokio::io::duplex(64 * 1024);
        let (mut replies, mut client) = tokio::io::split(client);
        let mut sftp = wharf::sftp::framing::capped(server_side, CAP, |_| {});
        // Read what the framing answers by itself (OP_UNSUPPORTED for unknown types).
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = replies.read_to_end(&mut sink).await;
        });
        let work = async {
            client.write_all(&data).await.ok();
            client.shutdown().await.ok();
            // What russh-sftp would be handed: whole frames, each within the cap.
            let mut frames = 0;
            while let Ok(len) = sftp.read_u32().await {
                assert!(len > 0 && len <= CAP, "frame of {len} bytes handed on");
                let mut body = vec![0u8; len as usize];
                if sftp.read_exact(&mut body).await.is_err() {
                    break;
                }
                let mut b = Bytes::from(body);
                let _ = russh_sftp::protocol::Packet::try_from(&mut b);
                frames += 1;
                if frames > 10_000 {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .expect("framing hung on a finished input");
        drop(sftp);
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    });
});
