//! bitcoind's JSON-RPC dialect: request parsing, error codes and reply shapes.
//!
//! Mirrors Bitcoin Core's `rpc/request.cpp` and `httprpc.cpp`: requests without a
//! `jsonrpc` field (or with "1.0") are legacy 1.0/1.1 and errors travel as HTTP 400/404/500
//! with `result`, `error` and `id` all present; "2.0" requests always get HTTP 200, omit the
//! null member, and notifications (2.0 without `id`) get no reply at all.

use serde_json::{json, Map, Value};

/// Error codes, as bitcoind's `rpc/protocol.h` numbers them.
pub mod code {
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const PARSE_ERROR: i64 = -32700;
    pub const MISC_ERROR: i64 = -1;
    pub const TYPE_ERROR: i64 = -3;
    pub const WALLET_ERROR: i64 = -4;
    pub const INVALID_ADDRESS_OR_KEY: i64 = -5;
    pub const WALLET_INSUFFICIENT_FUNDS: i64 = -6;
    pub const INVALID_PARAMETER: i64 = -8;
    pub const CLIENT_NOT_CONNECTED: i64 = -9;
    pub const IN_WARMUP: i64 = -28;
}

/// A JSON-RPC error object (`{"code":…,"message":…}`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }

    /// The HTTP status a legacy (1.0) single request gets for this error, as bitcoind's
    /// `JSONErrorReply` picks it.
    pub fn legacy_http_status(&self) -> u16 {
        match self.code {
            code::INVALID_REQUEST => 400,
            code::METHOD_NOT_FOUND => 404,
            _ => 500,
        }
    }
}

/// Which JSON-RPC dialect a request spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1Legacy,
    V2,
}

/// One parsed request object.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub version: Version,
    /// `None` when the request had no `id` member.
    pub id: Option<Value>,
    pub method: String,
    /// Always an array or an object (a missing `params` becomes `[]`).
    pub params: Value,
}

impl Request {
    /// A 2.0 request without an id: executed, never answered.
    pub fn is_notification(&self) -> bool {
        self.version == Version::V2 && self.id.is_none()
    }
}

/// What could be read of a request that turned out invalid: the id and version still
/// shape the error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidRequest {
    pub version: Version,
    pub id: Option<Value>,
    pub error: RpcError,
}

/// Parses one request object the way bitcoind's `JSONRPCRequest::parse` does.
pub fn parse_request(value: &Value) -> Result<Request, InvalidRequest> {
    let Some(object) = value.as_object() else {
        return Err(invalid(
            Version::V1Legacy,
            Some(Value::Null),
            "Invalid Request object",
        ));
    };
    let id = object.get("id").cloned();
    let version = match object.get("jsonrpc") {
        None | Some(Value::Null) => Version::V1Legacy,
        Some(Value::String(v)) if v == "1.0" => Version::V1Legacy,
        Some(Value::String(v)) if v == "2.0" => Version::V2,
        Some(Value::String(_)) => {
            return Err(invalid(
                Version::V1Legacy,
                id,
                "JSON-RPC version not supported",
            ))
        }
        Some(_) => {
            return Err(invalid(
                Version::V1Legacy,
                id,
                "jsonrpc field must be a string",
            ))
        }
    };
    let method = match object.get("method") {
        None | Some(Value::Null) => return Err(invalid(version, id, "Missing method")),
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(invalid(version, id, "Method must be a string")),
    };
    let params = match object.get("params") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(p @ (Value::Array(_) | Value::Object(_))) => p.clone(),
        Some(_) => return Err(invalid(version, id, "Params must be an array or object")),
    };
    Ok(Request {
        version,
        id,
        method,
        params,
    })
}

fn invalid(version: Version, id: Option<Value>, message: &str) -> InvalidRequest {
    InvalidRequest {
        version,
        id,
        error: RpcError::new(code::INVALID_REQUEST, message),
    }
}

/// Builds a reply object in bitcoind's member order (`jsonrpc`, `result`, `error`, `id`).
pub fn reply(version: Version, id: Option<Value>, outcome: Result<Value, RpcError>) -> Value {
    let mut object = Map::new();
    if version == Version::V2 {
        object.insert("jsonrpc".into(), Value::from("2.0"));
    }
    match outcome {
        Ok(result) => {
            object.insert("result".into(), result);
            if version == Version::V1Legacy {
                object.insert("error".into(), Value::Null);
            }
        }
        Err(error) => {
            if version == Version::V1Legacy {
                object.insert("result".into(), Value::Null);
            }
            object.insert("error".into(), error.to_json());
        }
    }
    if let Some(id) = id {
        object.insert("id".into(), id);
    }
    Value::Object(object)
}

/// Serialises a reply body as bitcoind does: compact JSON and a trailing newline.
pub fn body(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_request_without_jsonrpc_field() {
        let req = parse_request(&json!({"id": 1, "method": "getblockcount"})).unwrap();
        assert_eq!(req.version, Version::V1Legacy);
        assert_eq!(req.params, json!([]));
        assert!(!req.is_notification());
    }

    #[test]
    fn v2_notification_has_no_id() {
        let req = parse_request(&json!({"jsonrpc": "2.0", "method": "x"})).unwrap();
        assert!(req.is_notification());
    }

    #[test]
    fn invalid_requests_keep_their_id() {
        let err = parse_request(&json!({"id": 7, "method": 3})).unwrap_err();
        assert_eq!(err.id, Some(json!(7)));
        assert_eq!(err.error.code, code::INVALID_REQUEST);
        let err = parse_request(&json!({"jsonrpc": "3.0", "method": "x"})).unwrap_err();
        assert_eq!(err.error.message, "JSON-RPC version not supported");
        let err = parse_request(&json!({"method": "x", "params": 5})).unwrap_err();
        assert_eq!(err.error.message, "Params must be an array or object");
        assert!(parse_request(&json!([1])).is_err());
    }

    #[test]
    fn replies_follow_bitcoind_member_order() {
        let v1 = reply(Version::V1Legacy, Some(json!(1)), Ok(json!(5)));
        assert_eq!(
            serde_json::to_string(&v1).unwrap(),
            r#"{"result":5,"error":null,"id":1}"#
        );
        let v2 = reply(
            Version::V2,
            Some(json!("a")),
            Err(RpcError::new(code::METHOD_NOT_FOUND, "Method not found")),
        );
        assert_eq!(
            serde_json::to_string(&v2).unwrap(),
            r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"a"}"#
        );
    }

    #[test]
    fn legacy_status_codes() {
        assert_eq!(
            RpcError::new(code::INVALID_REQUEST, "").legacy_http_status(),
            400
        );
        assert_eq!(
            RpcError::new(code::METHOD_NOT_FOUND, "").legacy_http_status(),
            404
        );
        assert_eq!(
            RpcError::new(code::MISC_ERROR, "").legacy_http_status(),
            500
        );
    }
}
