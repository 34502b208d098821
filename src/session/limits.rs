//! Admission of new connections, shared by every protocol's listener: caps on concurrent
//! connections in total and per client address (`sftp.max_sessions`,
//! `sftp.max_sessions_per_ip`), and the PROXY protocol header that names the client when
//! `security.proxy_protocol` is on (`Gate`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

use super::proxy;

pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    active: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection counted against the limits until dropped; counted per address once its
/// client address is known.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            active: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, &'static str> {
        let mut g = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= self.max_total {
            return Err("max_sessions reached");
        }
        let n = g.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err("max_sessions_per_ip reached");
        }
        *n += 1;
        g.0 += 1;
        Ok(Admitted {
            limits: self.clone(),
            ip: Some(ip),
        })
    }

    /// Admits a connection whose client address is not known yet (a PROXY header is still to
    /// come): counted in the total only, until `Admitted::assign`.
    fn try_admit_unnamed(self: &Arc<Self>) -> Result<Admitted, &'static str> {
        let mut g = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= self.max_total {
            return Err("max_sessions reached");
        }
        g.0 += 1;
        Ok(Admitted {
            limits: self.clone(),
            ip: None,
        })
    }
}

impl Admitted {
    /// Counts this connection against `ip`'s limit, or says that limit refuses it.
    fn assign(&mut self, ip: IpAddr) -> Result<(), &'static str> {
        if self.ip.is_some() {
            return Ok(());
        }
        let mut g = self.limits.active.lock().unwrap_or_else(|e| e.into_inner());
        let n = g.1.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_ip {
            return Err("max_sessions_per_ip reached");
        }
        *n += 1;
        self.ip = Some(ip);
        Ok(())
    }
}

/// Where every listener's connections come in: the limits, and the PROXY header read when
/// `security.proxy_protocol` is on.
pub struct Gate {
    limits: Arc<ConnectionLimits>,
    proxy_protocol: bool,
    /// Peers whose PROXY headers are believed (`security.proxy_trusted`).
    proxy_trusted: Vec<ipnet::IpNet>,
    header_timeout: Duration,
}

impl Gate {
    /// `header_timeout` bounds the wait for a PROXY header (the listeners pass `login_timeout`).
    pub fn new(
        limits: Arc<ConnectionLimits>,
        proxy_protocol: bool,
        proxy_trusted: Vec<ipnet::IpNet>,
        header_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Gate {
            limits,
            proxy_protocol,
            proxy_trusted,
            header_timeout,
        })
    }

    /// Called in the accept loop: counts the connection from `peer`, or says why not. Behind a
    /// PROXY-protocol balancer `peer` is the balancer, so only the total counts here.
    pub fn admit(&self, peer: SocketAddr) -> Result<Admitted, &'static str> {
        if self.proxy_protocol {
            self.limits.try_admit_unnamed()
        } else {
            self.limits.try_admit(peer.ip())
        }
    }

    /// Called in the connection's own task before anything else is read: the client's address
    /// (from the PROXY header when enabled, else `peer`), counted against its own limit. An
    /// error is why the connection must be closed.
    pub async fn client(
        &self,
        sock: &mut TcpStream,
        peer: SocketAddr,
        admitted: &mut Admitted,
    ) -> Result<SocketAddr, String> {
        if !self.proxy_protocol {
            return Ok(peer);
        }
        // Only a balancer may name the client: anyone else could claim any address (and so
        // pass allow-lists, escape bans, forge client_ip in events).
        let peer_ip = peer.ip().to_canonical();
        if !self.proxy_trusted.iter().any(|n| n.contains(&peer_ip)) {
            return Err(format!(
                "{peer_ip} is not in security.proxy_trusted; only load balancers may connect"
            ));
        }
        let client = match tokio::time::timeout(self.header_timeout, proxy::read_header(sock)).await
        {
            Err(_) => return Err("no PROXY protocol header before login_timeout".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(named)) => named.unwrap_or(peer),
        };
        admitted.assign(client.ip())?;
        Ok(client)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut g = self.limits.active.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = g.1.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    g.1.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionLimits;

    #[test]
    fn counts_per_address_and_in_total_until_dropped() {
        let l = ConnectionLimits::new(3, 2);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = l.try_admit(a).unwrap();
        let _a2 = l.try_admit(a).unwrap();
        assert_eq!(l.try_admit(a).err(), Some("max_sessions_per_ip reached"));
        let _b1 = l.try_admit(b).unwrap();
        assert_eq!(l.try_admit(b).err(), Some("max_sessions reached"));
        drop(a1);
        assert!(l.try_admit(b).is_ok());
    }

    #[test]
    fn unnamed_connections_count_in_total_then_per_address() {
        let l = ConnectionLimits::new(3, 1);
        let a = "10.0.0.1".parse().unwrap();
        let mut u1 = l.try_admit_unnamed().unwrap();
        let mut u2 = l.try_admit_unnamed().unwrap();
        u1.assign(a).unwrap();
        assert_eq!(u2.assign(a).err(), Some("max_sessions_per_ip reached"));
        let _u3 = l.try_admit_unnamed().unwrap();
        assert_eq!(l.try_admit_unnamed().err(), Some("max_sessions reached"));
        drop(u1);
        drop(u2);
        assert!(l.try_admit(a).is_ok());
    }
}
