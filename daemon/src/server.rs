//! A daemon's JSON-RPC server in bitcoind's dialect: HTTP POST, Basic auth against the
//! cookie, the daemon's own methods answered locally (see [`Backend`]), everything else
//! forwarded to bitcoind.
//!
//! A single request for a bitcoind method is forwarded byte for byte and bitcoind's status
//! and body come back unchanged, so bitcoin-cli sees exactly what bitcoind would say. In a
//! batch, each element is answered on its own (locally or by bitcoind) and the replies are
//! gathered in order.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::bitcoind::Bitcoind;
use crate::cookie::CookieFile;
use crate::jsonrpc::{self, code, RpcError, Version};

/// Largest request body accepted: bitcoind's own limit (MAX_SIZE, 32 MiB).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// bitcoind waits this long before answering a failed login, to slow down guessing.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);

/// How long in-flight requests may take to finish once a shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const WWW_AUTH: &str = "Basic realm=\"jsonrpc\"";

/// An HTTP reply with its whole body.
pub type Reply = Response<Full<Bytes>>;

/// The daemon behind the server: the methods it answers itself, the bitcoind that answers
/// every other method, and when to stop serving.
pub trait Backend: Send + Sync + 'static {
    /// Whether `method` is answered locally rather than forwarded to bitcoind.
    fn is_local(&self, method: &str) -> bool;

    /// Runs a local method.
    fn dispatch(
        self: &Arc<Self>,
        method: &str,
        params: &Value,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;

    /// The bitcoind every other method is forwarded to.
    fn bitcoind(&self) -> &Bitcoind;

    /// Resolves once the server should stop accepting connections.
    fn shutdown_requested(&self) -> impl Future<Output = ()> + Send;
}

