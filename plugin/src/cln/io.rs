//! The plugin's stdin/stdout, between lightningd and cln-plugin.
//!
//! cln-plugin's read loop ends for good on a message it cannot handle (malformed JSON, a
//! method with no handler, a request without `params`), which would take the plugin
//! down. So lightningd's messages pass through [`Filter`] first: it splits them on the
//! blank line that ends each message, answers what cln-plugin cannot take with a JSON-RPC
//! error itself, and hands the rest on. Everything cln-plugin writes and every error reply
//! goes through one writer task, a whole message at a time, so stdout holds nothing but
//! protocol JSON, each message ended by "\n\n".

use std::collections::HashSet;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// Largest message accepted from lightningd (a JSON-RPC request is far smaller).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// JSON-RPC 2.0 error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;

/// The pipes cln-plugin gets instead of the real stdin and stdout.
pub struct Pipes {
    pub input: DuplexStream,
    pub output: DuplexStream,
}

/// Starts the filter and the writer; `methods` are the request methods cln-plugin handles
/// (its rpcmethods and hooks, plus `getmanifest` and `init`).
pub fn spawn<R, W>(stdin: R, stdout: W, methods: HashSet<String>) -> Pipes
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (plugin_input, filter_side) = tokio::io::duplex(1 << 20);
    let (plugin_output, writer_side) = tokio::io::duplex(1 << 20);
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(write_out(stdout, rx));
    tokio::spawn(forward_plugin_output(writer_side, tx.clone()));
    let filter = Filter { methods };
    tokio::spawn(filter.run(stdin, filter_side, tx));
    Pipes {
        input: plugin_input,
        output: plugin_output,
    }
}

/// The single writer of stdout: one whole message, then "\n\n", then a flush.
async fn write_out<W: AsyncWrite + Unpin>(mut stdout: W, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(message) = rx.recv().await {
        let mut bytes = message.into_bytes();
        bytes.extend_from_slice(b"\n\n");
        if stdout.write_all(&bytes).await.is_err() || stdout.flush().await.is_err() {
            return;
        }
    }
}

/// Cuts cln-plugin's output into messages (serde_json never writes a blank line inside
/// one) and queues them for the writer.
async fn forward_plugin_output(mut from: DuplexStream, tx: mpsc::UnboundedSender<String>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(message) = take_message(&mut buf) {
            let text = String::from_utf8_lossy(&message).trim().to_string();
            if !text.is_empty() && tx.send(text).is_err() {
                return;
            }
        }
    }
}

/// Removes and returns the first message ended by "\n\n", without the terminator.
pub fn take_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let message = buf[..end].to_vec();
    buf.drain(..end + 2);
    Some(message)
}

struct Filter {
    methods: HashSet<String>,
}

/// What to do with one message from lightningd.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Hand it to cln-plugin (possibly normalised).
    Pass(Value),
    /// Answer it with this reply ourselves.
    Reply(Value),
    /// Drop it (a notification cln-plugin could not take), with the reason logged.
    Drop(String),
}

impl Filter {
    async fn run<R: AsyncRead + Unpin>(
        self,
        mut stdin: R,
        mut to_plugin: DuplexStream,
        tx: mpsc::UnboundedSender<String>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match stdin.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(message) = take_message(&mut buf) {
                match self.judge(&message) {
                    Verdict::Pass(value) => {
                        let mut bytes = value.to_string().into_bytes();
                        bytes.extend_from_slice(b"\n\n");
                        if to_plugin.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Verdict::Reply(reply) => {
                        tracing::warn!("refused a message from lightningd: {}", reply["error"]);
                        let _ = tx.send(reply.to_string());
                    }
                    Verdict::Drop(why) => tracing::warn!("dropped a notification: {why}"),
                }
            }
            if buf.len() > MAX_MESSAGE_BYTES {
                tracing::error!(
                    "a message from lightningd exceeds {MAX_MESSAGE_BYTES} bytes; dropped"
                );
                let _ = tx.send(
                    error_reply(Value::Null, PARSE_ERROR, "Parse error: message too large")
                        .to_string(),
                );
                buf.clear();
            }
        }
        // stdin closed: lightningd is gone. Closing cln-plugin's input ends its loop.
        let _ = to_plugin.shutdown().await;
    }

