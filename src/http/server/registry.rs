//! The connection caps: how many connections are open, in total and per client address, and
//! which of them hold no request (half-open or idle), oldest first, to make room when full.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http::metrics::Metrics;

/// The unit a per-address cap counts: an IPv4 address, or the /64 an IPv6 address is in (one
/// host usually holds a whole /64, so capping single IPv6 addresses would cap nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.into()),
                None => Self::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection of the total cap is serving a request.
    Full,
    /// The client's address has as many connections as it may.
    PerAddress,
}

struct Slot {
    address: Option<AddressKey>,
    /// Since when the connection has held no request; `None` while it serves one.
    idle_since: Option<Instant>,
    evict: CancellationToken,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Slot>,
    per_address: HashMap<AddressKey, usize>,
    /// The connections holding no request, by the time they became so.
    idle: BTreeSet<(Instant, u64)>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.open.remove(&id)?;
        if let Some(since) = slot.idle_since {
            self.idle.remove(&(since, id));
        }
        if let Some(key) = slot.address {
            if let Some(n) = self.per_address.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&key);
                }
            }
        }
        Some(slot)
    }
}

pub struct Registry {
    max_total: usize,
    /// `None` when the peer address cannot be trusted to be the client's (behind proxies).
    max_per_address: Option<usize>,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(max_total: usize, max_per_address: Option<usize>, metrics: Arc<Metrics>) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_address: max_per_address.filter(|n| *n > 0),
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under this lock can panic halfway; a poisoned lock still holds valid counts.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer`, or says why not. At the total cap the connection that
    /// has held no request for longest (a half-open or idle one) is evicted to make room; only
    /// when every connection is serving a request is the new one refused.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let address = self.max_per_address.map(|_| AddressKey::from(peer));
        let mut inner = self.lock();
        if let (Some(key), Some(max)) = (address, self.max_per_address) {
            if inner.per_address.get(&key).copied().unwrap_or(0) >= max {
                return Err(Refusal::PerAddress);
            }
        }
        if inner.open.len() >= self.max_total {
            let Some(&(_, victim)) = inner.idle.first() else {
                return Err(Refusal::Full);
            };
            if let Some(slot) = inner.remove(victim) {
                slot.evict.cancel();
                self.metrics.http_connections_evicted.inc();
                self.metrics.http_connections.dec();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evict = CancellationToken::new();
        inner.open.insert(
            id,
            Slot {
                address,
                idle_since: Some(now),
                evict: evict.clone(),
            },
        );
        inner.idle.insert((now, id));
        if let Some(key) = address {
            *inner.per_address.entry(key).or_insert(0) += 1;
        }
        self.metrics.http_connections.inc();
        Ok(Ticket {
            id,
            registry: self.clone(),
            evicted: evict,
        })
    }

    /// The connection started serving a request: it may not be evicted until it is idle again.
    fn busy(&self, id: u64) {
        let mut inner = self.lock();
        let Some(slot) = inner.open.get_mut(&id) else {
            return;
        };
        if let Some(since) = slot.idle_since.take() {
            inner.idle.remove(&(since, id));
            self.metrics.http_connections_active.inc();
        }
    }

    /// The connection holds no request since `since`.
    fn idle(&self, id: u64, since: Instant) {
        let mut inner = self.lock();
        let Some(slot) = inner.open.get_mut(&id) else {
            return;
        };
        if slot.idle_since.is_none() {
            slot.idle_since = Some(since);
            inner.idle.insert((since, id));
            self.metrics.http_connections_active.dec();
        }
    }

    /// Open connections, as counted against the caps.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// A connection's place under the caps, given back when it is dropped (for an upgraded
/// WebSocket, when the socket closes).
pub struct Ticket {
    id: u64,
    registry: Arc<Registry>,
    /// Cancelled when the connection is evicted to make room for a new one.
    pub evicted: CancellationToken,
}

impl Ticket {
    pub fn busy(&self) {
        self.registry.busy(self.id);
    }

    pub fn idle(&self, since: Instant) {
        self.registry.idle(self.id, since);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let removed = self.registry.lock().remove(self.id);
        // Evicted connections were taken off the counts already.
        if let Some(slot) = removed {
            let m = &self.registry.metrics;
            m.http_connections.dec();
            if slot.idle_since.is_none() {
                m.http_connections_active.dec();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn registry(total: usize, per_address: Option<usize>) -> Arc<Registry> {
        Arc::new(Registry::new(total, per_address, Arc::new(Metrics::new())))
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddressKey::from(a), AddressKey::from(b));
        assert_ne!(AddressKey::from(a), AddressKey::from(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(AddressKey::from(mapped), AddressKey::from(v4(1)));
        assert_ne!(
            AddressKey::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            AddressKey::from(v4(1))
        );
    }

    #[test]
    fn the_per_address_cap_refuses_only_that_address_and_frees_on_drop() {
        let r = registry(100, Some(2));
        let now = Instant::now();
        let a1 = r.admit(v4(1), now).unwrap();
        let _a2 = r.admit(v4(1), now).unwrap();
        assert_eq!(r.admit(v4(1), now).err(), Some(Refusal::PerAddress));
        let _b = r.admit(v4(2), now).unwrap();
        drop(a1);
        let _a3 = r.admit(v4(1), now).unwrap();
        assert_eq!(r.open(), 3);
    }

    #[test]
    fn behind_proxies_no_per_address_cap_applies() {
        let r = registry(100, None);
        let now = Instant::now();
        let _all: Vec<_> = (0..10).map(|_| r.admit(v4(1), now).unwrap()).collect();
        assert_eq!(r.open(), 10);
    }

    #[test]
    fn at_the_total_cap_the_longest_idle_connection_makes_room_and_busy_ones_never_do() {
        let r = registry(3, None);
        let t0 = Instant::now();
        let oldest = r.admit(v4(1), t0).unwrap();
        let busy = r
            .admit(v4(2), t0 + std::time::Duration::from_millis(1))
            .unwrap();
        busy.busy();
        let newer = r
            .admit(v4(3), t0 + std::time::Duration::from_millis(2))
            .unwrap();
        // Full: the oldest idle one goes, the busy one stays.
        let fourth = r
            .admit(v4(4), t0 + std::time::Duration::from_millis(3))
            .unwrap();
        assert!(oldest.evicted.is_cancelled());
        assert!(!busy.evicted.is_cancelled());
        assert_eq!(r.open(), 3);
        // The evicted ticket's drop does not free a second place.
        drop(oldest);
        assert_eq!(r.open(), 3);
        newer.busy();
        fourth.busy();
        assert_eq!(r.admit(v4(5), t0).err(), Some(Refusal::Full));
        // A connection idle again is evictable again.
        busy.idle(t0 + std::time::Duration::from_millis(5));
        let _fifth = r.admit(v4(5), t0).unwrap();
        assert!(busy.evicted.is_cancelled());
        // The gauges follow: three open, two of them serving a request.
        drop(busy);
        assert_eq!(r.metrics.http_connections.get(), 3);
        assert_eq!(r.metrics.http_connections_active.get(), 2);
        assert_eq!(r.metrics.http_connections_evicted.get(), 2);
    }
}
