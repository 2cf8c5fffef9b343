//! The harness's Rust reference relays: the least a relay can do on each runtime the data
//! plane could be built on, with no feature at all (round robin, no timeouts, no limits, no
//! log), to show what the features cost and which runtime costs least.
//!
//! `mio`: one epoll loop, a slab of connections, edge-triggered readiness registered once,
//! a read tried right after accept and a write right after connect (speculative I/O).
//! `tokio`: a current-thread runtime, a task per connection, `copy_bidirectional`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const BUFFER: usize = 64 * 1024;
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// One direction of a relayed connection: bytes read from `from`, not yet written to its peer.
struct Half {
    pending: Vec<u8>,
    eof: bool,  // `from` sent its EOF
    shut: bool, // the EOF was passed on (shutdown of the peer's write side)
}

struct Side {
    stream: TcpStream,
    peer: usize,
    half: Half, // what this side read, for its peer
}

/// Runs until `stopped` (asked after a signal interrupts the wait, or every STOP_CHECK) says so.
pub fn run_mio(
    port: u16,
    backends: Vec<SocketAddr>,
    ready: impl FnOnce(u16),
    stopped: impl Fn() -> bool,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    ready(listener.local_addr()?.port());
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut sides: Vec<Option<Side>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buffer = vec![0u8; BUFFER];
    let mut next = 0usize;
    loop {
        match poll.poll(&mut events, Some(STOP_CHECK)) {
            Err(error) if error.kind() != ErrorKind::Interrupted => return Err(error),
            // A signal may come without interrupting the wait (under valgrind): asked also
            // when the wait times out.
            Err(_) => {
                if stopped() {
                    return Ok(());
                }
                continue;
            }
            Ok(()) if events.is_empty() && stopped() => return Ok(()),
            Ok(()) => {}
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    let (client, _) = match listener.accept() {
                        Ok(pair) => pair,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let address = backends[next % backends.len()];
                    next = next.wrapping_add(1);
                    let Ok(backend) = TcpStream::connect(address) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = backend.set_nodelay(true);
                    let a = free.pop().unwrap_or_else(|| {
                        sides.push(None);
                        sides.len() - 1
                    });
                    let b = free.pop().unwrap_or_else(|| {
                        sides.push(None);
                        sides.len() - 1
                    });
                    let new = |stream, peer| Side {
                        stream,
                        peer,
                        half: Half {
                            pending: Vec::new(),
                            eof: false,
                            shut: false,
                        },
                    };
                    sides[a] = Some(new(client, b));
                    sides[b] = Some(new(backend, a));
                    for i in [a, b] {
                        let side = sides[i].as_mut().expect("just placed");
                        poll.registry().register(
                            &mut side.stream,
                            Token(i),
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                    }
                    // Speculative: the client may have spoken already.
                    pump(&mut sides, &mut free, &poll, a, &mut buffer);
                }
                continue;
            }
            let i = event.token().0;
            if sides.get(i).is_none_or(|s| s.is_none()) {
                continue;
            }
            let peer = sides[i].as_ref().map(|s| s.peer).unwrap_or(usize::MAX);
            if event.is_writable() && peer != usize::MAX {
                flush(&mut sides, &mut free, &poll, peer, &mut buffer);
            }
            if sides[i].is_some() && (event.is_readable() || event.is_read_closed()) {
                pump(&mut sides, &mut free, &poll, i, &mut buffer);
            }
        }
    }
}

/// Read all `i` has and write it to its peer; stop (leaving the rest in the kernel) when the
/// peer's socket is full: backpressure.
fn pump(sides: &mut [Option<Side>], free: &mut Vec<usize>, poll: &Poll, i: usize, buf: &mut [u8]) {
    loop {
        let Some(side) = sides[i].as_mut() else {
            return;
        };
        if !side.half.pending.is_empty() || side.half.eof {
            return;
        }
        match side.stream.read(buf) {
            Ok(0) => {
                side.half.eof = true;
                break;
            }
            Ok(n) => {
                let peer = side.peer;
                let Some(target) = sides[peer].as_mut() else {
                    return;
                };
                match write_some(&mut target.stream, &buf[..n]) {
                    Ok(written) if written < n => {
                        let side = sides[i].as_mut().expect("present");
                        side.half.pending.extend_from_slice(&buf[written..n]);
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        close(sides, free, poll, i);
                        return;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                close(sides, free, poll, i);
                return;
            }
        }
    }
    finish(sides, free, poll, i);
}

/// The peer of `i` can take more: send what `i` left pending, then read `i` again.
fn flush(sides: &mut [Option<Side>], free: &mut Vec<usize>, poll: &Poll, i: usize, buf: &mut [u8]) {
    let Some(side) = sides[i].as_mut() else {
        return;
    };
    if side.half.pending.is_empty() {
        if side.half.eof {
            finish(sides, free, poll, i);
        }
        return;
    }
    let peer = side.peer;
    let pending = std::mem::take(&mut side.half.pending);
    let Some(target) = sides[peer].as_mut() else {
        return;
    };
    match write_some(&mut target.stream, &pending) {
        Ok(written) => {
            let side = sides[i].as_mut().expect("present");
            side.half.pending = pending[written..].to_vec();
            if side.half.pending.is_empty() {
                if side.half.eof {
                    finish(sides, free, poll, i);
                } else {
                    pump(sides, free, poll, i, buf);
                }
            }
        }
        Err(_) => close(sides, free, poll, i),
    }
}

/// `i` has sent its EOF and everything it sent is delivered: pass the EOF on; once both
/// directions are done, close both.
fn finish(sides: &mut [Option<Side>], free: &mut Vec<usize>, poll: &Poll, i: usize) {
    let Some(side) = sides[i].as_mut() else {
        return;
    };
    if !side.half.eof || !side.half.pending.is_empty() || side.half.shut {
        return;
    }
    side.half.shut = true;
    let peer = side.peer;
    if let Some(target) = sides[peer].as_ref() {
        let _ = target.stream.shutdown(Shutdown::Write);
        if target.half.shut {
            close(sides, free, poll, i);
        }
    }
}

fn close(sides: &mut [Option<Side>], free: &mut Vec<usize>, poll: &Poll, i: usize) {
    let Some(mut side) = sides[i].take() else {
        return;
    };
    let _ = poll.registry().deregister(&mut side.stream);
    free.push(i);
    if let Some(mut peer) = sides[side.peer].take() {
        let _ = poll.registry().deregister(&mut peer.stream);
        free.push(side.peer);
    }
}

fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A backend not connected yet: its write comes when it is (WRITABLE).
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Runs until `stopped`, asked every 500 ms, says so.
pub fn run_tokio(
    port: u16,
    backends: Vec<SocketAddr>,
    ready: impl FnOnce(u16),
    stopped: impl Fn() -> bool,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let serve = async move {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        ready(listener.local_addr()?.port());
        let mut next = 0usize;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let address = backends[next % backends.len()];
            next = next.wrapping_add(1);
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                if let Ok(mut backend) = tokio::net::TcpStream::connect(address).await {
                    let _ = backend.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                }
            });
        }
    };
    runtime.block_on(async move {
        tokio::pin!(serve);
        loop {
            tokio::select! {
                result = &mut serve => return result,
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                    if stopped() {
                        return Ok(());
                    }
                }
            }
        }
    })
}
