//! PROXY protocol v1 and v2 (`security.proxy_protocol`): reads the header a TCP load balancer
//! sends first, so the client's own address is the one used for bans, allow-lists, limits,
//! logs and events. Framing is read byte-exact (nothing after the header is consumed); the
//! header itself is parsed by the `ppp` crate.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Longest v2 address block + TLVs accepted. Load balancers send a few dozen bytes of TLVs
/// (AWS adds a VPC endpoint id); the protocol allows 64 KiB, which nobody needs.
const V2_MAX_PAYLOAD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one PROXY header from `sock` and returns the client address it names. `Ok(None)` is a
/// header that names nobody (v1 `UNKNOWN`, v2 `LOCAL`: the balancer's own health checks); the
/// connection's own peer is the client then.
pub async fn read_header<S: AsyncRead + Unpin>(
    sock: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    // 15 bytes tell v1 from v2 and are never more than a header: "PROXY UNKNOWN\r\n" is the
    // shortest one there is.
    let mut buf = vec![0u8; 15];
    sock.read_exact(&mut buf).await.map_err(eof_is_missing)?;
    if buf[..12] == V2_SIGNATURE {
        buf.resize(16, 0);
        sock.read_exact(&mut buf[15..]).await?;
        if buf[12] >> 4 != 2 {
            return Err(ProxyError::Malformed(format!(
                "version {} in a v2 signature",
                buf[12] >> 4
            )));
        }
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyError::Malformed(format!(
                "{len}-byte v2 payload (at most {V2_MAX_PAYLOAD})"
            )));
        }
        buf.resize(16 + len, 0);
        sock.read_exact(&mut buf[16..]).await?;
        let h = ppp::v2::Header::try_from(&buf[..])
            .map_err(|e| ProxyError::Malformed(e.to_string()))?;
        return Ok(match h.command {
            ppp::v2::Command::Local => None,
            ppp::v2::Command::Proxy => match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                // A proxied connection must say who it is for.
                other => {
                    return Err(ProxyError::Malformed(format!(
                        "v2 PROXY without an IP source ({other:?})"
                    )))
                }
            },
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Malformed(format!(
                "v1 header longer than {V1_MAX} bytes"
            )));
        }
        buf.push(sock.read_u8().await?);
    }
    let text = std::str::from_utf8(&buf)
        .map_err(|_| ProxyError::Malformed("v1 header is not text".into()))?;
    let h = ppp::v1::Header::try_from(text).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match h.addresses {
        ppp::v1::Addresses::Unknown => None,
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
    })
}

fn eof_is_missing(e: std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProxyError::Missing
    } else {
        ProxyError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::{read_header, ProxyError};
    use std::net::SocketAddr;

    async fn parse(input: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut r = input;
        let res = read_header(&mut r).await;
        (res, r.to_vec())
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = super::V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6_leave_the_rest_unread() {
        let (r, rest) = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 22\r\nSSH-2.0-x\r\n").await;
        assert_eq!(r.unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(rest, b"SSH-2.0-x\r\n");
        let (r, rest) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 990\r\n").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::7]:4000".parse().unwrap()));
        assert!(rest.is_empty());
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_proxy_and_local() {
        let mut addrs = vec![198, 51, 100, 9, 10, 0, 0, 1];
        addrs.extend_from_slice(&4444u16.to_be_bytes());
        addrs.extend_from_slice(&22u16.to_be_bytes());
        // A TLV after the addresses (type 0x04 NOOP, 2 bytes) is skipped.
        addrs.extend_from_slice(&[0x04, 0, 2, 0, 0]);
        let mut input = v2(1, 0x11, &addrs);
        input.extend_from_slice(b"after");
        let (r, rest) = parse(&input).await;
        assert_eq!(r.unwrap(), Some("198.51.100.9:4444".parse().unwrap()));
        assert_eq!(rest, b"after");
        let (r, _) = parse(&v2(0, 0x00, &[])).await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_header() {
        let (r, _) = parse(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        assert!(matches!(r, Err(ProxyError::Missing)), "{r:?}");
        let (r, _) = parse(b"short").await;
        assert!(matches!(r, Err(ProxyError::Missing)), "{r:?}");
        let (r, _) = parse(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n").await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{r:?}");
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (r, _) = parse(long.as_bytes()).await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{r:?}");
        let (r, _) = parse(&v2(1, 0x11, &[0u8; 2000])).await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{r:?}");
        // PROXY with no address family names nobody: refused, not waved through.
        let (r, _) = parse(&v2(1, 0x00, &[])).await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{r:?}");
    }
}
