//! The balancer's data plane, driven from Python (`balancer._dataplane`).
//!
//! `Engine` runs the data-plane loop (engine.rs) on a thread of its own; Python gives it
//! commands and takes its events in batches. `floor` runs a featureless reference relay for
//! the benchmark harness.

pub mod admission;
pub mod engine;
pub mod figures;
pub mod floor;
pub mod proxy;
pub mod select;
pub mod splice;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use admission::{Limits, Net};
use engine::{Command, Counts, Event, Settings, Shared};
use figures::Key;
use select::{Algorithm, BackendCell, Entry, Table};

fn resolve(host: &str, port: u16) -> PyResult<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| PyValueError::new_err(format!("cannot resolve {host}:{port}")))
}

/// Run a featureless reference relay on 127.0.0.1:`port` until the process is stopped;
/// `runtime` is "mio" or "tokio". Prints its address once it listens.
#[pyfunction]
#[pyo3(name = "floor")]
fn run_floor(
    py: Python<'_>,
    runtime: &str,
    port: u16,
    backends: Vec<(String, u16)>,
) -> PyResult<()> {
    let backends = backends
        .iter()
        .map(|(h, p)| resolve(h, *p))
        .collect::<PyResult<Vec<_>>>()?;
    let announce = |bound: u16| println!("floor listening on 127.0.0.1:{bound}");
    // A signal for Python (SIGINT) interrupts the wait: its handler runs, and stops the relay.
    let stopped = || Python::attach(|py| py.check_signals().is_err());
    let result = match runtime {
        "mio" => py.detach(|| floor::run_mio(port, backends, announce, stopped)),
        "tokio" => py.detach(|| floor::run_tokio(port, backends, announce, stopped)),
        other => return Err(PyValueError::new_err(format!("unknown runtime {other:?}"))),
    };
    result.map_err(|e| PyOSError::new_err(e.to_string()))
}

/// A service's settings, as `balancer.dataplane.engine` passes them.
/// The timeouts come first, as (connect, idle, client, server, client_first_byte) in seconds.
type SettingsArgs = (
    (f64, f64, f64, f64, f64),
    u32,
    bool,
    usize,
    bool,
    u8,
    Option<Vec<u8>>,
    u8,
    String,
    LimitsArgs,
);

/// A network as (address, prefix length).
type NetArgs = (String, u8);

/// The admission limits: allow, deny, client_max_connections, client_rate, client_burst,
/// suspect_rate, the two rate refusals' details, the service's max_connections, the queue's
/// size and timeout (seconds).
type LimitsArgs = (
    Vec<NetArgs>,
    Vec<NetArgs>,
    u32,
    f64,
    f64,
    f64,
    String,
    String,
    u32,
    usize,
    f64,
);

fn nets(list: Vec<NetArgs>) -> PyResult<Vec<Net>> {
    list.into_iter()
        .map(|(address, prefix)| {
            let address: IpAddr = address
                .parse()
                .map_err(|_| PyValueError::new_err(format!("not an IP address: {address:?}")))?;
            Ok(Net { address, prefix })
        })
        .collect()
}

fn settings(args: SettingsArgs) -> PyResult<Arc<Settings>> {
    let (
        (connect, idle, client, server, first),
        retries,
        replay,
        limit,
        accept_proxy,
        send_proxy,
        message,
        access,
        access_name,
        (
            allow,
            deny,
            client_max,
            client_rate,
            client_burst,
            suspect_rate,
            rate,
            suspect,
            max,
            queue_size,
            queue_timeout,
        ),
    ) = args;
    let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let limits = Limits {
        allow: nets(allow)?,
        deny: nets(deny)?,
        client_max_connections: client_max,
        client_rate,
        client_burst,
        suspect_rate,
        rate_detail: rate,
        suspect_detail: suspect,
        queue_size,
        queue_timeout: seconds(queue_timeout),
    };
    Ok(Arc::new(Settings {
        connect: seconds(connect),
        idle: seconds(idle),
        client: seconds(client),
        server: seconds(server),
        client_first_byte: seconds(first),
        retries,
        retry_replay: replay,
        replay_limit: limit,
        accept_proxy,
        send_proxy,
        no_backend_message: message.filter(|m| !m.is_empty()),
        access,
        access_name,
        limits,
        max_connections: max,
    }))
}

/// The data plane of this process: one loop on its own thread.
#[pyclass(module = "balancer._dataplane")]
struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counts: Mutex<HashMap<u32, Arc<Counts>>>,
}

impl Engine {
    /// One of a service's counts (0 for a service it does not know).
    fn count(&self, id: u32, which: impl Fn(&Counts) -> &AtomicI64) -> i64 {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map_or(0, |c| which(c).load(Ordering::Relaxed))
    }

