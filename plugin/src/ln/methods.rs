//! The `dstore-ln-*` RPC methods: the embedded Lightning node's wallet, peers and channels.
//!
//! Without Lightning each answers RPC_METHOD_NOT_FOUND (-32601) "Lightning is not enabled
//! (start with --lightning)"; bad input is RPC_INVALID_PARAMETER (-8), a wallet short of
//! funds RPC_WALLET_INSUFFICIENT_FUNDS (-6), the node's own refusals RPC_MISC_ERROR (-1).

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::secp256k1::PublicKey;
use ldk_node::lightning::ln::msgs::SocketAddress;
use serde_json::{json, Value};

use super::{ldk::LdkNode, Lightning, LnError};
use crate::app::App;
use crate::jsonrpc::{code, RpcError};
use crate::methods::Params;

/// The RPC error for a Lightning error.
pub fn rpc_error(e: LnError) -> RpcError {
    let code = match &e {
        LnError::NotEnabled => code::METHOD_NOT_FOUND,
        LnError::InvalidParameter(_) | LnError::InvalidInvoice(_) => code::INVALID_PARAMETER,
        LnError::InsufficientFunds(_) => code::WALLET_INSUFFICIENT_FUNDS,
        _ => code::MISC_ERROR,
    };
    RpcError::new(code, e.to_string())
}

fn lightning(app: &App) -> Result<&Lightning, RpcError> {
    app.lightning
        .as_ref()
        .ok_or_else(|| rpc_error(LnError::NotEnabled))
}

fn embedded<'a>(app: &'a App, what: &'static str) -> Result<&'a Arc<LdkNode>, RpcError> {
    lightning(app)?.ldk(what).map_err(rpc_error)
}

/// `dstore-ln-getinfo`: {node_id, addresses, network, block_height, channels, onchain_sat}.
pub async fn getinfo(app: &Arc<App>) -> Result<Value, RpcError> {
    let ln = lightning(app)?;
    let info = ln.info().await.map_err(rpc_error)?;
    let mut reply = json!({
        "node_id": info.node_id.to_string(),
        "addresses": info.addresses,
        "network": app.config.network.name(),
    });
    if let Lightning::Ldk(node) = ln {
        let balances = node.balances().await.map_err(rpc_error)?;
        let channels = node.list_channels();
        reply["block_height"] = json!(node.block_height());
        reply["channels"] = json!(channels.len());
        reply["graph_channels"] = json!(node.graph_channels());
        reply["usable_channels"] = json!(channels.iter().filter(|c| c.is_usable).count());
        reply["onchain_sat"] = json!(balances.onchain_sat);
        reply["spendable_onchain_sat"] = json!(balances.spendable_onchain_sat);
        reply["lightning_sat"] = json!(balances.lightning_sat);
    }
    Ok(reply)
}

/// `dstore-ln-newaddress`: {address} of the Lightning node's on-chain wallet.
pub async fn new_address(app: &Arc<App>) -> Result<Value, RpcError> {
    let node = embedded(app, "dstore-ln-newaddress")?;
    let address = node.new_address().await.map_err(rpc_error)?;
    Ok(json!({ "address": address.to_string() }))
}

/// `dstore-ln-connect <node_id@host:port>`.
pub(crate) async fn connect(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let node = embedded(app, "dstore-ln-connect")?;
    let (node_id, address) = parse_peer(&args.required_string(0)?).map_err(rpc_error)?;
    let address = address.ok_or_else(|| {
        rpc_error(LnError::InvalidParameter(
            "peer must be node_id@host:port".into(),
        ))
    })?;
    node.connect(node_id, address.clone())
        .await
        .map_err(rpc_error)?;
    Ok(json!({ "node_id": node_id.to_string(), "address": address.to_string(), "connected": true }))
}

