//! Bulk transfers through a pipe with splice(2): the kernel hands the pages from one socket to
//! the other, and they are never copied into this process and back.
//!
//! A direction of a relay starts splicing after a read of SPLICE_FROM bytes or more, and
//! copies again after a splice of less than COPY_BELOW once its pipe is empty (small chunks
//! cost less copied than spliced). A pipe is held only while a direction splices; a few empty
//! ones are kept for the next transfer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const SPLICE_FROM: usize = 32 * 1024;
pub const COPY_BELOW: usize = 4 * 1024;
const PIPE_SIZE: libc::c_int = 1024 * 1024; // asked of the kernel (Linux's default pipe-max-size)
const CHUNK: usize = 1024 * 1024;
const KEPT: usize = 4; // empty pipes kept open for the next transfer

/// A pipe between two sockets, and how many bytes it holds.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    pub held: usize,
}

/// What a splice did.
pub enum Moved {
    Bytes(usize),
    End,   // the source's EOF
    Again, // nothing now (EAGAIN)
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<Moved> {
    loop {
        // SAFETY: splice takes two descriptors and null offsets (both ends are a socket or a
        // pipe, which have none); it reads and writes no memory of this process.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n > 0 {
            return Ok(Moved::Bytes(n as usize));
        }
        if n == 0 {
            return Ok(Moved::End);
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(Moved::Again),
            _ => return Err(error),
        }
    }
}

impl Pipe {
    /// From a socket into the pipe, as much as it has room for.
    pub fn fill(&mut self, socket: RawFd) -> io::Result<Moved> {
        let moved = splice(socket, self.write.as_raw_fd(), CHUNK)?;
        if let Moved::Bytes(n) = moved {
            self.held += n;
        }
        Ok(moved)
    }

    /// From the pipe out to a socket; Ok(false) once the socket takes no more for now.
    pub fn drain(&mut self, socket: RawFd) -> io::Result<bool> {
        while self.held > 0 {
            match splice(self.read.as_raw_fd(), socket, self.held)? {
                Moved::Bytes(n) => self.held -= n.min(self.held),
                Moved::End | Moved::Again => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// The pipes of this loop: at most `limit` open, the empty ones kept for reuse.
pub struct Pipes {
    free: Vec<Pipe>,
    pub open: usize,
    pub limit: usize,
}

impl Pipes {
    pub fn new(limit: usize) -> Pipes {
        Pipes {
            free: Vec::new(),
            open: 0,
            limit,
        }
    }

    /// An empty pipe, or None when none can be had (the cap, or out of descriptors): the
    /// direction then copies, as without pipes.
    pub fn take(&mut self) -> Option<Pipe> {
        if let Some(pipe) = self.free.pop() {
            return Some(pipe);
        }
        if self.open >= self.limit {
            return None;
        }
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given, which lives here.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: both descriptors were just made by pipe2 and belong to nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor owned here; a refusal leaves the default size.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        self.open += 1;
        Some(Pipe {
            read,
            write,
            held: 0,
        })
    }

    /// Keep an empty pipe for reuse; close any other.
    pub fn give_back(&mut self, pipe: Pipe) {
        if pipe.held == 0 && self.free.len() < KEPT {
            self.free.push(pipe);
        } else {
            self.open -= 1;
        }
    }

    /// A pipe closed with its connection (a panic there): no longer counted.
    pub fn lost(&mut self) {
        self.open = self.open.saturating_sub(1);
    }
}