    fn judge(&self, message: &[u8]) -> Verdict {
        judge(&self.methods, message)
    }
}

/// Decides what happens to one message from lightningd (see the module comment).
pub fn judge(methods: &HashSet<String>, message: &[u8]) -> Verdict {
    let text = match std::str::from_utf8(message) {
        Ok(text) => text.trim(),
        Err(_) => {
            return Verdict::Reply(error_reply(
                Value::Null,
                PARSE_ERROR,
                "Parse error: not UTF-8",
            ))
        }
    };
    if text.is_empty() {
        return Verdict::Drop("empty message".into());
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            return Verdict::Reply(error_reply(
                Value::Null,
                PARSE_ERROR,
                &format!("Parse error: {e}"),
            ))
        }
    };
    let Value::Object(mut map) = value else {
        return Verdict::Reply(error_reply(
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: not a JSON object",
        ));
    };
    let id = map.get("id").cloned().filter(|id| !id.is_null());
    let method = map
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string);
    match (id, method) {
        (Some(id), None) => Verdict::Reply(error_reply(
            id,
            INVALID_REQUEST,
            "Invalid Request: no method",
        )),
        (Some(id), Some(method)) => {
            if !methods.contains(&method) {
                return Verdict::Reply(error_reply(
                    id,
                    METHOD_NOT_FOUND,
                    &format!("Method not found: {method}"),
                ));
            }
            match map.get("params") {
                None | Some(Value::Null) => {
                    map.insert("params".into(), json!({}));
                }
                Some(Value::Array(_)) | Some(Value::Object(_)) => {}
                Some(_) => {
                    return Verdict::Reply(error_reply(
                        id,
                        INVALID_REQUEST,
                        "Invalid Request: params must be an array or an object",
                    ))
                }
            }
            Verdict::Pass(Value::Object(map))
        }
        (None, None) => Verdict::Drop("no method and no id".into()),
        (None, Some(method)) => match map.get("params") {
            Some(Value::Array(_)) | Some(Value::Object(_)) => Verdict::Pass(Value::Object(map)),
            _ => Verdict::Drop(format!("notification {method} without params")),
        },
    }
}

fn error_reply(id: Value, code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods() -> HashSet<String> {
        ["getmanifest", "init", "dstore-getinfo"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn messages_split_on_blank_lines() {
        let mut buf = b"{\"a\":1}\n\n{\"b\"".to_vec();
        assert_eq!(take_message(&mut buf).unwrap(), b"{\"a\":1}");
        assert_eq!(take_message(&mut buf), None);
        assert_eq!(buf, b"{\"b\"");
    }

    #[test]
    fn bad_messages_get_errors_and_good_ones_pass() {
        let m = methods();
        let Verdict::Reply(r) = judge(&m, b"{not json") else {
            panic!()
        };
        assert_eq!(r["error"]["code"], PARSE_ERROR);
        assert_eq!(r["id"], Value::Null);
        let Verdict::Reply(r) = judge(
            &m,
            br#"{"jsonrpc":"2.0","id":"x:1","method":"nope","params":{}}"#,
        ) else {
            panic!()
        };
        assert_eq!(r["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(r["id"], "x:1");
        let Verdict::Reply(r) = judge(&m, br#"{"id":2,"method":"dstore-getinfo","params":7}"#)
        else {
            panic!()
        };
        assert_eq!(r["error"]["code"], INVALID_REQUEST);
        let Verdict::Pass(v) = judge(&m, br#"{"id":3,"method":"dstore-getinfo"}"#) else {
            panic!()
        };
        assert_eq!(v["params"], json!({}));
        assert!(matches!(
            judge(&m, br#"{"method":"shutdown"}"#),
            Verdict::Drop(_)
        ));
        assert!(matches!(judge(&m, br#"[1,2]"#), Verdict::Reply(_)));
    }
}
