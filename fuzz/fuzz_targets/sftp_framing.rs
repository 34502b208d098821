//! Arbitrary client bytes through wharf's SFTP framing and request decoding (wharf's own for
//! writes, russh-sftp's for the rest): never a panic or a hang, never a packet over the cap
//! read, a write's data always exactly what its length said and inside its packet.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use wharf::sftp::dispatch::{decode, Request};
use wharf::sftp::framing::read_packet;

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
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let feed = tokio::spawn(async move {
            client.write_all(&data).await.ok();
            client.shutdown().await.ok();
        });
        let work = async {
            let mut packets = 0;
            while let Ok(Some(body)) = read_packet(&mut server, CAP).await {
                assert!(
                    !body.is_empty() && body.len() <= CAP as usize,
                    "packet of {} bytes read",
                    body.len()
                );
                let whole = body.clone();
                if let Request::Write(w) = decode(body) {
                    // The data follows its length field, is exactly that long, and lies
                    // inside the packet (bytes after it are ignored, as OpenSSH does).
                    let at = 1 + 4 + 4 + w.handle.len() + 8;
                    let declared = u32::from_be_bytes(whole[at..at + 4].try_into().unwrap());
                    assert_eq!(declared as usize, w.data.len());
                    assert_eq!(&whole[at + 4..at + 4 + w.data.len()], &w.data[..]);
                }
                packets += 1;
                if packets > 10_000 {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .expect("framing hung on a finished input");
        let _ = feed.await;
    });
});
