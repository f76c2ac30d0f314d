//! Core Lightning backend: lightningd itself, through its `lightning-rpc` socket and cln-rpc's typed requests.
//!
//! * `invoice` with a chosen `preimage` (label `dstore-<payment hash>`): lightningd settles
//!   it by revealing that preimage, and nothing else can. A repeated request for the same
//!   preimage (a farmer restarted between storing x and storing the invoice) returns the
//!   invoice lightningd already holds.
//! * `xpay` (lightningd ≥ 24.11; `pay` when lightningd does not know `xpay`) runs until the
//!   payment is final, so [`ClnNode::pay`] starts it in a task and returns at once; the
//!   outcome comes from `listpays` by payment hash, which also survives our restarts.
//! * `listpeerchannels` says whether a payment looks routable ([`ClnNode::can_pay`]).
//!
//! One connection per call; lightningd serialises nothing for us, so calls may overlap.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use cln_rpc::model::requests::{
    GetinfoRequest, InvoiceRequest, ListinvoicesRequest, ListpaysRequest, ListpeerchannelsRequest,
    XpayRequest,
};
use cln_rpc::model::responses::{
    GetinfoAddress, GetinfoAddressType, GetinfoBinding, GetinfoBindingType, GetinfoResponse,
    ListpaysPays, ListpaysPaysStatus,
};
use cln_rpc::primitives::{Amount, AmountOrAny, ChannelState, Sha256};
use cln_rpc::{ClnRpc, RpcError, TypedRequest};
use ldk_node::lightning_invoice::Bolt11Invoice;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use super::{payment_hash_of, with_fee_margin, LnError, LnInfo, LnPeerInfo, PaymentOutcome};

/// How often a payment waiter asks `listpays` again without a wake-up.
const PAYMENT_POLL: Duration = Duration::from_millis(250);
/// lightningd's "Unknown command" (JSON-RPC method not found).
const UNKNOWN_COMMAND: i32 = -32601;
/// `invoice`: the label is already used / the preimage is already used.
const INVOICE_LABEL_EXISTS: i32 = 900;
const INVOICE_PREIMAGE_EXISTS: i32 = 901;

/// lightningd, reached through its `lightning-rpc` socket.
pub struct ClnNode {
    pub rpc_path: PathBuf,
    /// What getinfo said at start-up (for the farmer's `/dstore/v1/info`).
    advertised: Option<LnPeerInfo>,
    /// Payments this process started and is still running (`xpay` not returned yet), or
    /// whose `xpay`/`pay` reply said more than `listpays` does.
    sent: Arc<Mutex<HashMap<[u8; 32], PaymentOutcome>>>,
    /// Woken whenever a payment task ends.
    payment_events: Arc<Notify>,
}

impl ClnNode {
    /// Asks lightningd who it is (remembered for [`Self::advertised`]). lightningd being
    /// unreachable does not stop the plugin: every later call reports it instead.
    pub async fn start(rpc_path: PathBuf) -> Result<Self, LnError> {
        let mut node = ClnNode {
            rpc_path,
            advertised: None,
            sent: Arc::default(),
            payment_events: Arc::default(),
        };
        match node.getinfo().await {
            Ok(info) => {
                let addresses = reachable_addresses(&info);
                tracing::info!(node_id = %info.id, addresses = ?addresses, "Lightning node: lightningd");
                node.advertised = addresses.into_iter().next().map(|address| LnPeerInfo {
                    node_id: info.id,
                    address,
                });
            }
            Err(e) => tracing::warn!("lightningd getinfo failed at start-up: {e}"),
        }
        Ok(node)
    }

    async fn getinfo(&self) -> Result<GetinfoResponse, LnError> {
        call(&self.rpc_path, &GetinfoRequest {}).await
    }

    pub async fn info(&self) -> Result<LnInfo, LnError> {
        let info = self.getinfo().await?;
        Ok(LnInfo {
            node_id: info.id,
            addresses: reachable_addresses(&info),
        })
    }

    /// No I/O: what lightningd's getinfo said at start-up.
    pub fn advertised(&self) -> Option<LnPeerInfo> {
        self.advertised.clone()
    }

