//! Free loopback ports for test processes.

use std::net::TcpListener;

/// Returns `n` distinct ports that were free a moment ago on 127.0.0.1. All listeners are
/// held until every port is picked, so the ports differ from each other.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}
