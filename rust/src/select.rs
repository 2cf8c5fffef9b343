//! Picking backends for the built-in algorithms, from a table Python builds and swaps in whole.
//!
//! A `Table` is made once per change of a service's eligible backends (a health change, an
//! admin change, a reload, a step of a slow start) and never changed after: a connection that
//! started on an older table keeps it, and the next pick uses the new one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// What the data plane keeps per backend, shared by every table that lists it: counters only.
#[derive(Debug, Default)]
pub struct BackendCell {
    pub slot: u32,
    /// Open connections (connecting or relaying) in this process.
    pub active: AtomicI64,
    /// Connections made to it, in all.
    pub total: AtomicU64,
    /// Bytes of the connections still open, each way (added to Python's totals at their end).
    pub live_in: AtomicU64,
    pub live_out: AtomicU64,
    /// A failure was reported since its last answer: the next answer is reported too.
    pub failing: AtomicBool,
    /// Open connections it may have (0: no limit), as the latest table says.
    pub max_connections: AtomicU32,
    /// How the access line names it (quoted as the line's format wants), set once.
    pub label: OnceLock<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    Random,
    PowerOfTwo,
    SourceHash,
}

impl Algorithm {
    pub fn named(name: &str) -> Option<Algorithm> {
        Some(match name {
            "round_robin" => Algorithm::RoundRobin,
            "least_connections" => Algorithm::LeastConnections,
            "random" => Algorithm::Random,
            "power_of_two" => Algorithm::PowerOfTwo,
            "source_hash" => Algorithm::SourceHash,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub struct Entry {
    pub cell: Arc<BackendCell>,
    pub address: SocketAddr,
    pub weight: f64,
    /// The PROXY header this backend gets: 0 the service's choice, 1 or 2.
    pub send_proxy: u8,
    /// The pick it was last chosen at (least_connections' tie-break: longest ago wins).
    pub turn: AtomicU64,
}

#[derive(Debug)]
pub struct Table {
    pub algorithm: Algorithm,
    pub entries: Vec<Entry>,
    /// round_robin: one cycle of entry indices, each backend its weight's share, interleaved.
    pub schedule: Vec<u32>,
    /// source_hash: sorted points, each `hash << 24 | owner`, the owner an entry index.
    pub ring: Vec<u64>,
    /// random and power_of_two: running sums of the weights.
    cumulative: Vec<f64>,
}

const OWNER_BITS: u32 = 24;

impl Table {
    pub fn new(
        algorithm: Algorithm,
        entries: Vec<Entry>,
        schedule: Vec<u32>,
        ring: Vec<u64>,
    ) -> Table {
        let mut total = 0.0;
        let cumulative = entries
            .iter()
            .map(|e| {
                total += e.weight.max(0.0);
                total
            })
            .collect();
        Table {
            algorithm,
            entries,
            schedule,
            ring,
            cumulative,
        }
    }

    pub fn position(&self, slot: u32) -> Option<usize> {
        self.entries.iter().position(|e| e.cell.slot == slot)
    }

    /// The entry indices to try, first choice first, then the fallbacks.
    pub fn candidates(&self, state: &mut Picker, client: &str) -> Vec<u32> {
        let count = self.entries.len();
        if count == 0 {
            return Vec::new();
        }
        let first = match self.algorithm {
            Algorithm::RoundRobin => {
                if self.schedule.is_empty() {
                    (state.next() as usize) % count
                } else {
                    self.schedule[(state.next() as usize) % self.schedule.len()] as usize % count
                }
            }
            Algorithm::LeastConnections => return self.least_loaded(state),
            Algorithm::Random => self.weighted(state.random()),
            Algorithm::PowerOfTwo => {
                let a = self.weighted(state.random());
                let b = self.weighted(state.random());
                if self.load(b) < self.load(a) { b } else { a }
            }
            Algorithm::SourceHash => return self.hashed(client),
        };
        (0..count)
            .map(|step| ((first + step) % count) as u32)
            .collect()
    }

    fn load(&self, index: usize) -> f64 {
        let entry = &self.entries[index];
        (entry.cell.active.load(Ordering::Relaxed) as f64 + 1.0) / entry.weight.max(1e-9)
    }

    fn weighted(&self, unit: f64) -> usize {
        let total = *self.cumulative.last().unwrap_or(&0.0);
        if total <= 0.0 {
            return ((unit * self.entries.len() as f64) as usize).min(self.entries.len() - 1);
        }
        let target = unit * total;
        let found = self.cumulative.partition_point(|&sum| sum <= target);
        found.min(self.entries.len() - 1)
    }

    /// HAProxy's leastconn: the least `(active + 1) / weight`; ties to the one picked longest
    /// ago. (A scan: the issue on 10,000 backends replaces it with buckets.)
    fn least_loaded(&self, state: &mut Picker) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.entries.len() as u32).collect();
        let key = |i: &u32| {
            (
                self.load(*i as usize),
                self.entries[*i as usize].turn.load(Ordering::Relaxed),
            )
        };
        let best = order
            .iter()
            .copied()
            .min_by(|a, b| {
                key(a)
                    .partial_cmp(&key(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .unwrap_or(0);
        self.entries[best as usize]
            .turn
            .store(state.next() + 1, Ordering::Relaxed);
        order.retain(|&i| i != best);
        order.sort_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        order.insert(0, best);
        order
    }

    fn hashed(&self, client: &str) -> Vec<u32> {
        if self.ring.is_empty() {
            return Vec::new();
        }
        let point = ring_hash(client) << OWNER_BITS;
        let start = self.ring.partition_point(|&p| p < point);
        let mut seen = vec![false; self.entries.len()];
        let mut order = Vec::new();
        for step in 0..self.ring.len() {
            let owner =
                (self.ring[(start + step) % self.ring.len()] & ((1 << OWNER_BITS) - 1)) as usize;
            if owner < seen.len() && !seen[owner] {
                seen[owner] = true;
                order.push(owner as u32);
                if order.len() == self.entries.len() {
                    break;
                }
            }
        }
        order
    }
}

/// The same hash as `balancer.selection.source_hash.ring_hash`: 8-byte BLAKE2b, big-endian.
pub fn ring_hash(text: &str) -> u64 {
    use blake2::digest::{Update, VariableOutput};
    let mut hasher = blake2::Blake2bVar::new(8).expect("8 is a valid BLAKE2b output size");
    hasher.update(text.as_bytes());
    let mut out = [0u8; 8];
    hasher
        .finalize_variable(&mut out)
        .expect("the output is 8 bytes");
    u64::from_be_bytes(out)
}

/// A service's position in its round-robin cycle, and its random numbers.
#[derive(Debug)]
pub struct Picker {
    cursor: u64,
    seed: u64,
}

impl Picker {
    pub fn new(seed: u64) -> Picker {
        Picker {
            cursor: 0,
            seed: seed | 1,
        }
    }

    fn next(&mut self) -> u64 {
        let at = self.cursor;
        self.cursor = self.cursor.wrapping_add(1);
        at
    }

    /// xorshift64*: in [0, 1).
    fn random(&mut self) -> f64 {
        let mut x = self.seed;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(algorithm: Algorithm, weights: &[f64], schedule: Vec<u32>) -> Table {
        let entries = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Entry {
                cell: Arc::new(BackendCell {
                    slot: i as u32,
                    ..Default::default()
                }),
                address: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight: w,
                send_proxy: 0,
                turn: AtomicU64::new(0),
            })
            .collect();
        Table::new(algorithm, entries, schedule, Vec::new())
    }

    #[test]
    fn round_robin_walks_the_schedule_then_the_rest() {
        let t = table(Algorithm::RoundRobin, &[2.0, 1.0], vec![0, 1, 0]);
        let mut p = Picker::new(1);
        let firsts: Vec<u32> = (0..6).map(|_| t.candidates(&mut p, "")[0]).collect();
        assert_eq!(firsts, [0, 1, 0, 0, 1, 0]);
        assert_eq!(t.candidates(&mut p, ""), [0, 1]);
    }

    #[test]
    fn least_connections_prefers_idle_and_rotates_ties() {
        let t = table(Algorithm::LeastConnections, &[1.0, 1.0, 1.0], vec![]);
        let mut p = Picker::new(1);
        t.entries[0].cell.active.store(5, Ordering::Relaxed);
        let a = t.candidates(&mut p, "")[0];
        let b = t.candidates(&mut p, "")[0];
        assert!(a != 0 && b != 0 && a != b, "{a} {b}");
        assert_eq!(*t.candidates(&mut p, "").last().unwrap(), 0);
    }

    #[test]
    fn random_follows_weights() {
        let t = table(Algorithm::Random, &[3.0, 1.0], vec![]);
        let mut p = Picker::new(7);
        let zeros = (0..4000)
            .filter(|_| t.candidates(&mut p, "")[0] == 0)
            .count();
        assert!((2700..3300).contains(&zeros), "{zeros}");
    }

    #[test]
    fn ring_hash_is_blake2b_64_big_endian() {
        // hashlib.blake2b(b"10.0.0.1", digest_size=8).digest()
        assert_eq!(
            ring_hash("10.0.0.1"),
            u64::from_be_bytes(*b"S\x8e\xf6F\xe1M\x03\xe6")
        );
    }
}