    /// `invoice` with `preimage`; an invoice lightningd already holds for this preimage
    /// (same amount) is returned instead of failing.
    pub async fn invoice(
        &self,
        preimage: [u8; 32],
        amount_msat: u64,
        description: &str,
        expiry_secs: u32,
    ) -> Result<String, LnError> {
        let hash = payment_hash_of(&preimage);
        let request = InvoiceRequest {
            amount_msat: AmountOrAny::Amount(Amount::from_msat(amount_msat)),
            description: description.to_string(),
            label: invoice_label(&hash),
            expiry: Some(u64::from(expiry_secs)),
            preimage: Some(hex::encode(preimage)),
            cltv: None,
            deschashonly: None,
            exposeprivatechannels: None,
            fallbacks: None,
        };
        let bolt11 = match call_raw(&self.rpc_path, &request).await {
            Ok(created) => {
                if created.payment_hash.to_byte_array() != hash {
                    return Err(LnError::Node(
                        "lightningd's invoice has another payment hash than the preimage's".into(),
                    ));
                }
                created.bolt11
            }
            Err(e) if matches!(e.code, Some(INVOICE_LABEL_EXISTS | INVOICE_PREIMAGE_EXISTS)) => {
                self.existing_invoice(&hash, amount_msat).await?
            }
            Err(e) => return Err(rpc_error("invoice", e)),
        };
        tracing::info!(payment_hash = %hex::encode(hash), amount_msat, "invoice created (lightningd)");
        Ok(bolt11)
    }

    /// The invoice lightningd holds for `hash`, if it asks `amount_msat`.
    async fn existing_invoice(&self, hash: &[u8; 32], amount_msat: u64) -> Result<String, LnError> {
        let request = ListinvoicesRequest {
            payment_hash: Some(hex::encode(hash)),
            index: None,
            invstring: None,
            label: None,
            limit: None,
            offer_id: None,
            start: None,
        };
        let listed = call(&self.rpc_path, &request).await?;
        listed
            .invoices
            .into_iter()
            .find(|i| i.amount_msat.map(|a| a.msat()) == Some(amount_msat))
            .and_then(|i| i.bolt11)
            .ok_or_else(|| {
                LnError::Node(
                    "lightningd already has an invoice for this preimage with another amount"
                        .into(),
                )
            })
    }

