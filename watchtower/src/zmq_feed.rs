//! bitcoind's ZMQ notifications (rawtx, rawblock, sequence): a blocking subscriber thread
//! that checks each message's shape and per-topic sequence number and forwards events to
//! the tower. ZMQ only wakes the tower up; RPC stays the source of truth, so a malformed
//! or missing message costs a reconciliation, never an event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// What a ZMQ message means to the tower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A transaction entered the mempool or a block (raw consensus bytes, unchecked).
    RawTx(Vec<u8>),
    /// A block was connected (the tower fetches it over RPC).
    Block,
    /// bitcoind's sequence topic: a block connected/disconnected or a mempool change.
    Sequence(u8),
    /// A sequence number skipped: something was missed on `topic`.
    Gap {
        topic: String,
        expected: u32,
        got: u32,
    },
    /// A message the tower could not read.
    Malformed(String),
}

const TOPICS: [&str; 3] = ["rawtx", "rawblock", "sequence"];

/// Reads one multipart message: [topic, body, 4-byte little-endian sequence].
pub fn parse(parts: &[Vec<u8>]) -> Result<(String, Vec<u8>, u32), String> {
    let [topic, body, sequence] = parts else {
        return Err(format!("{} parts instead of 3", parts.len()));
    };
    let topic = std::str::from_utf8(topic)
        .ok()
        .filter(|t| TOPICS.contains(t))
        .ok_or_else(|| format!("unknown topic {:?}", String::from_utf8_lossy(topic)))?;
    let sequence: [u8; 4] = sequence
        .as_slice()
        .try_into()
        .map_err(|_| format!("{topic}: a {}-byte sequence number", sequence.len()))?;
    match topic {
        "rawblock" if body.len() < 80 => return Err("rawblock: shorter than a header".into()),
        "sequence" if !matches!(body.len(), 33 | 41) => {
            return Err(format!("sequence: a {}-byte body", body.len()))
        }
        "rawtx" if body.len() < 10 => return Err("rawtx: shorter than a transaction".into()),
        _ => {}
    }
    Ok((
        topic.to_string(),
        body.clone(),
        u32::from_le_bytes(sequence),
    ))
}

/// Per-topic sequence counters; reports the first number after a skipped one.
#[derive(Debug, Default)]
pub struct GapDetector {
    last: HashMap<String, u32>,
}

impl GapDetector {
    /// Records `sequence` on `topic`; returns the expected number if some were skipped.
    pub fn check(&mut self, topic: &str, sequence: u32) -> Option<u32> {
        let previous = self.last.insert(topic.to_string(), sequence)?;
        let expected = previous.wrapping_add(1);
        (sequence != expected).then_some(expected)
    }
}

/// Turns a parsed message into notices.
pub fn interpret(detector: &mut GapDetector, parts: &[Vec<u8>]) -> Vec<Notice> {
    let (topic, body, sequence) = match parse(parts) {
        Ok(parsed) => parsed,
        Err(reason) => return vec![Notice::Malformed(reason)],
    };
    let mut notices = Vec::new();
    if let Some(expected) = detector.check(&topic, sequence) {
        notices.push(Notice::Gap {
            topic: topic.clone(),
            expected,
            got: sequence,
        });
    }
    notices.push(match topic.as_str() {
        "rawtx" => Notice::RawTx(body),
        "rawblock" => Notice::Block,
        _ => Notice::Sequence(body[32]),
    });
    notices
}

/// Subscribes to `endpoints` on a thread of its own until `stop` is set.
pub fn spawn(
    endpoints: Vec<String>,
    sender: mpsc::Sender<Notice>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, zmq::Error> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::SUB)?;
    socket.set_rcvtimeo(250)?;
    socket.set_rcvhwm(0)?;
    for topic in TOPICS {
        socket.set_subscribe(topic.as_bytes())?;
    }
    for endpoint in &endpoints {
        socket.connect(endpoint)?;
    }
    Ok(std::thread::spawn(move || {
        let _context = context;
        let mut detector = GapDetector::default();
        while !stop.load(Ordering::Relaxed) {
            let parts = match socket.recv_multipart(0) {
                Ok(parts) => parts,
                Err(zmq::Error::EAGAIN) => continue,
                Err(e) => {
                    tracing::warn!("ZMQ receive failed: {e}");
                    continue;
                }
            };
            for notice in interpret(&mut detector, &parts) {
                if sender.blocking_send(notice).is_err() {
                    return;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, body: &[u8], sequence: u32) -> Vec<Vec<u8>> {
        vec![
            topic.as_bytes().to_vec(),
            body.to_vec(),
            sequence.to_le_bytes().to_vec(),
        ]
    }

    #[test]
    fn malformed_messages_are_named_not_trusted() {
        let mut detector = GapDetector::default();
        let bad = [
            vec![b"rawtx".to_vec(), vec![0; 20]],
            vec![b"rawtx".to_vec(), vec![0; 20], vec![0; 3]],
            message("hashtx", &[0; 32], 0),
            message("sequence", &[0; 7], 0),
            message("rawblock", &[0; 20], 0),
            vec![],
        ];
        for parts in bad {
            assert!(matches!(
                interpret(&mut detector, &parts)[..],
                [Notice::Malformed(_)]
            ));
        }
    }

    #[test]
    fn skipped_sequence_numbers_are_gaps_per_topic() {
        let mut detector = GapDetector::default();
        assert_eq!(
            interpret(&mut detector, &message("rawtx", &[0; 60], 7)).len(),
            1
        );
        assert_eq!(
            interpret(&mut detector, &message("rawtx", &[0; 60], 8)).len(),
            1
        );
        let mut block = vec![0u8; 33];
        block[32] = b'C';
        assert_eq!(
            interpret(&mut detector, &message("sequence", &block, 0)),
            vec![Notice::Sequence(b'C')]
        );
        assert_eq!(
            interpret(&mut detector, &message("rawtx", &[0; 60], 10))[0],
            Notice::Gap {
                topic: "rawtx".into(),
                expected: 9,
                got: 10
            }
        );
        // bitcoind restarted: counters start over at 0, which is a gap too.
        assert!(matches!(
            interpret(&mut detector, &message("rawtx", &[0; 60], 0))[0],
            Notice::Gap { .. }
        ));
    }
}
