//! The UDP socket's kernel buffers, widened so a burst of QUIC datagrams
//! waits in the kernel instead of being dropped.
//!
//! Linux's default receive buffer (212,992 bytes on Debian) overflowed
//! under a bulk `--tcp` transfer between two agents: 1,276 datagrams
//! dropped (`RcvbufErrors` in `/proc/net/snmp`) in 2 GiB, each a loss that
//! QUIC's congestion control answers by slowing down; with 7 MiB asked
//! for, none (bench/README "TCP bulk"). quic-go asks for the same size. The
//! kernel caps the request at `net.core.rmem_max` / `wmem_max`, so the
//! buffers may end up smaller; that is logged, not fatal.

use std::net::UdpSocket;

use tracing::debug;

/// What is asked for each direction (quic-go's choice).
const WANTED: usize = 7 * 1024 * 1024;

/// Asks the kernel for [`WANTED`] bytes of receive and send buffer on
/// `socket`, and logs what it granted.
pub(super) fn widen(socket: &UdpSocket) {
    use rustix::net::sockopt;
    let asked = (
        sockopt::set_socket_recv_buffer_size(socket, WANTED),
        sockopt::set_socket_send_buffer_size(socket, WANTED),
    );
    let granted = (
        sockopt::socket_recv_buffer_size(socket).ok(),
        sockopt::socket_send_buffer_size(socket).ok(),
    );
    debug!(
        wanted = WANTED,
        receive = ?granted.0,
        send = ?granted.1,
        receive_error = ?asked.0.err(),
        send_error = ?asked.1.err(),
        "UDP socket buffers (raise net.core.rmem_max and wmem_max for more)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_buffer_grows_as_far_as_the_kernel_allows() {
        let Ok(max) = std::fs::read_to_string("/proc/sys/net/core/rmem_max") else {
            return; // not Linux: nothing to compare with
        };
        let max: usize = max.trim().parse().expect("rmem_max is a number");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        widen(&socket);
        let granted = rustix::net::sockopt::socket_recv_buffer_size(&socket).expect("read");
        // Linux doubles what it grants, for its own bookkeeping.
        let expected = 2 * WANTED.min(max);
        assert!(
            granted >= expected,
            "receive buffer {granted} bytes, expected {expected} (rmem_max {max})"
        );
    }
}
