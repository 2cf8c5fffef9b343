//! The data plane: accepting, picking, connecting with retries, relaying, timeouts, and the
//! access record of each connection, on one mio loop per thread (as Sōzu does).
//!
//! Python drives it with commands (a service's listener, settings and backend table, accept
//! on or off, end everything) and reads its events in batches: connections made and finished,
//! passive failures, refusals. The loop never holds the GIL.
//!
//! Each connection is a pair of sockets registered once, edge-triggered, for both directions;
//! readiness is remembered per socket and cleared only on EAGAIN, so no event re-registers
//! anything. A client is read right after accept and a backend written right after connect
//! (speculative I/O). Bytes go through one scratch buffer per loop: a connection keeps a
//! buffer of its own only while a peer is not taking what it was sent (backpressure), which
//! also stops reading the other side until it drains.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::admission::{Admission, Limits};
use crate::figures::{Clock, Figures, Key, access_line};
use crate::proxy;
use crate::select::{BackendCell, Picker, Table};
use crate::splice::{COPY_BELOW, Moved, Pipe, Pipes, SPLICE_FROM};

const WAKER: Token = Token(usize::MAX);
const LISTENERS: usize = usize::MAX / 2; // tokens from here up are listeners, by service id
const PER_SERVICE: usize = 16; // listening sockets a service may have (one per address)
const SCRATCH: usize = 64 * 1024;
const PREFACE_MAX: usize = 64 * 1024; // client bytes read before a backend exists
const LINGER: Duration = Duration::from_secs(2); // a refused client's last seconds
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100); // out of descriptors: retry after

/// Why a connection ended (`balancer.core.termination.Termination`'s values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Term {
    ClientClosed,
    BackendClosed,
    ClientReset,
    BackendReset,
    NoBackend,
    ConnectFailed,
    ClientAborted,
    IdleTimeout,
    ClientTimeout,
    ServerTimeout,
    FirstByteTimeout,
    BadProxyHeader,
    NoResources,
    Shutdown,
    Denied,
    ClientLimit,
    RateLimited,
    QueueTimeout,
    QueueFull,
}

impl Term {
    pub fn name(self) -> &'static str {
        match self {
            Term::ClientClosed => "client_closed",
            Term::BackendClosed => "backend_closed",
            Term::ClientReset => "client_reset",
            Term::BackendReset => "backend_reset",
            Term::NoBackend => "no_backend",
            Term::ConnectFailed => "connect_failed",
            Term::ClientAborted => "client_aborted",
            Term::IdleTimeout => "idle_timeout",
            Term::ClientTimeout => "client_timeout",
            Term::ServerTimeout => "server_timeout",
            Term::FirstByteTimeout => "first_byte_timeout",
            Term::BadProxyHeader => "bad_proxy_header",
            Term::NoResources => "no_resources",
            Term::Shutdown => "shutdown",
            Term::Denied => "denied",
            Term::ClientLimit => "client_limit",
            Term::RateLimited => "rate_limited",
            Term::QueueTimeout => "queue_timeout",
            Term::QueueFull => "queue_full",
        }
    }

    /// Who finished first: a later timeout, reset or shutdown says more.
    fn finished(self) -> bool {
        matches!(self, Term::ClientClosed | Term::BackendClosed)
    }
}

/// A service's settings, swapped whole on a reload.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub connect: Duration,
    pub idle: Duration,
    pub client: Duration, // zero: off
    pub server: Duration,
    pub client_first_byte: Duration,
    pub retries: u32,
    pub retry_replay: bool,
    pub replay_limit: usize,
    pub accept_proxy: bool,
    pub send_proxy: u8, // 0 none, 1 or 2
    pub no_backend_message: Option<Vec<u8>>,
    /// Who records a finished connection: 0 Python (an event each), 1 the loop (its figures,
    /// and its access line in the text format), 2 the loop (its figures; no line is wanted).
    pub access: u8,
    /// The service's name as the access line shows it.
    pub access_name: String,
    /// ACLs and per-client limits.
    pub limits: Limits,
    /// Open connections the service may have (0: no limit): beyond, clients wait in the
    /// listen backlog.
    pub max_connections: u32,
}

/// What Python hears of, in batches.
#[derive(Debug)]
pub enum Event {
    Finished(Record),
    ConnectFailed {
        service: u32,
        conn: u64,
        slot: u32,
        error: String,
        refused: bool,
    },
    /// A connected backend closed or reset before answering; `abandoned`: the connection
    /// went on to another backend (or ended) without it.
    EarlyFailed {
        service: u32,
        conn: u64,
        slot: u32,
        error: String,
        client: String,
        forwarded: bool,
        abandoned: bool,
    },
    Answered {
        service: u32,
        slot: u32,
    },
    Refusal {
        service: u32,
        reason: Term,
        peer: String,
        detail: String,
    },
    NoBackend {
        service: u32,
        peer: String,
        attempts: u32,
        error: String,
    },
    Exhausted {
        service: u32,
        error: String,
    },
    Panicked {
        service: u32,
        peer: String,
        reason: String,
    },
    /// At the process's connection limit (from its open-file limit), accepting stopped
    /// (`on`), or below it again and accepting.
    Limited {
        service: u32,
        on: bool,
    },
    /// At the service's `max_connections`, accepting stopped (`on`), or below it again.
    Full {
        service: u32,
        on: bool,
    },
    /// Access lines, one per finished connection, joined by newlines.
    Lines {
        service: u32,
        text: String,
    },
}

#[derive(Debug)]
pub struct Record {
    pub service: u32,
    pub conn: u64,
    pub client: String,
    pub slot: Option<u32>,
    pub connect_ms: f64,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retries: u32,
    pub termination: Term,
}

pub enum Command {
    AddService {
        id: u32,
        listeners: Vec<std::net::TcpListener>,
        settings: Arc<Settings>,
        counts: Arc<Counts>,
    },
    Configure {
        id: u32,
        settings: Arc<Settings>,
    },
    SetTable {
        id: u32,
        table: Arc<Table>,
    },
    Accept {
        id: u32,
        on: bool,
    },
    CloseListener {
        id: u32,
    },
    EndAll {
        id: u32,
    },
    /// Hold a client address to the service's `suspect_rate` for a while.
    Suspect {
        id: u32,
        ip: IpAddr,
        for_: Duration,
    },
    Stop,
}

/// A service's figures that Python reads at any time.
#[derive(Debug, Default)]
pub struct Counts {
    /// Its open connections.
    pub open: AtomicI64,
    /// Its clients waiting in the queue.
    pub queued: AtomicI64,
}

/// What the Python side and the loop share.
pub struct Shared {
    pub commands: Mutex<Vec<Command>>,
    pub events: Mutex<Vec<Event>>,
    pub waker: Waker,
    pub eventfd: OwnedFd,
    pub cells: Mutex<HashMap<u32, Arc<BackendCell>>>,
    /// Open connections the process may have in all (0: no limit): beyond, clients wait in
    /// the listen backlog, and none is accepted only to fail for want of a descriptor.
    pub limit: AtomicUsize,
    /// Pipes the loop may hold open to splice bulk transfers through (0: copy always).
    pub pipe_limit: AtomicUsize,
    /// What finished connections added up to since Python last read them.
    pub figures: Mutex<HashMap<Key, Figures>>,
}

