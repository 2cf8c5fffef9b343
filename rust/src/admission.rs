//! Admission: whether a client may connect at all, before any backend is touched.
//!
//! The same rules as Python's `balancer.service.admission`, which the Python relay uses: an
//! allow and a deny list of networks, a cap on open connections per client address, a token
//! bucket on new connections per second per address, and a tighter bucket for the addresses
//! passive health named as causing most of a backend's failures (`suspect`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::engine::Term;

/// Client addresses with a bucket, past which the full buckets are dropped.
pub const MAX_BUCKETS: usize = 100_000;

/// A network of an allow or deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Net {
    /// Whether `ip` is in it (never across address families, as Python's `ipaddress`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A service's limits (from its config's `[limits]`; 0 turns one off).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub allow: Vec<Net>,
    pub deny: Vec<Net>,
    pub client_max_connections: u32,
    pub client_rate: f64,
    pub client_burst: f64,
    pub suspect_rate: f64,
    /// The refusals' details, worded by Python as its own relay words them.
    pub rate_detail: String,
    pub suspect_detail: String,
    /// Clients that may wait for a backend at its max_connections, and for how long.
    pub queue_size: usize,
    pub queue_timeout: std::time::Duration,
}

impl Limits {
    /// Whether any rule applies: if not, nothing is counted.
    pub fn any(&self) -> bool {
        !self.allow.is_empty()
            || !self.deny.is_empty()
            || self.client_max_connections > 0
            || self.client_rate > 0.0
            || self.suspect_rate > 0.0
    }
}

/// The admission state of one service (carried over a reload, as the limits change).
#[derive(Debug, Default)]
pub struct Admission {
    per_client: HashMap<IpAddr, u32>,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// Until when, tokens, and when last taken (None: never).
    suspects: HashMap<IpAddr, (Instant, f64, Option<Instant>)>,
}

