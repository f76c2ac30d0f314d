//! The watchtower's JSON-RPC server, in bitcoind's dialect (HTTP POST, Basic auth against
//! a cookie file, bitcoind's error codes): tower-register, tower-register-many,
//! tower-list, tower-status, tower-forget, tower-getinfo, help and stop.

use std::convert::Infallible;
use std::sync::Arc;

use dstore_daemon::cookie::CookieFile;
use dstore_daemon::jsonrpc::{self, code, RpcError, Version};
use dstore_daemon::server::{json_reply, plain, refuse_before_body, status, Reply};
use dstore_protocol::watch::registration::MAX_REGISTRATION_JSON_BYTES;
use dstore_protocol::watch::{Registration, RegistrationError, WatchId};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::tower::{Tower, TowerError};

/// Largest request accepted by any method but `tower-register`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Largest `tower-register` request: an audit contract's registration carries up to a
/// few thousand transactions (see `MAX_REGISTRATION_JSON_BYTES`), plus the envelope.
pub const MAX_REGISTER_BODY_BYTES: usize = MAX_REGISTRATION_JSON_BYTES + 4096;

const HELP: &str = "tower-register {registration}\ntower-register-many [registrations]\ntower-list\ntower-status \"id\"\ntower-forget \"id\"\ntower-getinfo\nhelp\nstop";

/// Serves until `shutdown` flips to true; `stop` requests flip it.
pub async fn serve(
    tower: Arc<Tower>,
    cookie: Arc<CookieFile>,
    listener: TcpListener,
    shutdown: watch::Sender<bool>,
) {
    let mut stopping = shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (tower, cookie, shutdown) = (tower.clone(), cookie.clone(), shutdown.clone());
        let service = hyper::service::service_fn(move |req| {
            let (tower, cookie, shutdown) = (tower.clone(), cookie.clone(), shutdown.clone());
            async move { Ok::<_, Infallible>(handle(&tower, &cookie, &shutdown, req).await) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("RPC connection closed with error: {e}");
            }
        });
    }
}

async fn handle(
    tower: &Tower,
    cookie: &CookieFile,
    shutdown: &watch::Sender<bool>,
    req: Request<Incoming>,
) -> Reply {
    if let Some(refusal) = refuse_before_body(cookie, &req).await {
        return refusal;
    }
    let body = match Limited::new(req.into_body(), MAX_REGISTER_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(_) => {
            return json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &jsonrpc::reply(
                    Version::V1Legacy,
                    None,
                    Err(RpcError::new(code::PARSE_ERROR, "Parse error")),
                ),
            )
        }
    };
    let request = match jsonrpc::parse_request(&parsed) {
        Ok(request) => request,
        Err(e) => {
            let status = status(e.error.legacy_http_status());
            return json_reply(status, &jsonrpc::reply(e.version, e.id, Err(e.error)));
        }
    };
    let big = ["tower-register", "tower-register-many"].contains(&request.method.as_str());
    if body.len() > MAX_BODY_BYTES && !big {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large");
    }
    let outcome = dispatch(tower, shutdown, &request.method, &request.params).await;
    let status = match (&outcome, request.version) {
        (Err(e), Version::V1Legacy) => status(e.legacy_http_status()),
        _ => StatusCode::OK,
    };
    json_reply(
        status,
        &jsonrpc::reply(request.version, request.id.clone(), outcome),
    )
}