    /// Starts paying `bolt11` (xpay, or pay) unless a payment for its hash was already sent.
    pub async fn pay(&self, bolt11: &str) -> Result<(), LnError> {
        let bolt11 = bolt11.trim().to_string();
        let invoice =
            Bolt11Invoice::from_str(&bolt11).map_err(|e| LnError::InvalidInvoice(e.to_string()))?;
        let hash = invoice.payment_hash().to_byte_array();
        if invoice.amount_milli_satoshis().is_none() {
            return Err(LnError::InvalidInvoice("the invoice has no amount".into()));
        }
        // Claimed here first, so two concurrent calls cannot both send.
        let claimed = match self.lock_sent().entry(hash) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(PaymentOutcome::Pending);
                true
            }
        };
        if !claimed {
            tracing::info!(payment_hash = %hex::encode(hash), "payment already sent; not sending again");
            return Ok(());
        }
        match self.listpays(&hash).await {
            Ok(pays) if pays.is_empty() => {}
            listed => {
                // Sent before (lightningd's record answers from now on), or unknown: not sent.
                self.lock_sent().remove(&hash);
                listed?;
                tracing::info!(payment_hash = %hex::encode(hash), "payment already sent; not sending again");
                return Ok(());
            }
        }
        tracing::info!(payment_hash = %hex::encode(hash), "payment sent (lightningd)");
        let task = PaymentTask {
            rpc_path: self.rpc_path.clone(),
            sent: self.sent.clone(),
            events: self.payment_events.clone(),
            hash,
            bolt11,
        };
        tokio::spawn(task.run());
        Ok(())
    }

    fn lock_sent(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], PaymentOutcome>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn listpays(&self, hash: &[u8; 32]) -> Result<Vec<ListpaysPays>, LnError> {
        listpays(&self.rpc_path, hash).await
    }

    /// What lightningd (and this process's running payment task) knows of the payment.
    pub async fn payment(&self, payment_hash: [u8; 32]) -> Result<PaymentOutcome, LnError> {
        let listed = outcome_of(&self.listpays(&payment_hash).await?);
        let local = self.lock_sent().get(&payment_hash).cloned();
        Ok(merge_outcomes(listed, local))
    }

    /// Waits for a final outcome, woken when a payment task ends, asking again every 250 ms.
    pub async fn wait_payment(
        &self,
        payment_hash: [u8; 32],
        timeout: Duration,
    ) -> Result<PaymentOutcome, LnError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let woken = self.payment_events.notified();
            let outcome = self.payment(payment_hash).await?;
            if outcome.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(outcome);
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(PAYMENT_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A normal channel to a connected peer with `spendable_msat` ≥ amount + 1 % (the payee
    /// may sit behind it).
    pub async fn can_pay(&self, payee: &PublicKey, amount_msat: u64) -> Result<bool, LnError> {
        let request = ListpeerchannelsRequest {
            id: None,
            channel_id: None,
            short_channel_id: None,
        };
        let channels = call(&self.rpc_path, &request).await?.channels;
        let needed = with_fee_margin(amount_msat);
        let usable = channels.iter().any(|c| {
            c.state == ChannelState::CHANNELD_NORMAL
                && c.peer_connected
                && c.spendable_msat.is_some_and(|s| s.msat() >= needed)
        });
        tracing::debug!(payee = %payee, amount_msat, usable, "lightningd can_pay");
        Ok(usable)
    }
}

/// One running `xpay` (or `pay`): records its outcome and wakes the waiters.
struct PaymentTask {
    rpc_path: PathBuf,
    sent: Arc<Mutex<HashMap<[u8; 32], PaymentOutcome>>>,
    events: Arc<Notify>,
    hash: [u8; 32],
    bolt11: String,
}

impl PaymentTask {
    async fn run(self) {
        let outcome = match self.send().await {
            Ok(outcome) => Some(outcome),
            Err(e) => self.after_error(e).await,
        };
        let hash_hex = hex::encode(self.hash);
        {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            match &outcome {
                Some(outcome) => sent.insert(self.hash, outcome.clone()),
                None => sent.remove(&self.hash),
            };
        }
        match outcome {
            Some(PaymentOutcome::Succeeded { fee_msat, .. }) => {
                tracing::info!(payment_hash = %hash_hex, fee_msat = ?fee_msat, "payment succeeded (lightningd)")
            }
            Some(PaymentOutcome::Failed { reason }) => {
                tracing::warn!(payment_hash = %hash_hex, %reason, "payment failed (lightningd)")
            }
            _ => tracing::info!(payment_hash = %hash_hex, "payment still pending in lightningd"),
        }
        self.events.notify_waiters();
    }

    /// `xpay`, or `pay` when lightningd has no `xpay`.
    async fn send(&self) -> Result<PaymentOutcome, RpcError> {
        let xpay = XpayRequest {
            invstring: self.bolt11.clone(),
            amount_msat: None,
            dev_use_shadow: None,
            label: None,
            localinvreqid: None,
            maxdelay: None,
            maxfee: None,
            partial_msat: None,
            payer_note: None,
            retry_for: None,
            layers: None,
        };
        match call_raw(&self.rpc_path, &xpay).await {
            Ok(paid) => Ok(succeeded(
                paid.payment_preimage.into(),
                paid.amount_sent_msat.msat(),
                paid.amount_msat.msat(),
            )),
            Err(e) if e.code == Some(UNKNOWN_COMMAND) => self.send_with_pay().await,
            Err(e) => Err(e),
        }
    }

    /// `pay`, for a lightningd older than `xpay` (cln-rpc marks it deprecated since 26.06).
    #[allow(deprecated)]
    async fn send_with_pay(&self) -> Result<PaymentOutcome, RpcError> {
        let pay = cln_rpc::model::requests::PayRequest {
            bolt11: self.bolt11.clone(),
            amount_msat: None,
            description: None,
            exemptfee: None,
            label: None,
            localinvreqid: None,
            maxdelay: None,
            maxfee: None,
            maxfeepercent: None,
            partial_msat: None,
            retry_for: None,
            riskfactor: None,
            exclude: None,
        };
        let paid = call_raw(&self.rpc_path, &pay).await?;
        Ok(succeeded(
            paid.payment_preimage.into(),
            paid.amount_sent_msat.msat(),
            paid.amount_msat.msat(),
        ))
    }

    /// After an error reply: `listpays` decides (an HTLC may still be out); with nothing
    /// listed the payment failed for the reply's reason. None = leave it to `listpays`.
    async fn after_error(&self, e: RpcError) -> Option<PaymentOutcome> {
        match listpays(&self.rpc_path, &self.hash).await {
            Ok(pays) => match outcome_of(&pays) {
                PaymentOutcome::Unknown | PaymentOutcome::Failed { .. } => {
                    Some(PaymentOutcome::Failed {
                        reason: format!("lightningd: {}", e.message),
                    })
                }
                _ => None,
            },
            Err(_) if e.code.is_some() => Some(PaymentOutcome::Failed {
                reason: format!("lightningd: {}", e.message),
            }),
            // lightningd unreachable: nothing known; listpays answers once it is back.
            Err(_) => None,
        }
    }
}

fn succeeded(preimage: [u8; 32], sent_msat: u64, amount_msat: u64) -> PaymentOutcome {
    PaymentOutcome::Succeeded {
        preimage,
        fee_msat: Some(sent_msat.saturating_sub(amount_msat)),
    }
}

/// The label of the invoice for `hash`.
fn invoice_label(hash: &[u8; 32]) -> String {
    format!("dstore-{}", hex::encode(hash))
}

async fn listpays(
    rpc_path: &std::path::Path,
    hash: &[u8; 32],
) -> Result<Vec<ListpaysPays>, LnError> {
    let request = ListpaysRequest {
        payment_hash: Some(Sha256::from_byte_array(*hash)),
        bolt11: None,
        index: None,
        limit: None,
        start: None,
        status: None,
    };
    Ok(call(rpc_path, &request).await?.pays)
}

/// One outcome from `listpays`' entries for a hash: complete beats pending beats failed.
fn outcome_of(pays: &[ListpaysPays]) -> PaymentOutcome {
    if let Some(done) = pays
        .iter()
        .find(|p| p.status == ListpaysPaysStatus::COMPLETE && p.preimage.is_some())
    {
        let preimage: [u8; 32] = done.preimage.expect("checked").into();
        let fee_msat = match (done.amount_sent_msat, done.amount_msat) {
            (Some(sent), Some(amount)) => Some(sent.msat().saturating_sub(amount.msat())),
            _ => None,
        };
        return PaymentOutcome::Succeeded { preimage, fee_msat };
    }
    if pays.iter().any(|p| p.status == ListpaysPaysStatus::PENDING) {
        return PaymentOutcome::Pending;
    }
    if pays.iter().any(|p| p.status == ListpaysPaysStatus::FAILED) {
        return PaymentOutcome::Failed {
            reason: "lightningd lists the payment as failed".into(),
        };
    }
    PaymentOutcome::Unknown
}

/// lightningd's record and this process's own: success from either wins, then a payment
/// still running here, then lightningd's pending, then a failure (ours has the reason).
fn merge_outcomes(listed: PaymentOutcome, local: Option<PaymentOutcome>) -> PaymentOutcome {
    match (listed, local) {
        (done @ PaymentOutcome::Succeeded { .. }, _) => done,
        (_, Some(done @ PaymentOutcome::Succeeded { .. })) => done,
        (_, Some(PaymentOutcome::Pending)) | (PaymentOutcome::Pending, _) => {
            PaymentOutcome::Pending
        }
        (_, Some(failed @ PaymentOutcome::Failed { .. })) => failed,
        (listed, _) => listed,
    }
}

/// "host:port" of every announced address, else of every bound IP address.
fn reachable_addresses(info: &GetinfoResponse) -> Vec<String> {
    let announced: Vec<String> = info.address.iter().filter_map(announced_address).collect();
    if !announced.is_empty() {
        return announced;
    }
    info.binding
        .iter()
        .flatten()
        .filter_map(bound_address)
        .collect()
}

fn announced_address(a: &GetinfoAddress) -> Option<String> {
    let host = a.address.as_deref()?;
    match a.item_type {
        GetinfoAddressType::IPV6 => Some(format!("[{host}]:{}", a.port)),
        GetinfoAddressType::IPV4 | GetinfoAddressType::DNS => Some(format!("{host}:{}", a.port)),
        _ => None,
    }
}

fn bound_address(b: &GetinfoBinding) -> Option<String> {
    let (host, port) = (b.address.as_deref()?, b.port?);
    match b.item_type {
        GetinfoBindingType::IPV6 => Some(format!("[{host}]:{port}")),
        GetinfoBindingType::IPV4 => Some(format!("{host}:{port}")),
        _ => None,
    }
}

/// One typed call, lightningd's error as [`RpcError`].
async fn call_raw<R>(rpc_path: &std::path::Path, request: &R) -> Result<R::Response, RpcError>
where
    R: TypedRequest + Serialize + std::fmt::Debug,
    R::Response: DeserializeOwned + std::fmt::Debug,
{
    let mut rpc = ClnRpc::new(rpc_path).await.map_err(|e| RpcError {
        code: None,
        message: format!("cannot connect to {}: {e}", rpc_path.display()),
        data: None,
    })?;
    rpc.call_typed(request).await
}

/// One typed call, lightningd's error as [`LnError::Node`].
async fn call<R>(rpc_path: &std::path::Path, request: &R) -> Result<R::Response, LnError>
where
    R: TypedRequest + Serialize + std::fmt::Debug,
    R::Response: DeserializeOwned + std::fmt::Debug,
{
    call_raw(rpc_path, request)
        .await
        .map_err(|e| rpc_error(request.method(), e))
}

fn rpc_error(method: &str, e: RpcError) -> LnError {
    match e.code {
        Some(code) => LnError::Node(format!("lightningd {method}: {} (code {code})", e.message)),
        None => LnError::Node(format!("lightningd {method}: {}", e.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(x: u8) -> PaymentOutcome {
        PaymentOutcome::Succeeded {
            preimage: [x; 32],
            fee_msat: Some(1),
        }
    }

    fn failed() -> PaymentOutcome {
        PaymentOutcome::Failed {
            reason: "no route".into(),
        }
    }

    #[test]
    fn outcomes_merge_success_first_then_running_then_failure() {
        use PaymentOutcome::{Pending, Unknown};
        assert_eq!(merge_outcomes(done(1), Some(Pending)), done(1));
        assert_eq!(merge_outcomes(Unknown, Some(done(2))), done(2));
        assert_eq!(merge_outcomes(failed(), Some(Pending)), Pending);
        assert_eq!(merge_outcomes(Pending, Some(failed())), Pending);
        assert_eq!(merge_outcomes(Unknown, Some(failed())), failed());
        assert_eq!(merge_outcomes(Unknown, None), Unknown);
        assert_eq!(merge_outcomes(Pending, None), Pending);
    }

    #[test]
    fn listpays_entries_reduce_to_one_outcome() {
        let pay = |status: &str, preimage: Option<[u8; 32]>| -> ListpaysPays {
            let mut v = serde_json::json!({
                "payment_hash": "00".repeat(32),
                "status": status,
                "created_at": 1,
                "amount_msat": 1000,
                "amount_sent_msat": 1002,
            });
            if let Some(p) = preimage {
                v["preimage"] = hex::encode(p).into();
            }
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(outcome_of(&[]), PaymentOutcome::Unknown);
        assert_eq!(
            outcome_of(&[pay("failed", None), pay("pending", None)]),
            PaymentOutcome::Pending
        );
        assert!(matches!(
            outcome_of(&[pay("failed", None)]),
            PaymentOutcome::Failed { .. }
        ));
        assert_eq!(
            outcome_of(&[pay("failed", None), pay("complete", Some([7; 32]))]),
            PaymentOutcome::Succeeded {
                preimage: [7; 32],
                fee_msat: Some(2)
            }
        );
    }

    #[test]
    fn addresses_prefer_announced_then_bound_ips() {
        let info: GetinfoResponse = serde_json::from_value(serde_json::json!({
            "id": "02eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f283686619",
            "alias": "a", "color": "02eec7", "num_peers": 0, "num_pending_channels": 0,
            "num_active_channels": 0, "num_inactive_channels": 0,
            "address": [], "binding": [
                {"type": "local socket", "socket": "/tmp/x"},
                {"type": "ipv4", "address": "127.0.0.1", "port": 9735}
            ],
            "version": "v24.11", "blockheight": 1, "network": "regtest",
            "fees_collected_msat": 0, "lightning-dir": "/tmp"
        }))
        .unwrap();
        assert_eq!(reachable_addresses(&info), vec!["127.0.0.1:9735"]);
        let mut announced = info;
        announced.address = vec![GetinfoAddress {
            address: Some("ln.example.com".into()),
            item_type: GetinfoAddressType::DNS,
            port: 9736,
        }];
        assert_eq!(reachable_addresses(&announced), vec!["ln.example.com:9736"]);
    }
}