    fn cell(&self, slot: u32) -> Arc<BackendCell> {
        let mut cells = self.shared.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .entry(slot)
            .or_insert_with(|| {
                Arc::new(BackendCell {
                    slot,
                    ..Default::default()
                })
            })
            .clone()
    }
}

#[pymethods]
impl Engine {
    #[new]
    fn new() -> PyResult<Engine> {
        let (looped, shared) =
            engine::Loop::new().map_err(|e| PyOSError::new_err(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name("balancer-data".into())
            .spawn(move || looped.run())
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Engine {
            shared,
            thread: Mutex::new(Some(thread)),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Readable while events wait for `take_events`.
    fn events_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.shared.eventfd.as_raw_fd()
    }

    /// Serve service `id` on the listening sockets `fds` (duplicated: the caller keeps its
    /// own), not accepting until `accept(id, True)`.
    fn add_service(&self, id: u32, fds: Vec<i32>, args: SettingsArgs) -> PyResult<()> {
        let listeners = fds
            .into_iter()
            .map(engine::listener_from_fd)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let settings = settings(args)?;
        self.shared.send(Command::AddService {
            id,
            listeners,
            settings,
            counts,
        });
        Ok(())
    }

    fn configure(&self, id: u32, args: SettingsArgs) -> PyResult<()> {
        let settings = settings(args)?;
        self.shared.send(Command::Configure { id, settings });
        Ok(())
    }

    /// Hold client address `ip` to the service's `suspect_rate` for `seconds`.
    fn suspect(&self, id: u32, ip: &str, seconds: f64) -> PyResult<()> {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| PyValueError::new_err(format!("not an IP address: {ip:?}")))?;
        let for_ = Duration::from_secs_f64(seconds.max(0.0));
        self.shared.send(Command::Suspect { id, ip, for_ });
        Ok(())
    }

    /// Swap in a service's backends: `(slot, host, port, weight, send_proxy)` each, in the
    /// pool's order; `schedule` for round_robin, `ring` for source_hash.
    fn set_table(
        &self,
        id: u32,
        algorithm: &str,
        backends: Vec<(u32, String, u16, f64, u8, String, u32)>,
        schedule: Vec<u32>,
        ring: Vec<u64>,
    ) -> PyResult<()> {
        let kind = Algorithm::named(algorithm)
            .ok_or_else(|| PyValueError::new_err(format!("no built-in algorithm {algorithm:?}")))?;
        let mut entries = Vec::with_capacity(backends.len());
        for (slot, host, port, weight, send_proxy, label, max_connections) in backends {
            let cell = self.cell(slot);
            cell.max_connections
                .store(max_connections, Ordering::Relaxed);
            let _ = cell.label.set(label.into_boxed_str()); // (a backend's name never changes)
            entries.push(Entry {
                cell,
                address: resolve(&host, port)?,
                weight,
                send_proxy,
                turn: AtomicU64::new(0),
            });
        }
        let table = Arc::new(Table::new(kind, entries, schedule, ring));
        self.shared.send(Command::SetTable { id, table });
        Ok(())
    }

    fn accept(&self, id: u32, on: bool) {
        self.shared.send(Command::Accept { id, on });
    }

    /// Stop accepting for good (the caller closes its own descriptor).
    fn close_listener(&self, id: u32) {
        self.shared.send(Command::CloseListener { id });
    }

    /// End every connection of the service (`shutdown`).
    fn end_all(&self, id: u32) {
        self.shared.send(Command::EndAll { id });
    }

    /// The service's open connections.
    fn open(&self, id: u32) -> i64 {
        self.count(id, |c| &c.open)
    }

    /// The service's clients waiting in the queue for a backend's free slot.
    fn queued(&self, id: u32) -> i64 {
        self.count(id, |c| &c.queued)
    }

    /// Open connections the process may have in all, 0 for no limit.
    fn set_limit(&self, limit: usize) {
        self.shared.limit.store(limit, Ordering::Relaxed);
    }

    /// Pipes the data plane may hold to splice bulk transfers through, 0 to copy always
    /// (taken when the next service is added).
    fn set_pipes(&self, limit: usize) {
        self.shared.pipe_limit.store(limit, Ordering::Relaxed);
    }

    /// A backend's open connections (connecting or relaying), and those it has had.
    fn counts(&self, slot: u32) -> (i64, u64) {
        let cell = self.cell(slot);
        (
            cell.active.load(Ordering::Relaxed),
            cell.total.load(Ordering::Relaxed),
        )
    }

    /// A backend's bytes each way on connections still open.
    fn live(&self, slot: u32) -> (u64, u64) {
        let cell = self.cell(slot);
        (
            cell.live_in.load(Ordering::Relaxed),
            cell.live_out.load(Ordering::Relaxed),
        )
    }

    /// The events since the last call, as tuples whose first item is the kind:
    /// 1 finished, 2 connect failed, 3 early failure, 4 answered, 5 refusal, 6 no backend,
    /// 7 accept exhausted, 8 a panic caught, 9 the connection limit reached or left,
    /// 10 access lines, 11 the service's max_connections reached or left.
    fn take_events<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let events = self.shared.take();
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let tuple = match event {
                Event::Finished(r) => (
                    1,
                    r.service,
                    r.conn,
                    r.client,
                    r.slot,
                    r.connect_ms,
                    r.duration_ms,
                    r.bytes_in,
                    r.bytes_out,
                    r.retries,
                    r.termination.name(),
                )
                    .into_pyobject(py)?,
                Event::ConnectFailed {
                    service,
                    conn,
                    slot,
                    error,
                    refused,
                } => (2, service, conn, slot, error, refused).into_pyobject(py)?,
                Event::EarlyFailed {
                    service,
                    conn,
                    slot,
                    error,
                    client,
                    forwarded,
                    abandoned,
                } => (3, service, conn, slot, error, client, forwarded, abandoned)
                    .into_pyobject(py)?,
                Event::Answered { service, slot } => (4, service, slot).into_pyobject(py)?,
                Event::Refusal {
                    service,
                    reason,
                    peer,
                    detail,
                } => (5, service, reason.name(), peer, detail).into_pyobject(py)?,
                Event::NoBackend {
                    service,
                    peer,
                    attempts,
                    error,
                } => (6, service, peer, attempts, error).into_pyobject(py)?,
                Event::Exhausted { service, error } => (7, service, error).into_pyobject(py)?,
                Event::Limited { service, on } => (9, service, on).into_pyobject(py)?,
                Event::Panicked {
                    service,
                    peer,
                    reason,
                } => (8, service, peer, reason).into_pyobject(py)?,
                Event::Lines { service, text } => (10, service, text).into_pyobject(py)?,
                Event::Full { service, on } => (11, service, on).into_pyobject(py)?,
            };
            out.push(tuple);
        }
        Ok(out)
    }