impl Shared {
    pub fn new(registry: &Registry) -> io::Result<Shared> {
        // SAFETY: eventfd takes no pointer; a negative result is checked before the descriptor
        // is owned, and OwnedFd then closes it exactly once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Shared {
            commands: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            waker: Waker::new(registry, WAKER)?,
            // SAFETY: fd is a descriptor eventfd just made, owned by nothing else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            cells: Mutex::new(HashMap::new()),
            limit: AtomicUsize::new(0),
            pipe_limit: AtomicUsize::new(0),
            figures: Mutex::new(HashMap::new()),
        })
    }

    pub fn send(&self, command: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        let _ = self.waker.wake();
    }

    fn publish(&self, batch: &mut Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = events.is_empty();
        events.append(batch);
        drop(events);
        if was_empty {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd this struct owns.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// The figures since the last call.
    pub fn take_figures(&self) -> HashMap<Key, Figures> {
        std::mem::take(&mut *self.figures.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The events so far (and the eventfd cleared), for Python.
    pub fn take(&self) -> Vec<Event> {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from the eventfd this struct owns.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ServiceState {
    fn queue_changed(&self) {
        self.counts
            .queued
            .store(self.queue.len() as i64, Ordering::Relaxed);
    }

    fn at_max(&self) -> bool {
        let max = self.settings.max_connections;
        max > 0 && self.counts.open.load(Ordering::Relaxed) >= i64::from(max)
    }
}

struct ServiceState {
    listeners: Vec<TcpListener>,
    settings: Arc<Settings>,
    table: Arc<Table>,
    picker: Picker,
    accepting: bool,
    closing: bool,
    backoff_until: Option<Instant>,
    counts: Arc<Counts>,
    admission: Admission,
    full: bool, // at max_connections: not accepting until one ends
    /// Clients waiting for a free slot on a backend at its max_connections, first come first
    /// served: (connection, its serial, when its wait ends), in the order they joined.
    queue: VecDeque<(usize, u64, Instant)>,
}

/// Bytes one side has not yet taken.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    at: usize,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }

    fn clear(&mut self) {
        if self.buf.capacity() > 4096 {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.at = 0;
    }
}

/// One side of a connection.
struct Side {
    stream: Option<TcpStream>,
    readable: bool,
    writable: bool,
    eof: bool,          // it sent its EOF
    out: Outbox,        // what it has yet to take
    shut: bool,         // half-close it once `out` is empty
    close: bool,        // close it once `out` is empty
    heard: Instant,     // last bytes from it
    pipe: Option<Pipe>, // what it has yet to take, spliced (a bulk transfer)
}

impl Side {
    fn new(stream: Option<TcpStream>, now: Instant) -> Side {
        Side {
            stream,
            readable: false,
            writable: false,
            eof: false,
            out: Outbox::default(),
            shut: false,
            close: false,
            heard: now,
            pipe: None,
        }
    }

    fn open(&self) -> bool {
        self.stream.is_some()
    }

    /// It has not yet taken all it was sent: the other side is not read meanwhile.
    fn pending(&self) -> bool {
        !self.out.is_empty() || self.pipe.as_ref().is_some_and(|p| p.held > 0)
    }

    /// Write `data`, keeping what the socket does not take (after whatever is kept already).
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.out.is_empty() || !self.writable {
            self.out.buf.extend_from_slice(data);
            return Ok(());
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let mut written = 0;
        while written < data.len() {
            match stream.write(&data[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if written < data.len() {
            self.out.clear();
            self.out.buf.extend_from_slice(&data[written..]);
        }
        Ok(())
    }

    /// Write what is kept; then a pending half-close or close. Ok(true) once closed.
    fn flush(&mut self) -> io::Result<bool> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(true);
        };
        while !self.out.is_empty() && self.writable {
            match stream.write(&self.out.buf[self.out.at..]) {
                Ok(0) => break,
                Ok(n) => self.out.at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.out.is_empty() {
            return Ok(false);
        }
        if let Some(pipe) = self.pipe.as_mut()
            && pipe.held > 0
            && (!self.writable || !pipe.drain(stream.as_raw_fd())?)
        {
            self.writable = false;
            return Ok(false);
        }
        self.out.clear();
        if self.close {
            self.stream = None; // (closing the descriptor takes it out of the epoll set)
            return Ok(true);
        }
        if self.shut {
            self.shut = false;
            let _ = stream.shutdown(Shutdown::Write);
        }
        Ok(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,     // reading the client's PROXY header
    Waiting,    // between candidates (momentarily)
    Connecting, // a backend connect is in flight
    Relaying,
    Refusing, // refused: the message is sent, the client's input is dropped until it closes
}

struct Conn {
    serial: u64,
    service: u32,
    settings: Arc<Settings>,
    phase: Phase,
    client: Side,
    backend: Side,
    connected: bool,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    header: Vec<u8>,
    preface: Vec<u8>,
    replay: Option<Vec<u8>>,
    table: Option<Arc<Table>>,
    order: Vec<u32>,
    next: usize,
    attempts: u32,
    entry: Option<usize>, // in `table`: the backend in use or being dialed
    cell: Option<Arc<BackendCell>>,
    dial_started: Instant,
    connect_ms: f64,
    started: Instant,
    relaying_since: Instant,
    bytes_in: u64,
    bytes_out: u64,
    answered: bool,
    blamed: bool,
    reported: bool, // a failure of it went to Python, which names the rule in its access line
    admitted: bool, // counted by the service's admission until it ends
    full: bool,     // a candidate was skipped as at its max_connections
    in_queue: bool, // waits in the service's queue
    queued_until: Option<Instant>, // when its wait in the queue ends (kept if it rejoins)
    freed: bool,    // it gave back a slot of a backend with a max_connections
    termination: Option<Term>,
    last_error: String,
    linger_until: Option<Instant>,
    armed: u64, // the deadline (ms from the loop's epoch) it waits in the timers for; 0: none
    finished: bool,
}

/// Read a side past its EOF: the error if it has reset since.
fn probe(side: &mut Side) -> Option<io::Error> {
    let stream = side.stream.as_mut()?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        // (past a FIN, a read returns 0 even after a reset: the reset is the socket's error)
        Ok(_) => {
            side.readable = false;
            stream.take_error().ok().flatten()
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            side.readable = false;
            None
        }
        Err(e) if e.kind() == ErrorKind::Interrupted => None,
        Err(e) => {
            side.readable = false;
            Some(e)
        }
    }
}

/// A number of seconds as Python's `:g` shows it, for the usual values (1, 0.5, 2.25).
fn short(seconds: f64) -> String {
    let text = format!("{seconds:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// An address as admission counts it: an IPv4 client on a dual-stack socket as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Python's way of showing an endpoint: `host:port`, `[v6]:port`.
pub fn show(address: SocketAddr) -> String {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", v6.port()),
            None => format!("[{}]:{}", v6.ip(), v6.port()),
        },
        v4 => v4.to_string(),
    }
}

fn ip_text(address: SocketAddr) -> String {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.ip().to_string(),
        },
        v4 => v4.ip().to_string(),
    }
}

/// An OS error as the Python side names it: strerror, lower case.
pub fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            text.to_lowercase()
        }
        None if error.kind() == ErrorKind::TimedOut => "connect timeout".into(),
        None => error.to_string().to_lowercase(),
    }
}

fn resource_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The loop's state apart from the connections (so both can be borrowed at once).
struct Context<'a> {
    registry: &'a Registry,
    services: &'a mut HashMap<u32, ServiceState>,
    timers: &'a mut BinaryHeap<Reverse<(u64, usize, u64)>>,
    events: &'a mut Vec<Event>,
    scratch: &'a mut Vec<u8>,
    pipes: &'a mut Pipes,
    shared: &'a Shared,
    clock: &'a mut Clock,
    epoch: Instant,
    now: Instant,
}

impl Context<'_> {
    fn ms(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_millis() as u64).max(1)
    }
}

enum Due {
    Queue,
    Header,
    Connect,
    Linger,
    Timeout(Term),
}

impl Conn {
    fn new(
        serial: u64,
        service: u32,
        settings: Arc<Settings>,
        client: TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) -> Conn {
        let mut side = Side::new(Some(client), now);
        side.readable = true; // speculative: read right after accept
        side.writable = true;
        let replay = settings.retry_replay.then(Vec::new);
        Conn {
            serial,
            service,
            phase: if settings.accept_proxy {
                Phase::Header
            } else {
                Phase::Waiting
            },
            settings,
            client: side,
            backend: Side::new(None, now),
            connected: false,
            peer,
            destination: None,
            header: Vec::new(),
            preface: Vec::new(),
            replay,
            table: None,
            order: Vec::new(),
            next: 0,
            attempts: 0,
            entry: None,
            cell: None,
            dial_started: now,
            connect_ms: -1.0,
            started: now,
            relaying_since: now,
            bytes_in: 0,
            bytes_out: 0,
            answered: false,
            blamed: false,
            reported: false,
            admitted: false,
            full: false,
            in_queue: false,
            queued_until: None,
            freed: false,
            termination: None,
            last_error: String::new(),
            linger_until: None,
            armed: 0,
            finished: false,
        }
    }

    fn connecting(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Waiting)
    }

    fn slot(&self) -> Option<u32> {
        self.cell.as_ref().map(|c| c.slot)
    }

    // -- the deadline ---------------------------------------------------------------------

    fn deadline(&self) -> Option<(Instant, Due)> {
        let s = &self.settings;
        match self.phase {
            Phase::Header => {
                let wait = if s.client_first_byte.is_zero() {
                    s.connect
                } else {
                    s.client_first_byte
                };
                return Some((self.started + wait, Due::Header));
            }
            Phase::Connecting => return Some((self.dial_started + s.connect, Due::Connect)),
            Phase::Refusing => return self.linger_until.map(|at| (at, Due::Linger)),
            Phase::Waiting => {
                return self
                    .queued_until
                    .filter(|_| self.in_queue)
                    .map(|at| (at, Due::Queue));
            }
            Phase::Relaying => {}
        }
        let mut due = (
            self.client.heard.max(self.backend.heard) + s.idle,
            Term::IdleTimeout,
        );
        let paused_client = self.backend.pending(); // (not read while the backend lags)
        let paused_backend = self.client.pending();
        if !s.client.is_zero() && !self.client.eof && !paused_client {
            due = due.min((self.client.heard + s.client, Term::ClientTimeout));
        }
        if !s.server.is_zero() && !self.backend.eof && !paused_backend {
            due = due.min((self.backend.heard + s.server, Term::ServerTimeout));
        }
        if !s.client_first_byte.is_zero() && self.bytes_in == 0 {
            due = due.min((
                self.relaying_since + s.client_first_byte,
                Term::FirstByteTimeout,
            ));
        }
        Some((due.0, Due::Timeout(due.1)))
    }

    fn arm(&mut self, index: usize, cx: &mut Context) {
        if let Some((at, _)) = self.deadline() {
            let ms = cx.ms(at);
            if self.armed == 0 || ms < self.armed {
                self.armed = ms;
                cx.timers.push(Reverse((ms, index, self.serial)));
            }
        }
    }

    /// Its timer came: act on a deadline that has passed, or wait for the next.
    fn expired(&mut self, index: usize, cx: &mut Context) {
        self.armed = 0;
        let Some((at, due)) = self.deadline() else {
            return;
        };
        if at > cx.now {
            self.arm(index, cx);
            return;
        }
        match due {
            Due::Queue => {
                self.leave_queue(cx);
                let wait = self.settings.limits.queue_timeout.as_secs_f64();
                let detail = format!("no free slot within queue_timeout {}s", short(wait));
                self.refusal(cx, Term::QueueTimeout, detail);
                self.refuse(index, cx, Term::QueueTimeout);
            }
            Due::Header => {
                self.refusal(
                    cx,
                    Term::BadProxyHeader,
                    "no complete PROXY header in time".into(),
                );
                self.abort(cx, Term::BadProxyHeader);
            }
            Due::Connect => {
                let error = io::Error::new(ErrorKind::TimedOut, "connect timeout");
                self.connect_failed(index, cx, error);
            }
            Due::Linger => {
                // A refused client that does not close: what it has not read goes too.
                self.client.out.clear();
                self.client.close = true;
                self.pump(index, cx);
            }
            Due::Timeout(term) => self.abort(cx, term),
        }
    }

    /// End now, dropping what either side has not taken (a peer that stopped reading would
    /// otherwise hold the connection open for ever).
    fn abort(&mut self, cx: &mut Context, term: Term) {
        self.end_reason(term);
        if self.connecting() {
            self.stop_connecting(cx);
        }
        self.client.stream = None;
        self.backend.stream = None;
        self.maybe_finish(cx);
    }

    fn end_reason(&mut self, term: Term) {
        if self.termination.is_none_or(|t| t.finished()) {
            self.termination = Some(term);
        }
    }

    /// Close both sides once they have taken what they were sent.
    fn end(&mut self, index: usize, cx: &mut Context, term: Option<Term>) {
        if let Some(term) = term {
            self.end_reason(term);
        }
        if self.connecting() {
            self.stop_connecting(cx);
        }
        self.client.close = true;
        if self.connected {
            self.backend.close = true;
        } else {
            self.backend.stream = None;
        }
        self.pump(index, cx);
    }

    fn refusal(&self, cx: &mut Context, reason: Term, detail: String) {
        cx.events.push(Event::Refusal {
            service: self.service,
            reason,
            peer: show(self.peer),
            detail,
        });
    }

    // -- admission and the PROXY header --------------------------------------------------

    fn start(&mut self, index: usize, cx: &mut Context) {
        if self.phase == Phase::Header {
            self.arm(index, cx);
            self.pump(index, cx);
        } else if self.admit(cx) {
            self.next_candidate(index, cx);
            self.pump(index, cx);
        }
    }

    /// Apply the service's ACLs and per-client limits to the client's address (from the
    /// PROXY header, if one came); false if it was refused, and closed.
    fn admit(&mut self, cx: &mut Context) -> bool {
        let Some(service) = cx.services.get_mut(&self.service) else {
            return true;
        };
        if !service.settings.limits.any() {
            return true;
        }
        let ip = canonical(self.peer.ip());
        match service
            .admission
            .check(&service.settings.limits, ip, cx.now)
        {
            Ok(()) => {
                self.admitted = true;
                true
            }
            Err((term, detail)) => {
                self.refusal(cx, term, detail);
                self.abort(cx, term);
                false
            }
        }
    }

    fn header_data(&mut self, index: usize, cx: &mut Context, data: &[u8]) {
        self.header.extend_from_slice(data);
        match proxy::parse(&self.header) {
            Err(error) => {
                self.refusal(cx, Term::BadProxyHeader, error.0);
                self.abort(cx, Term::BadProxyHeader);
            }
            Ok(None) => {}
            Ok(Some((header, length))) => {
                if let Some((source, destination)) = header.addresses {
                    self.peer = source;
                    self.destination = Some(destination);
                }
                let rest = self.header.split_off(length);
                self.header = Vec::new();
                self.phase = Phase::Waiting;
                self.armed = 0;
                if !rest.is_empty() {
                    self.client_bytes(&rest);
                    self.preface.extend_from_slice(&rest);
                }
                if self.admit(cx) {
                    self.next_candidate(index, cx);
                }
            }
        }
    }

    fn client_bytes(&mut self, data: &[u8]) {
        self.bytes_in += data.len() as u64;
        self.client.heard = Instant::now();
        if let Some(replay) = self.replay.as_mut() {
            if replay.len() + data.len() > self.settings.replay_limit {
                self.replay = None; // too much to replay: a failure from here on is final
            } else {
                replay.extend_from_slice(data);
            }
        }
        if let Some(cell) = &self.cell {
            cell.live_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }

    // -- connecting -----------------------------------------------------------------------

    /// Dial the next candidate, or refuse once none is left.
    fn next_candidate(&mut self, index: usize, cx: &mut Context) {
        let allowed = self.settings.retries + 1;
        let Some(service) = cx.services.get_mut(&self.service) else {
            self.refuse(index, cx, Term::NoBackend);
            return;
        };
        while self.attempts < allowed {
            if self.table.is_none() {
                let table = service.table.clone();
                self.order = table.candidates(&mut service.picker, &ip_text(self.peer));
                self.next = 0;
                self.table = Some(table);
            }
            let table = self.table.clone().expect("set above");
            let Some(&position) = self.order.get(self.next) else {
                break;
            };
            self.next += 1;
            let entry = &table.entries[position as usize];
            if (self.attempts > 0 || self.full) && service.table.position(entry.cell.slot).is_none()
            {
                continue; // (drained, removed or down since the list was made)
            }
            let limit = entry.cell.max_connections.load(Ordering::Relaxed);
            if limit > 0
                && (entry.cell.active.load(Ordering::Relaxed) >= i64::from(limit)
                    || (!service.queue.is_empty() && self.queued_until.is_none()))
            {
                // Busy, or its free slot belongs to the clients already waiting for one.
                self.full = true;
                continue;
            }
            self.attempts += 1;
            self.entry = Some(position as usize);
            self.cell = Some(entry.cell.clone());
            entry.cell.active.fetch_add(1, Ordering::Relaxed);
            self.dial_started = cx.now;
            match TcpStream::connect(entry.address) {
                Ok(mut stream) => {
                    let token = Token(index * 2 + 1);
                    if let Err(error) = cx.registry.register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.connect_failed(index, cx, error);
                        return;
                    }
                    let _ = stream.set_nodelay(true);
                    self.backend = Side::new(Some(stream), cx.now);
                    self.backend.writable = true; // speculative: on loopback it is often done
                    self.phase = Phase::Connecting;
                    self.arm(index, cx);
                    self.check_connected(index, cx);
                }
                Err(error) => self.connect_failed(index, cx, error),
            }
            return;
        }
        if self.full && self.attempts < allowed {
            self.enqueue(index, cx);
            return;
        }
        if self.attempts > 0 {
            cx.events.push(Event::NoBackend {
                service: self.service,
                peer: show(self.peer),
                attempts: self.attempts,
                error: self.last_error.clone(),
            });
        }
        let reason = if self.attempts > 0 {
            Term::ConnectFailed
        } else {
            Term::NoBackend
        };
        self.refuse(index, cx, reason);
    }

    /// Wait in the queue for a slot: at the back, or back at its place if it was woken for a
    /// slot someone took first (ahead of every client that joined after it).
    fn enqueue(&mut self, index: usize, cx: &mut Context) {
        let Some(service) = cx.services.get_mut(&self.service) else {
            self.refuse(index, cx, Term::NoBackend);
            return;
        };
        let limits = &self.settings.limits;
        if let Some(until) = self.queued_until {
            let place = service
                .queue
                .iter()
                .position(|&(_, _, other)| other > until)
                .unwrap_or(service.queue.len());
            service.queue.insert(place, (index, self.serial, until));
            service.queue_changed();
        } else if service.queue.len() < limits.queue_size {
            let until = cx.now + limits.queue_timeout;
            self.queued_until = Some(until);
            service.queue.push_back((index, self.serial, until));
            service.queue_changed();
        } else {
            self.refusal(cx, Term::QueueFull, "queue full".into());
            self.refuse(index, cx, Term::QueueFull);
            return;
        }
        self.in_queue = true;
        self.phase = Phase::Waiting;
        self.arm(index, cx);
    }

    fn leave_queue(&mut self, cx: &mut Context) {
        if !self.in_queue {
            return;
        }
        self.in_queue = false;
        if let Some(service) = cx.services.get_mut(&self.service) {
            service
                .queue
                .retain(|&(_, serial, _)| serial != self.serial);
            service.queue_changed();
        }
    }

    /// Woken from the queue (which it has left): try the candidates again.
    fn woken(&mut self, index: usize, cx: &mut Context) {
        self.in_queue = false;
        self.full = false;
        self.table = None;
        self.next_candidate(index, cx);
        self.pump(index, cx);
    }

    fn release(&mut self) {
        if let Some(cell) = self.cell.take() {
            cell.active.fetch_sub(1, Ordering::Relaxed);
            if cell.max_connections.load(Ordering::Relaxed) > 0 {
                self.freed = true; // (the loop wakes the head of the queue)
            }
        }
        self.entry = None;
    }

    fn stop_connecting(&mut self, cx: &mut Context) {
        self.leave_queue(cx);
        if self.phase == Phase::Connecting {
            self.backend.stream = None;
            self.release();
        }
        self.phase = Phase::Waiting;
    }

    fn connect_failed(&mut self, index: usize, cx: &mut Context, error: io::Error) {
        let slot = self.slot().unwrap_or(0);
        self.backend.stream = None;
        self.release();
        self.phase = Phase::Waiting;
        self.last_error = describe(&error);
        if resource_error(&error) {
            // Our shortage, not the backend's: blame no one, and do not retry.
            self.refusal(cx, Term::NoResources, self.last_error.clone());
            self.refuse(index, cx, Term::NoResources);
            return;
        }
        cx.events.push(Event::ConnectFailed {
            service: self.service,
            conn: self.serial,
            slot,
            error: self.last_error.clone(),
            refused: error.kind() == ErrorKind::ConnectionRefused,
        });
        self.mark_failing(slot);
        if !self.client.open() {
            self.maybe_finish(cx);
            return;
        }
        self.next_candidate(index, cx);
    }

    fn mark_failing(&mut self, slot: u32) {
        self.reported = true;
        if let Some(table) = &self.table
            && let Some(position) = table.position(slot)
        {
            table.entries[position]
                .cell
                .failing
                .store(true, Ordering::Relaxed);
        }
    }

    /// The connect may have completed: if so, start relaying.
    fn check_connected(&mut self, index: usize, cx: &mut Context) {
        if self.phase != Phase::Connecting || !self.backend.writable {
            return;
        }
        let Some(stream) = self.backend.stream.as_ref() else {
            return;
        };
        match stream.take_error() {
            Ok(Some(error)) | Err(error) => return self.connect_failed(index, cx, error),
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTCONN)
                    || e.kind() == ErrorKind::WouldBlock =>
            {
                self.backend.writable = false; // not yet: wait for the event
                return;
            }
            Err(error) => return self.connect_failed(index, cx, error),
        }
        self.connected(index, cx);
    }

    fn connected(&mut self, index: usize, cx: &mut Context) {
        self.connected = true;
        self.phase = Phase::Relaying;
        self.armed = 0;
        self.connect_ms = Instant::now()
            .saturating_duration_since(self.dial_started)
            .as_secs_f64()
            * 1000.0;
        if let Some(cell) = &self.cell {
            cell.total.fetch_add(1, Ordering::Relaxed);
        }
        if !self.client.open() {
            self.backend.close = true;
            return;
        }
        let entry = self
            .entry
            .and_then(|e| self.table.as_ref().map(|t| &t.entries[e]));
        let version = entry
            .map(|e| e.send_proxy)
            .filter(|&v| v != 0)
            .unwrap_or(self.settings.send_proxy);
        if let Some(cell) = &self.cell {
            cell.live_in.fetch_add(self.bytes_in, Ordering::Relaxed);
        }
        let mut first = Vec::new();
        if version != 0 {
            if self.destination.is_none() {
                self.destination = self
                    .client
                    .stream
                    .as_ref()
                    .and_then(|s| s.local_addr().ok());
            }
            if let Some(destination) = self.destination {
                first = proxy::build(version, self.peer, destination);
            }
        }
        match &self.replay {
            Some(replay) if !replay.is_empty() => first.extend_from_slice(replay),
            _ => first.extend_from_slice(&self.preface),
        }
        self.preface = Vec::new();
        if !first.is_empty()
            && let Err(error) = self.backend.send(&first)
        {
            self.backend_lost(index, cx, Some(error));
            return;
        }
        self.relaying_since = cx.now;
        self.client.heard = cx.now;
        self.backend.heard = cx.now;
        if self.client.eof {
            self.backend.shut = true;
        }
        self.arm(index, cx);
    }

    // -- refusing -------------------------------------------------------------------------

    /// Send the optional message, then close without resetting the client: its bytes are
    /// read and dropped until it closes, for at most LINGER (nginx's lingering close).
    fn refuse(&mut self, index: usize, cx: &mut Context, reason: Term) {
        self.termination = Some(reason);
        self.phase = Phase::Refusing;
        self.replay = None;
        if !self.client.open() {
            self.maybe_finish(cx);
            return;
        }
        if let Some(message) = self.settings.no_backend_message.clone() {
            let _ = self.client.send(&message);
        }
        self.client.shut = true;
        self.linger_until = Some(cx.now + LINGER);
        self.armed = 0;
        self.arm(index, cx);
    }

    // -- moving bytes ---------------------------------------------------------------------

    /// Make every step the sockets allow now.
    fn pump(&mut self, index: usize, cx: &mut Context) {
        for _ in 0..64 {
            if self.finished {
                return;
            }
            let mut moved = false;
            // Writes first: what a side takes may let the other be read again.
            match self.client.flush() {
                Ok(true) if self.client.close => {}
                Ok(_) => {}
                Err(error) => {
                    self.client.stream = None;
                    self.client_lost(index, cx, Some(error));
                    continue;
                }
            }
            if self.connected {
                if let Err(error) = self.backend.flush() {
                    self.backend.stream = None;
                    self.backend_lost(index, cx, Some(error));
                    continue;
                }
            } else if self.phase == Phase::Connecting {
                self.check_connected(index, cx);
                if self.phase == Phase::Relaying {
                    moved = true;
                }
            }
            if self.client.open() && self.client.readable && !self.client.eof && !self.client.close
            {
                moved |= self.read_client(index, cx);
            }
            if self.connected
                && self.backend.open()
                && self.backend.readable
                && !self.backend.eof
                && !self.backend.close
            {
                moved |= self.read_backend(index, cx);
            }
            // A side past its EOF is still read once per event, to learn of a reset at once
            // (nothing else can come from it).
            if self.client.open()
                && self.client.readable
                && self.client.eof
                && let Some(error) = probe(&mut self.client)
            {
                self.client_lost(index, cx, Some(error));
                moved = true;
            }
            if self.connected
                && self.backend.open()
                && self.backend.readable
                && self.backend.eof
                && let Some(error) = probe(&mut self.backend)
            {
                self.backend.stream = None;
                self.backend_lost(index, cx, Some(error));
                moved = true;
            }
            if !moved {
                break;
            }
        }
        if !self.client.open() && !self.finished && self.termination.is_none() {
            self.client_lost(index, cx, None);
        }
        self.maybe_finish(cx);
    }

    /// Read the client once, if its bytes have somewhere to go; true if anything happened.
    fn read_client(&mut self, index: usize, cx: &mut Context) -> bool {
        let room = match self.phase {
            Phase::Relaying => !self.backend.pending(),
            Phase::Connecting | Phase::Waiting => self.preface.len() < PREFACE_MAX,
            Phase::Header | Phase::Refusing => true,
        };
        if !room {
            return false;
        }
        if self.phase == Phase::Relaying && self.backend.pipe.is_some() {
            return self.splice_client(index, cx);
        }
        let mut buf = std::mem::take(cx.scratch);
        // (no more than a header while one is expected: the rest is the client's data)
        let limit = if self.phase == Phase::Header {
            512
        } else {
            buf.len()
        };
        let stream = self.client.stream.as_mut().expect("open");
        let result = stream.read(&mut buf[..limit]);
        let moved = match result {
            Ok(0) => {
                self.client.readable = false;
                self.client_eof(index, cx);
                true
            }
            Ok(n) => {
                let data = &buf[..n];
                match self.phase {
                    Phase::Header => self.header_data(index, cx, data),
                    Phase::Refusing => {}
                    Phase::Connecting | Phase::Waiting => {
                        self.client_bytes(data);
                        self.preface.extend_from_slice(data);
                    }
                    Phase::Relaying => {
                        self.client_bytes(data);
                        if n >= SPLICE_FROM && self.replay.is_none() {
                            self.backend.pipe = cx.pipes.take(); // (a bulk transfer: splice)
                        }
                        if let Err(error) = self.backend.send(data) {
                            self.backend.stream = None;
                            self.backend_lost(index, cx, Some(error));
                        }
                    }
                }
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.client.readable = false;
                false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(error) => {
                self.client.readable = false;
                self.client.stream = None;
                self.client_lost(index, cx, Some(error));
                true
            }
        };
        *cx.scratch = buf;
        moved
    }

    /// Read the backend once, if the client is taking its bytes; true if anything happened.
    fn read_backend(&mut self, index: usize, cx: &mut Context) -> bool {
        if self.client.pending() || !self.client.open() {
            return false;
        }
        if self.client.pipe.is_some() {
            return self.splice_backend(index, cx);
        }
        let mut buf = std::mem::take(cx.scratch);
        let stream = self.backend.stream.as_mut().expect("open");
        let result = stream.read(&mut buf);
        let moved = match result {
            Ok(0) => {
                self.backend.readable = false;
                self.backend_eof(index, cx);
                true
            }
            Ok(n) => {
                if !self.answered {
                    self.answered = true;
                    self.replay = None;
                    if let Some(cell) = &self.cell
                        && cell.failing.swap(false, Ordering::Relaxed)
                    {
                        cx.events.push(Event::Answered {
                            service: self.service,
                            slot: cell.slot,
                        });
                    }
                }
                self.bytes_out += n as u64;
                self.backend.heard = cx.now;
                if let Some(cell) = &self.cell {
                    cell.live_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                if n >= SPLICE_FROM {
                    self.client.pipe = cx.pipes.take(); // (a bulk transfer: splice)
                }
                if let Err(error) = self.client.send(&buf[..n]) {
                    self.client.stream = None;
                    self.client_lost(index, cx, Some(error));
                }
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.backend.readable = false;
                false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(error) => {
                self.backend.readable = false;
                self.backend.stream = None;
                self.backend_lost(index, cx, Some(error));
                true
            }
        };
        *cx.scratch = buf;
        moved
    }

    /// Splice what the client sent on to the backend; true if anything happened.
    fn splice_client(&mut self, index: usize, cx: &mut Context) -> bool {
        let from = self.client.stream.as_ref().map(|s| s.as_raw_fd());
        let to = self.backend.stream.as_ref().map(|s| s.as_raw_fd());
        let (Some(from), Some(to), Some(pipe)) = (from, to, self.backend.pipe.as_mut()) else {
            return false;
        };
        match pipe.fill(from) {
            Ok(Moved::Bytes(n)) => {
                self.bytes_in += n as u64;
                self.client.heard = cx.now;
                if let Some(cell) = &self.cell {
                    cell.live_in.fetch_add(n as u64, Ordering::Relaxed);
                }
                match pipe.drain(to) {
                    Ok(true) => {
                        if n < COPY_BELOW {
                            let pipe = self.backend.pipe.take().expect("spliced through");
                            cx.pipes.give_back(pipe); // (small chunks again: copy)
                        }
                    }
                    Ok(false) => self.backend.writable = false,
                    Err(error) => {
                        self.backend.stream = None;
                        self.backend_lost(index, cx, Some(error));
                    }
                }
                true
            }
            Ok(Moved::End) => {
                self.client.readable = false;
                self.client_eof(index, cx);
                true
            }
            Ok(Moved::Again) => {
                self.client.readable = false;
                false
            }
            Err(error) => {
                self.client.stream = None;
                self.client_lost(index, cx, Some(error));
                true
            }
        }
    }

    /// Splice what the backend sent on to the client; true if anything happened.
    fn splice_backend(&mut self, index: usize, cx: &mut Context) -> bool {
        let from = self.backend.stream.as_ref().map(|s| s.as_raw_fd());
        let to = self.client.stream.as_ref().map(|s| s.as_raw_fd());
        let (Some(from), Some(to), Some(pipe)) = (from, to, self.client.pipe.as_mut()) else {
            return false;
        };
        match pipe.fill(from) {
            Ok(Moved::Bytes(n)) => {
                self.bytes_out += n as u64;
                self.backend.heard = cx.now;
                if let Some(cell) = &self.cell {
                    cell.live_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                match pipe.drain(to) {
                    Ok(true) => {
                        if n < COPY_BELOW {
                            let pipe = self.client.pipe.take().expect("spliced through");
                            cx.pipes.give_back(pipe); // (small chunks again: copy)
                        }
                    }
                    Ok(false) => self.client.writable = false,
                    Err(error) => {
                        self.client.stream = None;
                        self.client_lost(index, cx, Some(error));
                    }
                }
                true
            }
            Ok(Moved::End) => {
                self.backend.readable = false;
                self.backend_eof(index, cx);
                true
            }
            Ok(Moved::Again) => {
                self.backend.readable = false;
                false
            }
            Err(error) => {
                self.backend.stream = None;
                self.backend_lost(index, cx, Some(error));
                true
            }
        }
    }

    /// Its pipes back to the loop's (at the end, or when a backend is abandoned).
    fn give_back_pipes(&mut self, cx: &mut Context, backend_only: bool) {
        if let Some(pipe) = self.backend.pipe.take() {
            cx.pipes.give_back(pipe);
        }
        if !backend_only && let Some(pipe) = self.client.pipe.take() {
            cx.pipes.give_back(pipe);
        }
    }

    // -- ends of each side ----------------------------------------------------------------

    fn client_eof(&mut self, index: usize, cx: &mut Context) {
        match self.phase {
            Phase::Header | Phase::Refusing => {
                // Gone before its PROXY header, or refused and answered: close.
                self.client.close = true;
                if self.phase == Phase::Header {
                    self.termination.get_or_insert(Term::ClientAborted);
                }
                self.client.out.clear();
                self.client.stream = None;
                self.maybe_finish(cx);
                return;
            }
            _ => {}
        }
        self.client.eof = true;
        if self.termination.is_none() && !self.backend.eof {
            self.termination = Some(Term::ClientClosed);
        }
        if self.connected && self.backend.open() {
            if self.backend.eof {
                self.end(index, cx, None);
            } else {
                self.backend.shut = true;
            }
        }
    }

    fn client_lost(&mut self, index: usize, cx: &mut Context, error: Option<io::Error>) {
        let _ = index;
        self.client.stream = None;
        self.client.out.clear();
        match self.termination {
            None => {
                self.termination = Some(if !self.connected {
                    Term::ClientAborted
                } else if error.is_some() {
                    Term::ClientReset
                } else {
                    Term::ClientClosed
                });
            }
            Some(t) if error.is_some() && t.finished() => {
                self.termination = Some(Term::ClientReset)
            }
            _ => {}
        }
        if self.connecting() {
            self.stop_connecting(cx);
        }
        // A reset too: what the client sent before it goes on to the backend, then a close.
        if self.connected && self.backend.open() {
            self.backend.close = true;
        }
        self.maybe_finish(cx);
    }

    /// Retry elsewhere when the backend failed before anything was lost; true if so.
    fn failed_early(&mut self, index: usize, cx: &mut Context, error: Option<&io::Error>) -> bool {
        if self.blamed {
            return false; // (its EOF was, and now its reset: one failure, not two)
        }
        let unanswered = !self.answered && (error.is_some() || !self.client.eof);
        if !unanswered || !self.client.open() {
            return false; // (a client that left first is no fault of the backend's)
        }
        if error.is_none()
            && self.bytes_in == 0
            && cx.now.saturating_duration_since(self.relaying_since) > self.settings.connect
        {
            return false; // a client that sent nothing, closed by the backend's idle timeout
        }
        let what = error.map(describe).unwrap_or_else(|| "closed".into());
        self.last_error = format!("{what} before answering");
        self.blamed = true;
        let slot = self.slot().unwrap_or(0);
        self.mark_failing(slot);
        let over = self.termination.is_some_and(|t| t != Term::ClientClosed);
        let lost = self.bytes_in > 0 && self.replay.is_none();
        let abandoned = !over && !lost;
        cx.events.push(Event::EarlyFailed {
            service: self.service,
            conn: self.serial,
            slot,
            error: what,
            client: ip_text(self.peer),
            forwarded: self.bytes_in > 0,
            abandoned,
        });
        if !abandoned {
            return false;
        }
        // Abandon this backend connection and walk on down the candidates.
        if let Some(cell) = &self.cell {
            cell.live_in.fetch_sub(
                self.bytes_in.min(cell.live_in.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            cell.live_out.fetch_sub(
                self.bytes_out.min(cell.live_out.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        self.release();
        self.give_back_pipes(cx, true);
        self.backend = Side::new(None, cx.now);
        self.connected = false;
        self.blamed = false;
        self.bytes_out = 0;
        self.phase = Phase::Waiting;
        if let Some(replay) = &self.replay {
            self.preface = replay.clone();
        }
        self.next_candidate(index, cx);
        true
    }

    fn backend_eof(&mut self, index: usize, cx: &mut Context) {
        if self.failed_early(index, cx, None) {
            return;
        }
        self.backend.eof = true;
        if self.termination.is_none() && !self.client.eof {
            self.termination = Some(Term::BackendClosed);
        }
        if self.client.open() {
            if self.client.eof {
                self.end(index, cx, None);
            } else {
                self.client.shut = true;
            }
        }
    }

    fn backend_lost(&mut self, index: usize, cx: &mut Context, error: Option<io::Error>) {
        if self.failed_early(index, cx, error.as_ref()) {
            return;
        }
        self.backend.stream = None;
        self.backend.out.clear();
        match self.termination {
            None => {
                self.termination = Some(if error.is_some() {
                    Term::BackendReset
                } else {
                    Term::BackendClosed
                });
            }
            Some(t) if error.is_some() && t.finished() => {
                self.termination = Some(Term::BackendReset)
            }
            _ => {}
        }
        // (after a reset too: what the backend sent is delivered, then a close)
        if self.client.open() {
            self.client.close = true;
        }
    }

    fn maybe_finish(&mut self, cx: &mut Context) {
        if self.finished || self.client.open() || self.backend.open() {
            return;
        }
        if self.phase == Phase::Connecting {
            return;
        }
        self.finished = true;
        if self.admitted
            && let Some(service) = cx.services.get_mut(&self.service)
        {
            self.admitted = false;
            service.admission.left(canonical(self.peer.ip()));
        }
        self.give_back_pipes(cx, false);
        let slot = if self.connected { self.slot() } else { None };
        let used = if self.connected {
            self.cell.clone()
        } else {
            None
        };
        if let Some(cell) = &self.cell
            && self.connected
        {
            cell.live_in.fetch_sub(
                self.bytes_in.min(cell.live_in.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            cell.live_out.fetch_sub(
                self.bytes_out.min(cell.live_out.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        self.release();
        let record = Record {
            service: self.service,
            conn: self.serial,
            client: show(self.peer),
            slot,
            connect_ms: self.connect_ms,
            duration_ms: cx.now.saturating_duration_since(self.started).as_secs_f64() * 1000.0,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            retries: self.attempts.saturating_sub(1),
            termination: self.termination.unwrap_or(Term::ClientClosed),
        };
        if self.settings.access == 0 || self.reported {
            cx.events.push(Event::Finished(record));
            return;
        }
        {
            let mut figures = cx.shared.figures.lock().unwrap_or_else(|e| e.into_inner());
            figures
                .entry(Key::Service(self.service))
                .or_default()
                .add(&record);
            if let Some(slot) = slot {
                figures.entry(Key::Backend(slot)).or_default().add(&record);
            }
        }
        if self.settings.access != 1 {
            return;
        }
        let backend = used
            .as_ref()
            .and_then(|cell| cell.label.get())
            .map_or("-", |label| &**label);
        let text = match cx.events.last_mut() {
            Some(Event::Lines { service, text }) if *service == self.service => {
                text.push('\n');
                text
            }
            _ => {
                cx.events.push(Event::Lines {
                    service: self.service,
                    text: String::with_capacity(256),
                });
                match cx.events.last_mut() {
                    Some(Event::Lines { text, .. }) => text,
                    _ => unreachable!(),
                }
            }
        };
        access_line(text, cx.clock, &self.settings.access_name, backend, &record);
    }

    /// A readiness event for one of its sockets.
    fn ready(&mut self, index: usize, cx: &mut Context, backend: bool, event: &mio::event::Event) {
        let side = if backend {
            &mut self.backend
        } else {
            &mut self.client
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            side.readable = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            side.writable = true;
        }
        if backend && self.phase == Phase::Connecting && event.is_error() {
            let error = self
                .backend
                .stream
                .as_ref()
                .and_then(|s| s.take_error().ok().flatten())
                .unwrap_or_else(|| io::Error::from(ErrorKind::ConnectionRefused));
            self.connect_failed(index, cx, error);
        }
        self.pump(index, cx);
    }
}

/// The loop of one data-plane thread.
pub struct Loop {
    poll: Poll,
    shared: Arc<Shared>,
    services: HashMap<u32, ServiceState>,
    conns: Slab<Conn>,
    timers: BinaryHeap<Reverse<(u64, usize, u64)>>,
    batch: Vec<Event>,
    scratch: Vec<u8>,
    pipes: Pipes,
    epoch: Instant,
    serial: u64,
    open: usize,          // connections in all services
    limited: Option<u32>, // at the limit: the service that found it so
    clock: Clock,
}

impl Loop {
    pub fn new() -> io::Result<(Loop, Arc<Shared>)> {
        let poll = Poll::new()?;
        let shared = Arc::new(Shared::new(poll.registry())?);
        let looped = Loop {
            poll,
            shared: shared.clone(),
            services: HashMap::new(),
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            batch: Vec::new(),
            scratch: vec![0u8; SCRATCH],
            pipes: Pipes::new(0),
            epoch: Instant::now(),
            serial: 0,
            open: 0,
            limited: None,
            clock: Clock::default(),
        };
        Ok((looped, shared))
    }

    /// Serve until told to stop.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.timeout();
            if let Err(error) = self.poll.poll(&mut events, timeout)
                && error.kind() != ErrorKind::Interrupted
            {
                eprintln!("balancer data plane: poll failed: {error}");
                return;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        if !self.commands(now) {
                            self.shared.publish(&mut self.batch);
                            return;
                        }
                    }
                    Token(t) if t >= LISTENERS => {
                        self.accept(((t - LISTENERS) / PER_SERVICE) as u32, now)
                    }
                    Token(t) => self.dispatch(t / 2, now, |conn, index, cx| {
                        conn.ready(index, cx, t % 2 == 1, event)
                    }),
                }
            }
            self.expire(Instant::now());
            self.shared.publish(&mut self.batch);
        }
    }

    fn timeout(&self) -> Option<Duration> {
        let mut wait = Duration::from_secs(1);
        if let Some(Reverse((ms, _, _))) = self.timers.peek() {
            let at = self.epoch + Duration::from_millis(*ms);
            wait =
                wait.min(at.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
        }
        for service in self.services.values() {
            if let Some(until) = service.backoff_until {
                wait = wait.min(until.saturating_duration_since(Instant::now()));
            }
        }
        Some(wait)
    }

    /// Run `f` on one connection, catching a panic there: that connection is dropped and the
    /// panic reported, and the loop carries on.
    fn dispatch(
        &mut self,
        index: usize,
        now: Instant,
        f: impl FnOnce(&mut Conn, usize, &mut Context),
    ) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let mut cx = Context {
            registry: self.poll.registry(),
            services: &mut self.services,
            timers: &mut self.timers,
            events: &mut self.batch,
            scratch: &mut self.scratch,
            pipes: &mut self.pipes,
            shared: &self.shared,
            clock: &mut self.clock,
            epoch: self.epoch,
            now,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| f(conn, index, &mut cx)));
        if self.scratch.len() != SCRATCH {
            self.scratch = vec![0u8; SCRATCH]; // (a panic while it was taken out)
        }
        let freed = std::mem::take(&mut conn.freed);
        let service_id = conn.service;
        match outcome {
            Ok(()) => {
                if conn.finished {
                    let conn = self.conns.remove(index);
                    if let Some(service) = self.services.get(&conn.service) {
                        service.counts.open.fetch_sub(1, Ordering::Relaxed);
                    }
                    self.closed_one(now, conn.service);
                }
                if freed {
                    self.wake(service_id, 1, now);
                }
            }
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                let conn = self.conns.remove(index);
                if let Some(cell) = &conn.cell {
                    cell.active.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(service) = self.services.get_mut(&conn.service) {
                    service
                        .queue
                        .retain(|&(_, serial, _)| serial != conn.serial);
                    service.queue_changed();
                }
                for _ in [&conn.client.pipe, &conn.backend.pipe]
                    .iter()
                    .filter(|p| p.is_some())
                {
                    self.pipes.lost();
                }
                if let Some(service) = self.services.get_mut(&conn.service) {
                    service.counts.open.fetch_sub(1, Ordering::Relaxed);
                    if conn.admitted {
                        service.admission.left(canonical(conn.peer.ip()));
                    }
                }
                self.closed_one(now, conn.service);
                self.batch.push(Event::Panicked {
                    service: conn.service,
                    peer: show(conn.peer),
                    reason,
                });
            }
        }
    }

    /// Give free slots to the first `count` clients of a service's queue, each trying the
    /// candidates again and going back to its place if it finds none.
    fn wake(&mut self, id: u32, count: usize, now: Instant) {
        let Some(service) = self.services.get_mut(&id) else {
            return;
        };
        let count = count.min(service.queue.len());
        let heads: Vec<(usize, u64, Instant)> = service.queue.drain(..count).collect();
        service.queue_changed();
        for (index, serial, _) in heads {
            if self
                .conns
                .get(index)
                .is_some_and(|c| c.serial == serial && c.in_queue)
            {
                self.dispatch(index, now, |conn, index, cx| conn.woken(index, cx));
            }
        }
    }

    /// After a table swap (a health change, a reload, an admin change): as many of the
    /// queue as the capped backends have room for (all, if one has no cap) try again.
    fn wake_for_room(&mut self, id: u32, now: Instant) {
        let Some(service) = self.services.get(&id) else {
            return;
        };
        if service.queue.is_empty() {
            return;
        }
        let mut room = 0usize;
        for entry in &service.table.entries {
            let limit = entry.cell.max_connections.load(Ordering::Relaxed);
            if limit == 0 {
                room = usize::MAX;
                break;
            }
            let active = entry.cell.active.load(Ordering::Relaxed).max(0) as u64;
            room = room.saturating_add(u64::from(limit).saturating_sub(active) as usize);
        }
        self.wake(id, room, now);
    }

    fn expire(&mut self, now: Instant) {
        let ms = ((now - self.epoch).as_millis() as u64).max(1);
        while let Some(Reverse((at, index, serial))) = self.timers.peek().copied() {
            if at > ms {
                break;
            }
            self.timers.pop();
            let current = self
                .conns
                .get(index)
                .is_some_and(|c| c.serial == serial && c.armed == at);
            if current {
                self.dispatch(index, now, |conn, index, cx| {
                    conn.expired(index, cx);
                    conn.pump(index, cx);
                });
            }
        }
        let due: Vec<u32> = self
            .services
            .iter()
            .filter(|(_, s)| s.backoff_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(service) = self.services.get_mut(&id) {
                service.backoff_until = None;
            }
            self.accept(id, now);
        }
    }

    /// A connection of service `id` gone: below a limit again, accept what waits in the
    /// backlogs.
    fn closed_one(&mut self, now: Instant, id: u32) {
        self.open -= 1;
        if let Some(service) = self.services.get_mut(&id)
            && service.full
            && !service.at_max()
        {
            service.full = false;
            self.batch.push(Event::Full {
                service: id,
                on: false,
            });
            self.accept(id, now);
        }
        if let Some(service) = self.limited
            && self.open < self.shared.limit.load(Ordering::Relaxed)
        {
            self.limited = None;
            self.batch.push(Event::Limited { service, on: false });
            let ids: Vec<u32> = self.services.keys().copied().collect();
            for id in ids {
                self.accept(id, now);
            }
        }
    }

    fn accept(&mut self, id: u32, now: Instant) {
        loop {
            let limit = self.shared.limit.load(Ordering::Relaxed);
            if self.limited.is_some() {
                return;
            }
            if limit > 0 && self.open >= limit {
                self.limited = Some(id);
                self.batch.push(Event::Limited {
                    service: id,
                    on: true,
                });
                return;
            }
            let Some(service) = self.services.get_mut(&id) else {
                return;
            };
            if !service.accepting || service.backoff_until.is_some() || service.full {
                return;
            }
            if service.at_max() {
                service.full = true;
                self.batch.push(Event::Full {
                    service: id,
                    on: true,
                });
                return;
            }
            let mut accepted = None;
            let mut failure = None;
            for listener in &service.listeners {
                loop {
                    match listener.accept() {
                        Ok(pair) => accepted = Some(pair),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if resource_error(&e) => failure = Some(e),
                        Err(_) => continue, // (a client that reset before it was accepted)
                    }
                    break;
                }
                if accepted.is_some() || failure.is_some() {
                    break;
                }
            }
            if let Some(e) = failure {
                // Out of descriptors: leave clients in the backlog a moment, and say so.
                service.backoff_until = Some(now + ACCEPT_BACKOFF);
                self.batch.push(Event::Exhausted {
                    service: id,
                    error: describe(&e),
                });
                return;
            }
            let Some((mut stream, peer)) = accepted else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let settings = service.settings.clone();
            let closing = service.closing;
            service.counts.open.fetch_add(1, Ordering::Relaxed);
            self.open += 1;
            self.serial += 1;
            let serial = self.serial;
            let entry = self.conns.vacant_entry();
            let index = entry.key();
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(index * 2),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                service.counts.open.fetch_sub(1, Ordering::Relaxed);
                self.open -= 1;
                continue;
            }
            entry.insert(Conn::new(serial, id, settings, stream, peer, now));
            self.dispatch(index, now, |conn, index, cx| {
                if closing {
                    conn.abort(cx, Term::Shutdown);
                } else {
                    conn.start(index, cx);
                }
            });
        }
    }

    /// Apply Python's commands; false once told to stop.
    fn commands(&mut self, now: Instant) -> bool {
        let commands = std::mem::take(
            &mut *self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for command in commands {
            match command {
                Command::AddService {
                    id,
                    listeners,
                    settings,
                    counts,
                } => {
                    self.pipes.limit = self.shared.pipe_limit.load(Ordering::Relaxed);
                    let mut registered = Vec::new();
                    for (k, listener) in listeners.into_iter().enumerate().take(PER_SERVICE) {
                        let _ = listener.set_nonblocking(true);
                        let mut listener = TcpListener::from_std(listener);
                        let token = Token(LISTENERS + id as usize * PER_SERVICE + k);
                        let _ =
                            self.poll
                                .registry()
                                .register(&mut listener, token, Interest::READABLE);
                        registered.push(listener);
                    }
                    let table = Arc::new(Table::new(
                        crate::select::Algorithm::RoundRobin,
                        Vec::new(),
                        Vec::new(),
                        Vec::new(),
                    ));
                    let previous = self.services.insert(
                        id,
                        ServiceState {
                            listeners: registered,
                            settings,
                            table,
                            picker: Picker::new(0x9e37_79b9_7f4a_7c15 ^ id as u64),
                            accepting: false,
                            closing: false,
                            backoff_until: None,
                            counts,
                            admission: Admission::default(),
                            full: false,
                            queue: VecDeque::new(),
                        },
                    );
                    if let Some(previous) = previous
                        && let Some(s) = self.services.get_mut(&id)
                    {
                        s.table = previous.table;
                        s.admission = previous.admission;
                        s.queue = previous.queue;
                    }
                }
                Command::Configure { id, settings } => {
                    if let Some(service) = self.services.get_mut(&id) {
                        service.settings = settings;
                        if service.full && !service.at_max() {
                            service.full = false;
                            self.batch.push(Event::Full {
                                service: id,
                                on: false,
                            });
                            self.accept(id, now);
                        }
                    }
                }
                Command::Suspect { id, ip, for_ } => {
                    if let Some(service) = self.services.get_mut(&id) {
                        let until = now + for_;
                        service
                            .admission
                            .suspect(&service.settings.limits, canonical(ip), until);
                    }
                }
                Command::SetTable { id, table } => {
                    if let Some(service) = self.services.get_mut(&id) {
                        service.table = table;
                    }
                    self.wake_for_room(id, now);
                }
                Command::Accept { id, on } => {
                    if let Some(service) = self.services.get_mut(&id) {
                        service.accepting = on;
                    }
                    if on {
                        self.accept(id, now);
                    }
                }
                Command::CloseListener { id } => {
                    if let Some(service) = self.services.get_mut(&id) {
                        service.closing = true;
                        service.accepting = false;
                        for mut listener in std::mem::take(&mut service.listeners) {
                            let _ = self.poll.registry().deregister(&mut listener);
                        }
                    }
                }
                Command::EndAll { id } => {
                    let indices: Vec<usize> = self
                        .conns
                        .iter()
                        .filter(|(_, c)| c.service == id)
                        .map(|(i, _)| i)
                        .collect();
                    for index in indices {
                        self.dispatch(index, now, |conn, index, cx| {
                            conn.end(index, cx, Some(Term::Shutdown))
                        });
                    }
                }
                Command::Stop => return false,
            }
        }
        true
    }
}

/// Let a std listener made from a descriptor Python owns be used here: a duplicate, so
/// either side may close its own.
pub fn listener_from_fd(fd: RawFd) -> io::Result<std::net::TcpListener> {
    // SAFETY: dup takes a descriptor number and makes a new one, checked before use.
    let copy = unsafe { libc::dup(fd) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a new descriptor owned by nothing else; the listener now owns it.
    Ok(unsafe { std::net::TcpListener::from_raw_fd(copy) })
}
