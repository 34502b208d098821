//! Caps on concurrent connections, in total and per client address, shared by every
//! protocol's listener (`sftp.max_sessions`, `sftp.max_sessions_per_ip`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    active: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection counted against the limits until dropped.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
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
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut g = self.limits.active.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
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
}