/// `dstore-ln-openchannel <node_id[@host:port]> <amount_sat> [push_sat] [announce]`.
pub(crate) async fn open_channel(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let node = embedded(app, "dstore-ln-openchannel")?;
    let (node_id, address) = parse_peer(&args.required_string(0)?).map_err(rpc_error)?;
    let amount_sat = sat_param(args, 1, "amount_sat")?
        .ok_or_else(|| rpc_error(LnError::InvalidParameter("amount_sat is required".into())))?;
    if amount_sat == 0 {
        return Err(rpc_error(LnError::InvalidParameter(
            "amount_sat must be above 0".into(),
        )));
    }
    let push_sat = sat_param(args, 2, "push_sat")?.unwrap_or(0);
    if push_sat >= amount_sat {
        return Err(rpc_error(LnError::InvalidParameter(format!(
            "push_sat ({push_sat}) must be below amount_sat ({amount_sat})"
        ))));
    }
    let address = match address.or_else(|| node.peer_address(&node_id)) {
        Some(address) => address,
        None => {
            return Err(rpc_error(LnError::InvalidParameter(format!(
                "unknown node id {node_id}: connect first (dstore-ln-connect node_id@host:port) or give node_id@host:port"
            ))))
        }
    };
    let announce = args.boolean(3)?.unwrap_or(false);
    let push_msat = (push_sat > 0).then(|| push_sat * 1000);
    let opened = node
        .open_channel(node_id, address, amount_sat, push_msat, announce)
        .await
        .map_err(rpc_error)?;
    Ok(json!(opened))
}

/// `dstore-ln-listchannels`.
pub async fn list_channels(app: &Arc<App>) -> Result<Value, RpcError> {
    let node = embedded(app, "dstore-ln-listchannels")?;
    Ok(json!(node.list_channels()))
}

/// `dstore-ln-closechannel <channel_id>` (cooperative).
pub(crate) async fn close_channel(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let node = embedded(app, "dstore-ln-closechannel")?;
    let id = args.required_string(0)?;
    let channel = node.close_channel(id.trim()).await.map_err(rpc_error)?;
    Ok(json!({
        "channel_id": channel.channel_id,
        "counterparty_node_id": channel.counterparty_node_id,
        "closing": true,
    }))
}

/// `node_id` or `node_id@host:port`.
fn parse_peer(text: &str) -> Result<(PublicKey, Option<SocketAddress>), LnError> {
    let text = text.trim();
    let (id, address) = match text.split_once('@') {
        Some((id, address)) => (id, Some(address)),
        None => (text, None),
    };
    let node_id = PublicKey::from_str(id).map_err(|_| {
        LnError::InvalidParameter(format!("invalid node id '{id}' (33-byte hex public key)"))
    })?;
    let address = address
        .map(|a| {
            SocketAddress::from_str(a).map_err(|_| {
                LnError::InvalidParameter(format!("invalid peer address '{a}' (host:port)"))
            })
        })
        .transpose()?;
    Ok((node_id, address))
}

/// A whole number of satoshis (number or decimal string).
fn sat_param(args: &Params<'_>, i: usize, name: &str) -> Result<Option<u64>, RpcError> {
    let Some(text) = args.decimal_text(i)? else {
        return Ok(None);
    };
    text.parse::<u64>()
        .ok()
        .filter(|v| *v <= 21_000_000 * 100_000_000)
        .map(Some)
        .ok_or_else(|| {
            rpc_error(LnError::InvalidParameter(format!(
                "invalid {name} '{text}' (a whole number of satoshis)"
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_and_without_address() {
        let id = "02eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f283686619";
        let (node_id, address) = parse_peer(id).unwrap();
        assert_eq!(node_id.to_string(), id);
        assert!(address.is_none());
        let (_, address) = parse_peer(&format!("{id}@127.0.0.1:9735")).unwrap();
        assert_eq!(address.unwrap().to_string(), "127.0.0.1:9735");
        assert!(parse_peer("nope").is_err());
        assert!(parse_peer(&format!("{id}@nohostport")).is_err());
    }
}
