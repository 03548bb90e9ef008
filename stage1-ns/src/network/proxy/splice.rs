//! Zero-copy relay of one direction of a forwarded connection: splice(2)
//! from the source socket into a pipe and from the pipe into the
//! destination socket, so the bytes stay in the kernel's pages instead of
//! passing through a user buffer twice (read + write). Blocking, like the
//! sockets: shutting either socket down wakes both calls.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::unistd::pipe2;

/// The pipe's size: what one splice from the socket can take. Larger than
/// the default 64 KiB so a large response crosses in fewer calls; pages
/// are only allocated while data sits in the pipe.
const PIPE_SIZE: i32 = 256 * 1024;

#[derive(Debug)]
pub(super) enum Error {
    /// Nothing was copied: no pipe could be made, or splice is not
    /// supported here; the caller may copy another way.
    Setup(io::Error),
    /// The copy failed midway (a reset, or a stop).
    Copy(io::Error),
}

/// Copies `from` to `to` until `from`'s EOF; returns the bytes copied.
pub(super) fn copy(from: &TcpStream, to: &TcpStream) -> Result<u64, Error> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Setup(e.into()))?;
    // Best effort: a smaller pipe (pipe-max-size, a user's pipe quota)
    // only means more calls.
    let chunk = fcntl(wr.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(64 * 1024);
    let mut total = 0u64;
    loop {
        let n = match retry(|| splice(from.as_fd(), None, wr.as_fd(), None, chunk, SpliceFFlags::SPLICE_F_MOVE)) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            // EINVAL on the first call: this socket type cannot splice.
            Err(Errno::EINVAL) if total == 0 => return Err(Error::Setup(Errno::EINVAL.into())),
            Err(e) => return Err(Error::Copy(e.into())),
        };
        drain(&rd, to, n).map_err(Error::Copy)?;
        total += n as u64;
    }
}

/// Moves `n` bytes from the pipe into `to`.
fn drain(rd: &OwnedFd, to: &TcpStream, mut n: usize) -> io::Result<()> {
    while n > 0 {
        let flags = SpliceFFlags::SPLICE_F_MOVE;
        match retry(|| splice(rd.as_fd(), None, to.as_fd(), None, n, flags))? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            m => n -= m,
        }
    }
    Ok(())
}

fn retry(mut f: impl FnMut() -> nix::Result<usize>) -> nix::Result<usize> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}
