//! Harness of the `harden_download` tests: a gate in front of the farmer's peer endpoint.
//! It is a loopback TCP proxy that forwards both ways, but holds back the renter's request
//! for the sealed copy E until the test opens it, so the test can move the chain between
//! the farmer's offer (which fixes T1) and the renter's funding of TX1. [`SealedGate::holding`]
//! holds another request instead (e.g. one peer message kind, by its path).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::wait_until;

/// What the request for E starts its path with.
const SEALED_PATH: &[u8] = b"/dstore/v1/sealed/";

#[derive(Default)]
struct GateState {
    open: bool,
    /// A request for E arrived and is held.
    held: bool,
}

/// The proxy; give the renter [`SealedGate::url`] as the farmer's URL.
pub struct SealedGate {
    pub url: String,
    state: Arc<(Mutex<GateState>, Condvar)>,
}

/// The path of the peer message `kind` (`/dstore/v1/msg/<kind>`), for [`SealedGate::holding`].
pub fn message_path(kind: &str) -> Vec<u8> {
    format!("/dstore/v1/msg/{kind} ").into_bytes()
}

impl SealedGate {
    /// Starts a closed gate in front of the farmer at `farmer_url` (`http://host:port`).
    pub fn start(farmer_url: &str) -> SealedGate {
        Self::holding(farmer_url, SEALED_PATH.to_vec())
    }

    /// Starts a closed gate that holds the first request whose bytes contain `path`.
    pub fn holding(farmer_url: &str, path: Vec<u8>) -> SealedGate {
        let path: Arc<[u8]> = path.into();
        let upstream = farmer_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let url = format!("http://{}", listener.local_addr().expect("gate address"));
        let state: Arc<(Mutex<GateState>, Condvar)> = Arc::default();
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (state, path) = (shared.clone(), path.clone());
                std::thread::spawn(move || forward(client, server, state, &path));
            }
        });
        SealedGate { url, state }
    }

    /// Waits until the renter's request for E (or the gate's path) is held at the gate.
    pub fn wait_held(&self, timeout: Duration) {
        wait_until("the held request at the gate", timeout, || {
            let held = self.state.0.lock().unwrap().held;
            held.then_some(())
        });
    }

    /// Lets the held request (and every later one) through.
    pub fn open(&self) {
        let (lock, cond) = &*self.state;
        lock.lock().unwrap().open = true;
        cond.notify_all();
    }
}

/// Copies client → server (holding a request for `path` while the gate is closed) and
/// server → client, until either side closes.
fn forward(
    mut client: TcpStream,
    mut server: TcpStream,
    state: Arc<(Mutex<GateState>, Condvar)>,
    path: &[u8],
) {
    let (Ok(mut client_out), Ok(mut server_in)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_in, &mut client_out);
        let _ = client_out.shutdown(std::net::Shutdown::Both);
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        if chunk.windows(path.len()).any(|w| w == path) {
            let (lock, cond) = &*state;
            let mut s = lock.lock().unwrap();
            s.held = true;
            while !s.open {
                s = cond.wait(s).unwrap();
            }
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
}