/// Runs one method.
pub async fn dispatch(
    tower: &Tower,
    shutdown: &watch::Sender<bool>,
    method: &str,
    params: &Value,
) -> Result<Value, RpcError> {
    match method {
        "tower-register" => {
            let registration =
                Registration::from_json(registration_param(params)?).map_err(registration_error)?;
            let id = hex::encode(registration.id);
            let merge = tower.register(registration).await.map_err(tower_error)?;
            Ok(json!({"id": id, "result": merge}))
        }
        "tower-register-many" => {
            let registrations = registrations_param(params)?;
            let ids: Vec<String> = registrations.iter().map(|r| hex::encode(r.id)).collect();
            let merges = tower
                .register_many(registrations)
                .await
                .map_err(tower_error)?;
            let rows: Vec<Value> = ids
                .into_iter()
                .zip(merges)
                .map(|(id, merge)| json!({"id": id, "result": merge}))
                .collect();
            Ok(Value::Array(rows))
        }
        "tower-list" => tower.list().await.map_err(tower_error),
        "tower-status" => tower.status(&id_param(params)?).await.map_err(tower_error),
        "tower-forget" => {
            let id = id_param(params)?;
            tower.forget(&id).await.map_err(tower_error)?;
            Ok(json!({"id": hex::encode(id), "forgotten": true}))
        }
        "tower-getinfo" => Ok(tower.info().await),
        "help" => Ok(Value::String(HELP.into())),
        "stop" => {
            let _ = shutdown.send(true);
            Ok(Value::String("dstore-watchtower stopping".into()))
        }
        other => Err(RpcError::new(
            code::METHOD_NOT_FOUND,
            format!("Method not found: {other}"),
        )),
    }
}

/// The registration: the first positional parameter, `registration` by name, or the named
/// parameters themselves.
fn registration_param(params: &Value) -> Result<&Value, RpcError> {
    match params {
        Value::Array(items) if items.len() == 1 => Ok(&items[0]),
        Value::Object(map) if map.contains_key("registration") => Ok(&map["registration"]),
        Value::Object(_) => Ok(params),
        _ => Err(RpcError::new(
            code::INVALID_PARAMS,
            "usage: tower-register {registration}",
        )),
    }
}

/// The registrations of `tower-register-many`: an array, positional or as `registrations`.
fn registrations_param(params: &Value) -> Result<Vec<Registration>, RpcError> {
    let list = match params {
        Value::Array(items) if items.len() == 1 => items[0].as_array(),
        Value::Object(map) => map.get("registrations").and_then(Value::as_array),
        _ => None,
    };
    let items = list.ok_or_else(|| {
        RpcError::new(
            code::INVALID_PARAMS,
            "usage: tower-register-many [registration, …]",
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            Registration::from_json(item).map_err(|e| {
                RpcError::new(code::INVALID_PARAMETER, format!("registration {i}: {e}"))
            })
        })
        .collect()
}

fn id_param(params: &Value) -> Result<WatchId, RpcError> {
    let value = match params {
        Value::Array(items) if items.len() == 1 => &items[0],
        Value::Object(map) if map.contains_key("id") => &map["id"],
        _ => {
            return Err(RpcError::new(
                code::INVALID_PARAMS,
                "expected one parameter: the contract's watch id",
            ))
        }
    };
    let text = value
        .as_str()
        .ok_or_else(|| RpcError::new(code::TYPE_ERROR, "the id must be a string"))?;
    let mut id = [0u8; 32];
    hex::decode_to_slice(text, &mut id)
        .map_err(|_| RpcError::new(code::INVALID_PARAMETER, "the id must be 64 hex characters"))?;
    Ok(id)
}

fn registration_error(e: RegistrationError) -> RpcError {
    RpcError::new(code::INVALID_PARAMETER, e.to_string())
}

fn tower_error(e: TowerError) -> RpcError {
    match e {
        TowerError::Registration(e) => registration_error(e),
        e @ TowerError::BatchRegistration { .. } => {
            RpcError::new(code::INVALID_PARAMETER, e.to_string())
        }
        TowerError::UnknownWatch(id) => {
            RpcError::new(code::INVALID_PARAMETER, format!("no watch {id}"))
        }
        TowerError::Bitcoind(e) => e.to_rpc_error(),
        other => RpcError::new(code::INTERNAL_ERROR, other.to_string()),
    }
}
