//! sd_notify: tells systemd (a `Type=notify` unit) that imd is ready or stopping.
//!
//! The protocol is one Unix datagram of `KEY=VALUE` lines to the socket named in
//! `NOTIFY_SOCKET`, so a crate is not worth it. Without that variable nothing is sent.

use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for a `Type=notify` service.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Says the daemon listens with its database open; `MAINPID` names this process (also when
/// started with `-d`, where the service manager only knows the parent).
pub fn ready() {
    notify(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

/// Says the daemon has begun a graceful stop.
pub fn stopping() {
    notify("STOPPING=1\n");
}

/// Sends `state`; a failure is logged and otherwise ignored: the daemon works without it
/// (systemd then times the start out, which the log line explains).
fn notify(state: &str) {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else { return };
    if let Err(e) = send(&target, state.as_bytes()) {
        tracing::warn!("sd_notify to {}: {e}", target.to_string_lossy());
    }
}

fn send(target: &std::ffi::OsStr, datagram: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // A leading '@' names a Linux abstract socket (no file).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(datagram, &addr)?
        }
        None => socket.send_to(datagram, target)?,
    };
    if sent != datagram.len() {
        return Err(std::io::Error::other("short datagram"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), b"READY=1\n").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("imd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send(std::ffi::OsStr::new(&format!("@{name}")), b"STOPPING=1\n").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(send(dir.path().join("absent").as_os_str(), b"READY=1\n").is_err());
    }
}