    /// What the connections finished since the last call add up to, for each service
    /// (`is_backend` false, by id) and backend (true, by slot) that had any: tuples of
    /// (is_backend, id, finished, bytes_in, bytes_out, connect, duration, terminations), each
    /// timing as (bucket counts, sum in microseconds, {value cut to 8 bits: count}).
    fn take_figures<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let timing = |t: figures::Timing| (t.buckets.to_vec(), t.sum_us, t.values);
        let mut out = Vec::new();
        for (key, f) in self.shared.take_figures() {
            let (is_backend, id) = match key {
                Key::Service(id) => (false, id),
                Key::Backend(slot) => (true, slot),
            };
            let terminations: HashMap<&'static str, u64> = f
                .terminations
                .into_iter()
                .map(|(t, n)| (t.name(), n))
                .collect();
            out.push(
                (
                    is_backend,
                    id,
                    f.finished,
                    f.bytes_in,
                    f.bytes_out,
                    timing(f.connect),
                    timing(f.duration),
                    terminations,
                )
                    .into_pyobject(py)?,
            );
        }
        Ok(out)
    }

    /// Stop the loop and wait for its thread (open connections are closed with it).
    fn stop(&self, py: Python<'_>) {
        self.shared.send(Command::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            py.detach(|| {
                let _ = thread.join();
            });
        }
    }
}

/// The data plane's PROXY header parser, for the fuzz target and the tests: None while more
/// bytes are needed, else `(version, source, destination, length)` with each address
/// `(host, port)` or None; a malformed header raises ValueError with the parser's message.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn parse_proxy(
    data: &[u8],
) -> PyResult<Option<(u8, Option<(String, u16)>, Option<(String, u16)>, usize)>> {
    let endpoint = |a: SocketAddr| (a.ip().to_string(), a.port());
    match proxy::parse(data) {
        Err(error) => Err(PyValueError::new_err(error.0)),
        Ok(None) => Ok(None),
        Ok(Some((header, length))) => {
            let (source, destination) = match header.addresses {
                Some((s, d)) => (Some(endpoint(s)), Some(endpoint(d))),
                None => (None, None),
            };
            Ok(Some((header.version, source, destination, length)))
        }
    }
}

/// A timing of these durations (microseconds) as the engine keeps one: (bucket counts, sum,
/// {value cut to 8 bits: count}), for the tests that hold it to Python's `Timing`.
#[pyfunction]
fn timing(values: Vec<u64>) -> (Vec<u64>, u64, HashMap<u64, u64>) {
    let mut t = figures::Timing::default();
    for us in values {
        t.record(us);
    }
    (t.buckets.to_vec(), t.sum_us, t.values)
}

#[pymodule]
fn _dataplane(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(run_floor, module)?)?;
    module.add_function(wrap_pyfunction!(parse_proxy, module)?)?;
    module.add_function(wrap_pyfunction!(timing, module)?)?;
    module.add_class::<Engine>()?;
    Ok(())
}
