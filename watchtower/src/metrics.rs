//! Prometheus text-format metrics at `GET /metrics` on `--metrics-bind`.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::tower::Tower;

/// The exposition text for the tower's current counters and gauges.
pub async fn render(tower: &Tower) -> String {
    let (contracts, tip) = tower.gauges().await;
    let c = &tower.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "dstore_tower_contracts",
        "gauge",
        "Registered contracts.",
        contracts as u64,
    );
    metric(
        "dstore_tower_tip_height",
        "gauge",
        "Height of the last processed block.",
        tip.unwrap_or(0).into(),
    );
    let counters = [
        (
            "dstore_tower_blocks_connected_total",
            "Blocks connected.",
            &c.blocks_connected,
        ),
        (
            "dstore_tower_blocks_disconnected_total",
            "Blocks disconnected by reorgs.",
            &c.blocks_disconnected,
        ),
        (
            "dstore_tower_keys_extracted_total",
            "Farmer keys extracted from TX2s.",
            &c.keys_extracted,
        ),
        (
            "dstore_tower_broadcasts_total",
            "Broadcasts bitcoind accepted.",
            &c.broadcasts,
        ),
        (
            "dstore_tower_broadcast_rejections_total",
            "Broadcasts bitcoind refused.",
            &c.broadcast_rejections,
        ),
        (
            "dstore_tower_zmq_messages_total",
            "ZMQ messages received.",
            &c.zmq_messages,
        ),
        (
            "dstore_tower_zmq_malformed_total",
            "Malformed ZMQ messages.",
            &c.zmq_malformed,
        ),
        (
            "dstore_tower_zmq_gaps_total",
            "ZMQ sequence gaps.",
            &c.zmq_gaps,
        ),
        (
            "dstore_tower_reconcile_failures_total",
            "Failed RPC reconciliations.",
            &c.reconcile_failures,
        ),
        (
            "dstore_tower_salt_releases_total",
            "Candidate salts the farmer accepted.",
            &c.salt_releases,
        ),
        (
            "dstore_tower_merkle_audits_passed_total",
            "Off-chain Merkle audits passed.",
            &c.merkle_audits_passed,
        ),
        (
            "dstore_tower_merkle_audits_failed_total",
            "Off-chain Merkle audits failed.",
            &c.merkle_audits_failed,
        ),
    ];
    for (name, help, counter) in counters {
        metric(name, "counter", help, counter.load(Ordering::Relaxed));
    }
    out
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(tower: Arc<Tower>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tower = tower.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tower = tower.clone();
                async move {
                    let mut reply = if req.uri().path() == "/metrics" {
                        let mut reply = Response::new(Full::new(Bytes::from(render(&tower).await)));
                        reply.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        reply
                    } else {
                        Response::new(Full::new(Bytes::from_static(b"not found\n")))
                    };
                    if req.uri().path() != "/metrics" {
                        *reply.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, Infallible>(reply)
                }
            });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