impl Admission {
    /// Ok if a client at `ip` may go on (it is then counted until `left`), else why not.
    pub fn check(
        &mut self,
        limits: &Limits,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), (Term, String)> {
        if !limits.allow.is_empty() || !limits.deny.is_empty() {
            let allowed = limits.allow.is_empty() || limits.allow.iter().any(|n| n.contains(ip));
            if !allowed || limits.deny.iter().any(|n| n.contains(ip)) {
                return Err((Term::Denied, "address not allowed".into()));
            }
        }
        if !self.suspects.is_empty() && !self.suspect_may(limits, ip, now) {
            return Err((Term::RateLimited, limits.suspect_detail.clone()));
        }
        let open = self.per_client.get(&ip).copied().unwrap_or(0);
        if limits.client_max_connections > 0 && open >= limits.client_max_connections {
            return Err((
                Term::ClientLimit,
                format!("{} connections already open", limits.client_max_connections),
            ));
        }
        if limits.client_rate > 0.0 && !self.take_token(limits, ip, now) {
            return Err((Term::RateLimited, limits.rate_detail.clone()));
        }
        *self.per_client.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// A client that `check` let in has closed.
    pub fn left(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_client.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&ip);
            }
        }
    }

    /// Hold `ip` to `suspect_rate` new connections per second until `until`.
    pub fn suspect(&mut self, limits: &Limits, ip: IpAddr, until: Instant) {
        if limits.suspect_rate > 0.0
            && (self.suspects.contains_key(&ip) || self.suspects.len() < MAX_BUCKETS)
        {
            self.suspects
                .insert(ip, (until, limits.suspect_rate.max(1.0), None));
        }
    }

    fn suspect_may(&mut self, limits: &Limits, ip: IpAddr, now: Instant) -> bool {
        let Some(&(until, tokens, last)) = self.suspects.get(&ip) else {
            return true;
        };
        let rate = limits.suspect_rate;
        if now >= until || rate <= 0.0 {
            self.suspects.remove(&ip);
            return true;
        }
        let refilled = match last {
            Some(last) => tokens + now.saturating_duration_since(last).as_secs_f64() * rate,
            None => tokens,
        };
        let tokens = refilled.min(rate.max(1.0));
        if tokens < 1.0 {
            self.suspects.insert(ip, (until, tokens, Some(now)));
            return false;
        }
        self.suspects.insert(ip, (until, tokens - 1.0, Some(now)));
        true
    }

    /// A token bucket per client address: `client_rate` per second, `client_burst` deep.
    fn take_token(&mut self, limits: &Limits, ip: IpAddr, now: Instant) -> bool {
        let burst = limits.client_burst;
        let (tokens, last) = self.buckets.get(&ip).copied().unwrap_or((burst, now));
        let tokens = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * limits.client_rate)
            .min(burst);
        if self.buckets.len() > MAX_BUCKETS {
            // Forget the buckets that have filled up again: they hold nothing a new one would not.
            let refill = burst / limits.client_rate;
            self.buckets
                .retain(|_, (_, when)| now.saturating_duration_since(*when).as_secs_f64() < refill);
        }
        let taken = tokens >= 1.0;
        self.buckets
            .insert(ip, (if taken { tokens - 1.0 } else { tokens }, now));
        taken
    }

    /// Addresses with open connections counted (for tests).
    pub fn counted(&self, ip: IpAddr) -> u32 {
        self.per_client.get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str, prefix: u8) -> Net {
        Net {
            address: ip(text),
            prefix,
        }
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        assert!(net("10.0.0.0", 8).contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0", 8).contains(ip("11.0.0.1")));
        assert!(net("0.0.0.0", 0).contains(ip("192.0.2.1")));
        assert!(net("::1", 128).contains(ip("::1")));
        assert!(!net("::1", 128).contains(ip("127.0.0.1")));
        assert!(net("2001:db8::", 32).contains(ip("2001:db8:ffff::1")));
    }

    #[test]
    fn allow_and_deny() {
        let limits = Limits {
            allow: vec![net("127.0.0.0", 8)],
            deny: vec![net("127.0.0.2", 32)],
            ..Default::default()
        };
        let mut a = Admission::default();
        let now = Instant::now();
        assert!(a.check(&limits, ip("127.0.0.1"), now).is_ok());
        assert_eq!(
            a.check(&limits, ip("127.0.0.2"), now).unwrap_err().0,
            Term::Denied
        );
        assert_eq!(
            a.check(&limits, ip("10.0.0.1"), now).unwrap_err().0,
            Term::Denied
        );
    }

    #[test]
    fn open_connections_per_client() {
        let limits = Limits {
            client_max_connections: 2,
            ..Default::default()
        };
        let mut a = Admission::default();
        let now = Instant::now();
        let me = ip("127.0.0.1");
        assert!(a.check(&limits, me, now).is_ok());
        assert!(a.check(&limits, me, now).is_ok());
        let (term, detail) = a.check(&limits, me, now).unwrap_err();
        assert_eq!(
            (term, detail.as_str()),
            (Term::ClientLimit, "2 connections already open")
        );
        assert!(a.check(&limits, ip("127.0.0.9"), now).is_ok());
        a.left(me);
        assert!(a.check(&limits, me, now).is_ok());
        a.left(me);
        a.left(me);
        assert_eq!(a.counted(me), 0);
    }

    #[test]
    fn a_bucket_per_client() {
        let limits = Limits {
            client_rate: 10.0,
            client_burst: 3.0,
            rate_detail: "over 10 connections/s".into(),
            ..Default::default()
        };
        let mut a = Admission::default();
        let start = Instant::now();
        let me = ip("127.0.0.1");
        for _ in 0..3 {
            assert!(a.check(&limits, me, start).is_ok());
        }
        assert_eq!(
            a.check(&limits, me, start).unwrap_err().0,
            Term::RateLimited
        );
        // 100 ms later: one more token.
        let later = start + Duration::from_millis(101);
        assert!(a.check(&limits, me, later).is_ok());
        assert!(a.check(&limits, me, later).is_err());
    }

    #[test]
    fn a_suspect_is_held_to_its_rate_until_the_window_ends() {
        let limits = Limits {
            suspect_rate: 2.0,
            suspect_detail: "suspect".into(),
            ..Default::default()
        };
        let mut a = Admission::default();
        let start = Instant::now();
        let me = ip("127.0.0.1");
        a.suspect(&limits, me, start + Duration::from_secs(10));
        assert!(a.check(&limits, me, start).is_ok());
        assert!(a.check(&limits, me, start).is_ok());
        assert_eq!(
            a.check(&limits, me, start).unwrap_err().0,
            Term::RateLimited
        );
        assert!(a.check(&limits, ip("127.0.0.2"), start).is_ok());
        assert!(
            a.check(&limits, me, start + Duration::from_secs(11))
                .is_ok()
        );
    }
}
