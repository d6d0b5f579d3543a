//! Holds the upgrade's `101` response in the kernel until the `connected` frame and the sync
//! have been written too, so that all of it leaves in one TCP segment. Each segment costs the
//! sender a transmit and, on loopback, the receiver's work as well: a connect used to send two.

use std::os::fd::{BorrowedFd, RawFd};

use socket2::SockRef;

/// A corked connection socket. It holds the raw descriptor of a socket owned elsewhere (by
/// hyper, then by the session's upgraded stream), so `release` must only be called while that
/// owner is alive; there is deliberately no `Drop`. Data left corked is sent by the kernel
/// after 200 ms, or when the socket closes.
pub struct Cork(RawFd);

impl Cork {
    /// Corks the connection. `fd` must be the socket of the connection being served.
    pub fn new(fd: RawFd) -> Option<Cork> {
        // SAFETY: the caller serves a request on this socket, so the descriptor is open.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        SockRef::from(&socket).set_tcp_cork(true).ok()?;
        Some(Cork(fd))
    }

    /// Sends what is held, at once.
    pub fn release(self) {
        // SAFETY: see the type's documentation; the session owning the socket calls this.
        let socket = unsafe { BorrowedFd::borrow_raw(self.0) };
        if let Err(e) = SockRef::from(&socket).set_tcp_cork(false) {
            tracing::debug!("uncork: {e}");
        }
    }
}
