//! A hostile party on the renter ↔ farmer link for the `harden_peer` tests: a tiny
//! HTTP/1.1 server on loopback (std::net, one thread per connection, one request per
//! connection) whose handler decides each answer. It plays a man in the middle in front of
//! a real farmer ([`forward`]) or a hostile farmer of its own, and records what it saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the hostile server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the hostile server answers.
pub enum Answer {
    /// A complete reply.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Announces `length` bytes, sends `first`, then goes silent with the connection open
    /// until the server stops.
    Stall { length: u64, first: Vec<u8> },
}

impl Answer {
    pub fn json(status: u16, body: Vec<u8>) -> Answer {
        Answer::Full {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }
}

/// What the server saw: each request with the status it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request: Request,
    pub status: u16,
    pub reply: Vec<u8>,
}

type Handler = dyn Fn(&Request) -> Answer + Send + Sync;

/// The hostile server; stops (and releases stalled connections) when dropped.
pub struct HostileServer {
    pub url: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HostileServer {
    pub fn start(handler: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop2, seen2) = (stop.clone(), seen.clone());
        std::thread::spawn(move || accept_loop(listener, handler, stop2, seen2));
        HostileServer { url, stop, seen }
    }

    /// Every request answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// The requests to paths containing `part`, with their statuses.
    pub fn seen_at(&self, part: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.request.path.contains(part))
            .collect()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (handler, stop, seen) = (handler.clone(), stop.clone(), seen.clone());
                std::thread::spawn(move || serve(stream, &*handler, &stop, &seen));
            }
            // Idle: no connection pending (the listener is non-blocking so `stop` is seen).
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler, stop: &AtomicBool, seen: &Mutex<Vec<Seen>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Some(request) = read_request(&stream) else {
        return;
    };
    let answer = handler(&request);
    let mut out = stream;
    match answer {
        Answer::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&body);
            let _ = out.flush();
            seen.lock().expect("seen").push(Seen {
                request,
                status,
                reply: body,
            });
        }
        Answer::Stall { length, first } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {length}\r\ncontent-type: application/octet-stream\r\n\r\n"
            );
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&first);
            let _ = out.flush();
            seen.lock().expect("seen").push(Seen {
                request,
                status: 200,
                reply: Vec::new(),
            });
            // Silent, with the connection open, until the test ends.
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (k, v) = header.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Sends `request` (or `request` with `body` instead of its own) on to `upstream`, as a
/// transparent proxy would; returns the upstream's answer.
pub fn forward(upstream: &str, request: &Request, body: Option<Vec<u8>>) -> Answer {
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(900))
        .build()
        .expect("proxy client");
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("method");
    let mut out = http.request(method, format!("{upstream}{}", request.path));
    for (k, v) in &request.headers {
        let k = k.to_ascii_lowercase();
        if k == "x-dstore-auth" || k == "content-type" {
            out = out.header(k, v);
        }
    }
    let response = out
        .body(body.unwrap_or_else(|| request.body.clone()))
        .send()
        .expect("the farmer answers the proxy");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![("content-type".to_string(), v.to_string())])
        .unwrap_or_default();
    let body = response.bytes().expect("the farmer's reply").to_vec();
    Answer::Full {
        status,
        headers,
        body,
    }
}
