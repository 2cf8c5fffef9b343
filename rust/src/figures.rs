//! What finished connections add up to, kept here until Python reads them, and the access
//! line each one writes.
//!
//! Python owns the histograms (a service's and each backend's, read by the log summary, the
//! admin API and the metrics). Recording into them from Python cost more than the relay itself,
//! so the loop adds each connection to a `Figures` here instead, and Python takes the lot when
//! it reads: a few counters, and the durations cut to the precision its histograms keep. Only a
//! service or backend with connections since the last read has an entry.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::{Record, Term};

/// Prometheus bucket bounds, microseconds (Python's `stats.BOUNDS_US`, tested equal there).
pub const BOUNDS_US: [u64; 17] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// A distribution of durations: bucket counts, their sum, and the values themselves cut to
/// their top 8 bits (what a 2-digit HDR histogram keeps anyway), with their counts.
#[derive(Debug, Default, PartialEq)]
pub struct Timing {
    pub buckets: [u64; BOUNDS_US.len() + 1],
    pub sum_us: u64,
    pub values: HashMap<u64, u64>,
}

impl Timing {
    pub fn record(&mut self, us: u64) {
        self.buckets[BOUNDS_US.partition_point(|&bound| bound < us)] += 1;
        self.sum_us += us;
        let bits = u64::BITS - us.leading_zeros();
        let cut = if bits > 8 {
            let shift = bits - 8;
            us >> shift << shift
        } else {
            us
        };
        *self.values.entry(cut).or_insert(0) += 1;
    }
}

/// A service's (every connection) or a backend's (those it served) figures since the last read.
#[derive(Debug, Default)]
pub struct Figures {
    pub finished: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect: Timing,
    pub duration: Timing,
    pub terminations: HashMap<Term, u64>,
}

impl Figures {
    pub fn add(&mut self, record: &Record) {
        self.finished += 1;
        self.bytes_in += record.bytes_in;
        self.bytes_out += record.bytes_out;
        // (as Python's int(): toward zero; a connection that never connected has no connect time)
        if record.connect_ms >= 0.0 {
            self.connect.record((record.connect_ms * 1000.0) as u64);
        }
        self.duration.record((record.duration_ms * 1000.0) as u64);
        *self.terminations.entry(record.termination).or_insert(0) += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Service(u32),
    Backend(u32),
}

/// The access line's clock: local time to the millisecond, the date part formatted once a second.
#[derive(Default)]
pub struct Clock {
    second: i64,
    text: String,
}

impl Clock {
    fn stamp(&mut self, out: &mut String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let whole = now.as_secs() as i64;
        if whole != self.second || self.text.is_empty() {
            self.second = whole;
            self.text = local(whole);
        }
        let _ = write!(out, "{}.{:03}", self.text, now.subsec_millis());
    }
}

fn local(seconds: i64) -> String {
    let time: libc::time_t = seconds as libc::time_t;
    // SAFETY: libc::tm is plain integers (and, on glibc, a pointer that may be null), for
    // which all zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals, and localtime_r (unlike localtime) keeps no
    // pointer to either after it returns.
    let filled = unsafe { !libc::localtime_r(&time, &mut tm).is_null() };
    if !filled {
        return "1970-01-01T00:00:00".to_owned();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The access line of `record`, as Python's `EventLog.access` writes it in the text format
/// (`service` and `backend` come quoted as that format wants), without its newline.
pub fn access_line(
    out: &mut String,
    clock: &mut Clock,
    service: &str,
    backend: &str,
    record: &Record,
) {
    clock.stamp(out);
    let _ = write!(
        out,
        " access service={service} client={} backend={backend} connect_ms={:.3} \
         duration_ms={:.3} bytes_in={} bytes_out={} retries={} failures=- termination={}",
        record.client,
        record.connect_ms,
        record.duration_ms,
        record.bytes_in,
        record.bytes_out,
        record.retries,
        record.termination.name()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(connect_ms: f64, duration_ms: f64) -> Record {
        Record {
            service: 1,
            conn: 1,
            client: "127.0.0.1:5000".into(),
            slot: Some(3),
            connect_ms,
            duration_ms,
            bytes_in: 10,
            bytes_out: 20,
            retries: 0,
            termination: Term::ClientClosed,
        }
    }

    #[test]
    fn buckets_as_bisect_left() {
        let mut t = Timing::default();
        for us in [0, 500, 501, 1_000, 300_000_000, 300_000_001] {
            t.record(us);
        }
        assert_eq!(t.buckets[0], 2); // 0 and 500 (a bound is its own bucket's top)
        assert_eq!(t.buckets[1], 2); // 501 and 1,000
        assert_eq!(t.buckets[16], 1);
        assert_eq!(t.buckets[17], 1); // +Inf
        assert_eq!(t.sum_us, 300_000_000 + 300_000_001 + 2_001);
    }

    #[test]
    fn values_keep_their_top_eight_bits() {
        let mut t = Timing::default();
        t.record(255);
        t.record(257); // 9 bits: the lowest goes
        t.record(256);
        t.record(0b111_1111_1111);
        assert_eq!(t.values.get(&255), Some(&1));
        assert_eq!(t.values.get(&256), Some(&2));
        assert_eq!(t.values.get(&0b111_1111_1000), Some(&1));
    }

    #[test]
    fn figures_skip_a_connect_that_never_happened() {
        let mut f = Figures::default();
        f.add(&record(-1.0, 2.5));
        f.add(&record(0.25, 1.0));
        assert_eq!(f.finished, 2);
        assert_eq!(f.connect.buckets.iter().sum::<u64>(), 1);
        assert_eq!(f.duration.sum_us, 3_500);
        assert_eq!(f.terminations[&Term::ClientClosed], 2);
        assert_eq!(f.bytes_out, 40);
    }

    #[test]
    fn the_line_has_every_field() {
        let mut out = String::new();
        access_line(
            &mut out,
            &mut Clock::default(),
            "web",
            "127.0.0.1:9001",
            &record(0.1234, 5.0),
        );
        let (stamp, rest) = out.split_once(' ').unwrap();
        assert_eq!(stamp.len(), "2026-12-07T20:33:23.123".len());
        assert_eq!(
            rest,
            "access service=web client=127.0.0.1:5000 backend=127.0.0.1:9001 connect_ms=0.123 \
             duration_ms=5.000 bytes_in=10 bytes_out=20 retries=0 failures=- \
             termination=client_closed"
        );
    }
}