/// Serves connections from `listener` until a shutdown is requested.
/// Requests already being answered then get up to [`DRAIN_TIMEOUT`] to finish.
pub async fn serve<B: Backend>(backend: Arc<B>, cookie: Arc<CookieFile>, listener: TcpListener) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = backend.shutdown_requested() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let (backend, cookie) = (backend.clone(), cookie.clone());
        let service = hyper::service::service_fn(move |req| {
            let (backend, cookie) = (backend.clone(), cookie.clone());
            async move { Ok::<_, Infallible>(handle(&backend, &cookie, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection closed with error: {e}");
            }
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// Answers one HTTP request.
pub async fn handle<B: Backend>(
    backend: &Arc<B>,
    cookie: &CookieFile,
    req: Request<Incoming>,
) -> Reply {
    if let Some(refusal) = refuse_before_body(cookie, &req).await {
        return refusal;
    }
    if let Some(reply) = reject_content_type(&req) {
        return reply;
    }
    if declared_length(&req).is_some_and(|len| len > MAX_BODY_BYTES) {
        return too_large();
    }
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return too_large(),
    };
    handle_body(backend, &path, body).await
}

/// Answers a request body that passed the HTTP checks.
pub async fn handle_body<B: Backend>(backend: &Arc<B>, path: &str, body: Bytes) -> Reply {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(_) => return error_reply(RpcError::new(code::PARSE_ERROR, "Parse error")),
    };
    match parsed {
        Value::Object(_) => single(backend, path, &parsed, body).await,
        Value::Array(items) => batch(backend, path, &items).await,
        _ => error_reply(RpcError::new(
            code::PARSE_ERROR,
            "Top-level object parse error",
        )),
    }
}

async fn single<B: Backend>(backend: &Arc<B>, path: &str, parsed: &Value, raw: Bytes) -> Reply {
    let request = match jsonrpc::parse_request(parsed) {
        Ok(request) if backend.is_local(&request.method) => request,
        // bitcoind's methods, and requests bitcoind should judge itself, go through as is.
        _ => return forward(backend.bitcoind(), path, raw).await,
    };
    let outcome = backend.dispatch(&request.method, &request.params).await;
    if request.is_notification() {
        return empty(StatusCode::NO_CONTENT);
    }
    let status = match (&outcome, request.version) {
        (Err(e), Version::V1Legacy) => status(e.legacy_http_status()),
        _ => StatusCode::OK,
    };
    json_reply(
        status,
        &jsonrpc::reply(request.version, request.id, outcome),
    )
}

async fn batch<B: Backend>(backend: &Arc<B>, path: &str, items: &[Value]) -> Reply {
    let mut replies = Vec::with_capacity(items.len());
    for item in items {
        if let Some(reply) = batch_element(backend, path, item).await {
            replies.push(reply);
        }
    }
    if replies.is_empty() && !items.is_empty() {
        return empty(StatusCode::NO_CONTENT);
    }
    json_reply(StatusCode::OK, &Value::Array(replies))
}

/// One element of a batch; `None` for a notification, which gets no reply.
async fn batch_element<B: Backend>(backend: &Arc<B>, path: &str, item: &Value) -> Option<Value> {
    match jsonrpc::parse_request(item) {
        Ok(request) if backend.is_local(&request.method) => {
            let outcome = backend.dispatch(&request.method, &request.params).await;
            (!request.is_notification())
                .then(|| jsonrpc::reply(request.version, request.id, outcome))
        }
        _ => forward_element(backend.bitcoind(), path, item).await,
    }
}

async fn forward_element(bitcoind: &Bitcoind, path: &str, item: &Value) -> Option<Value> {
    let body = Bytes::from(serde_json::to_vec(item).unwrap_or_default());
    match bitcoind.forward(path, body).await {
        Ok(raw) if raw.status == 204 => None,
        Ok(raw) => Some(serde_json::from_slice(&raw.body).unwrap_or_else(|_| {
            let error = RpcError::new(code::INTERNAL_ERROR, "unreadable reply from bitcoind");
            jsonrpc::reply(Version::V1Legacy, item.get("id").cloned(), Err(error))
        })),
        Err(e) => Some(jsonrpc::reply(
            Version::V1Legacy,
            item.get("id").cloned(),
            Err(e.to_rpc_error()),
        )),
    }
}

async fn forward(bitcoind: &Bitcoind, path: &str, raw: Bytes) -> Reply {
    match bitcoind.forward(path, raw).await {
        Ok(reply) => {
            let mut response = Response::new(Full::new(reply.body));
            *response.status_mut() = status(reply.status);
            if let Some(ct) = reply
                .content_type
                .and_then(|ct| HeaderValue::from_str(&ct).ok())
            {
                response.headers_mut().insert(CONTENT_TYPE, ct);
            }
            response
        }
        Err(e) => {
            tracing::warn!("forwarding to bitcoind failed: {e}");
            error_reply(e.to_rpc_error())
        }
    }
}

/// bitcoind's checks before any body is read: POST only (HTTP 405), then the cookie's
/// credentials (see [`refuse_unauthorized`]).
pub async fn refuse_before_body<T>(cookie: &CookieFile, req: &Request<T>) -> Option<Reply> {
    if req.method() != Method::POST {
        return Some(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "JSONRPC server handles only POST requests",
        ));
    }
    refuse_unauthorized(cookie, req).await
}

/// bitcoind's 401 for a request without the cookie's credentials, after a delay when a
/// wrong password was tried; `None` when the request is authorized.
pub async fn refuse_unauthorized<T>(cookie: &CookieFile, req: &Request<T>) -> Option<Reply> {
    let auth = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    if auth.is_none() {
        return Some(unauthorized());
    }
    if !cookie.authorizes(auth) {
        tracing::warn!("incorrect RPC password attempt");
        tokio::time::sleep(AUTH_FAILURE_DELAY).await;
        return Some(unauthorized());
    }
    None
}

/// bitcoin-cli sends `application/json`, bitcoind's docs use `text/plain` with curl, and
/// some clients send none; a form or anything else is a client mistake worth naming.
fn reject_content_type(req: &Request<Incoming>) -> Option<Reply> {
    let value = req.headers().get(CONTENT_TYPE)?;
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let accepted = ["application/json", "text/plain", "application/json-rpc", ""];
    if accepted.iter().any(|ok| mime.eq_ignore_ascii_case(ok)) {
        return None;
    }
    let error = RpcError::new(
        code::INVALID_REQUEST,
        format!("Unsupported Content-Type '{mime}': send application/json"),
    );
    Some(json_reply(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &jsonrpc::reply(Version::V1Legacy, Some(Value::Null), Err(error)),
    ))
}

fn declared_length(req: &Request<Incoming>) -> Option<usize> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large() -> Reply {
    let error = RpcError::new(
        code::INVALID_REQUEST,
        format!("Request body larger than {MAX_BODY_BYTES} bytes"),
    );
    json_reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        &jsonrpc::reply(Version::V1Legacy, Some(Value::Null), Err(error)),
    )
}

/// An error for a request whose version and id are unknown: legacy shape and status.
fn error_reply(error: RpcError) -> Reply {
    let status = status(error.legacy_http_status());
    json_reply(
        status,
        &jsonrpc::reply(Version::V1Legacy, Some(Value::Null), Err(error)),
    )
}

fn unauthorized() -> Reply {
    let mut response = empty(StatusCode::UNAUTHORIZED);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(WWW_AUTH));
    response
}

/// `value` as an `application/json` reply.
pub fn json_reply(status: StatusCode, value: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(jsonrpc::body(value))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A reply with a fixed text body and no content type.
pub fn plain(status: StatusCode, text: &'static str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

fn empty(status: StatusCode) -> Reply {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The HTTP status `code`, or 500 if it is not one.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
