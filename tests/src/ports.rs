//! Free loopback ports for test processes, handed out below the kernel's ephemeral range.
//!
//! A port from `bind(127.0.0.1:0)` lies in the ephemeral range (32768–60999 here), where
//! every outgoing connection of every parallel test (RPC and HTTP clients, ZMQ) also gets
//! its local port. Between the pick and the child's own bind, one of those can take it,
//! and the child fails with "address already in use" (seen once on the tower's RPC port).
//! Below that range a port is only ever taken by a listener that asked for its number,
//! so the picks come from there, in turn: a counter in a locked file shared by every test
//! process gives each pick the next number, and a number comes round again only after
//! every other one in the range has been handed out. A pick is still checked by binding
//! it, and skipped if something else holds it.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::ops::Range;

/// Lowest port handed out (clear of the well-known and registered ports tests might meet).
const FIRST_PORT: u16 = 20_000;

/// The counter every test process on the machine shares.
const COUNTER_FILE: &str = "dstore-test-ports.next";

/// Returns `n` distinct ports that were free a moment ago on 127.0.0.1. All listeners are
/// held until every port is picked, so the ports differ from each other.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let listener = match handed_out_range() {
            Some(range) => TcpListener::bind(("127.0.0.1", next_port(&range))).ok(),
            None => Some(TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")),
        };
        held.extend(listener);
    }
    held.iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// [`FIRST_PORT`] up to the start of the ephemeral range, or `None` where that range
/// cannot be read or leaves no room below it.
fn handed_out_range() -> Option<Range<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let start: u16 = text.split_whitespace().next()?.parse().ok()?;
    (start > FIRST_PORT + 1_000).then_some(FIRST_PORT..start)
}

/// The next number in `range` from the shared counter, under an exclusive lock on it.
fn next_port(range: &Range<u16>) -> u16 {
    let path = std::env::temp_dir().join(COUNTER_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open the shared port counter");
    file.lock().expect("lock the shared port counter");
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let port = text
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|p| range.contains(p))
        .unwrap_or(range.start);
    let next = if port + 1 >= range.end {
        range.start
    } else {
        port + 1
    };
    file.set_len(0).expect("truncate the port counter");
    file.seek(SeekFrom::Start(0))
        .expect("rewind the port counter");
    write!(file, "{next}").expect("write the port counter");
    port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = free_ports(20);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20, "distinct: {ports:?}");
        if let Some(range) = handed_out_range() {
            assert!(
                ports.iter().all(|p| range.contains(p)),
                "{ports:?} in {range:?}"
            );
        }
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
