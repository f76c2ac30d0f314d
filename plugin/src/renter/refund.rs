//! `dstore-refund`: the refund due now for a contract's funded download (TX1:0 after T1,
//! or the output of the TX2 really on the chain Δ blocks after it), or when it will be.

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{OutPoint, Transaction, Txid};
use dstore_protocol::contract::RefundDestination;
use dstore_protocol::keys::Role;
use serde_json::{json, Value};

use super::records::{DownloadPhase, RentedContract};
use super::{internal, merge, refund_fees, spender, Renter, RenterError, REFUND_FEE};

impl Renter {
    /// Broadcasts the refund due now for contract `id`'s open download, or says when.
    pub async fn refund(&self, id: &[u8; 32]) -> Result<Value, RenterError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        // The latest download with money in TX1 or TX2:0; a finished one still counts
        // while the farmer has not claimed TX2:0 with TX3.
        let Some(index) = record.downloads.iter().rposition(|d| {
            d.ln.is_none() && (d.phase.money_locked() || d.phase == DownloadPhase::Done)
        }) else {
            return Ok(json!({
                "contract_id": hex::encode(id),
                "status": "nothing",
                "message": "no download of this contract has money in TX1 or TX2",
            }));
        };
        let d = record.downloads[index].clone();
        let contract = d.contract.ok_or_else(|| internal("no contract"))?;
        let tx1_outpoint = d.tx1_outpoint.ok_or_else(|| internal("no TX1"))?;
        let tip = self.tip().await?;
        let destination = || -> Result<RefundDestination, RenterError> {
            Ok(RefundDestination::wallet_script(self.wallet.new_script()?))
        };
        let r = self.secret(Role::Download, d.key_index)?;
        let base = json!({
            "contract_id": hex::encode(id),
            "download_id": hex::encode(d.download_id),
        });
        if self.unspent(&tx1_outpoint).await? {
            if tip < contract.refund_height {
                return Ok(waiting(
                    base,
                    contract.refund_height,
                    tip,
                    "TX1 refund (after T1)",
                ));
            }
            // A version the watchtower holds, if any (both may broadcast the same bytes),
            // paying at least the current estimate if one does.
            let estimate = self.refund_fee_rate().await;
            let tx = match &d.watchtower {
                Some(t) => {
                    let want = refund_fees::own_refund_fee(&t.tx1_refund, contract.price, estimate);
                    refund_fees::pick_version(&t.tx1_versions(), contract.price, want)
                }
                None => {
                    let destination = destination()?;
                    let sign = |fee| contract.tx1_refund(tx1_outpoint, &r, &destination, fee);
                    let base = sign(REFUND_FEE).map_err(internal)?;
                    sign(refund_fees::own_refund_fee(&base, contract.price, estimate))
                        .map_err(internal)?
                }
            };
            return self.broadcast_refund(&mut record, index, tx, base).await;
        }
        // TX1 is spent: by TX2 (then TX2:0 may come back after Δ), by our own refund, or by
        // the watchtower's copy of it.
        if let Some(tx) = self.tower_refund_seen(&d, false).await? {
            return self.refunded_by_tower(&mut record, index, &tx, base);
        }
        // The TX2 really on the chain: the farmer may have re-signed it under fresh nonces
        // (same outputs, other txid), and then TX2':0 is the one to refund.
        let (tx2_txid, expected) = match self.tx1_spender(&d, &contract, tx1_outpoint).await? {
            spender::Tx1Spender::Tx2 { txid, expected } => (txid, expected),
            spender::Tx1Spender::Other(txid) => {
                return Ok(merge(
                    base,
                    json!({
                        "status": "nothing",
                        "message": format!("TX1 was spent by {txid}, a refund of TX1, not by TX2"),
                    }),
                ));
            }
        };
        let tx2_outpoint = OutPoint {
            txid: tx2_txid,
            vout: 0,
        };
        if !self.unspent(&tx2_outpoint).await? {
            if let Some(tx) = self.tower_refund_seen(&d, true).await? {
                return self.refunded_by_tower(&mut record, index, &tx, base);
            }
            return Ok(merge(
                base,
                json!({
                    "status": "nothing",
                    "message": "nothing to refund: the farmer claimed TX2's output with TX3, or a refund already spent it",
                }),
            ));
        }
        let confirmations = self.confirmations(&tx2_txid).await?;
        let due = u32::from(contract.payout_delay);
        if confirmations < due {
            let at = tip + (due - confirmations);
            return Ok(waiting(base, at, tip, "TX2 refund (Δ blocks after TX2)"));
        }
        let tx2_fee = record.price
            - d.unsigned_tx2
                .as_ref()
                .map(|t| t.output[0].value)
                .unwrap_or_default();
        let value = contract.tx2_value(tx2_fee).map_err(internal)?;
        let r2 = self.secret(Role::Tx2, d.key_index)?;
        // The tower's versions spend the agreed TX2:0; for a TX2' a fresh refund is
        // signed. Either pays at least the current estimate.
        let estimate = self.refund_fee_rate().await;
        let held: Vec<Transaction> = d
            .watchtower
            .as_ref()
            .map(|t| t.tx2_versions())
            .unwrap_or_default()
            .into_iter()
            .filter(|tx| tx.input[0].previous_output == tx2_outpoint)
            .collect();
        let tx = match held.first() {
            Some(base) => {
                let want = refund_fees::own_refund_fee(base, value, estimate);
                refund_fees::pick_version(&held, value, want)
            }
            None => {
                let destination = destination()?;
                let sign = |fee| contract.tx2_refund(tx2_outpoint, value, &r2, &destination, fee);
                let base = sign(REFUND_FEE).map_err(internal)?;
                sign(refund_fees::own_refund_fee(&base, value, estimate)).map_err(internal)?
            }
        };
        let base = match expected {
            true => base,
            false => merge(base, json!({ "unexpected_tx2": tx2_txid.to_string() })),
        };
        self.broadcast_refund(&mut record, index, tx, base).await
    }

    async fn broadcast_refund(
        &self,
        record: &mut RentedContract,
        index: usize,
        tx: Transaction,
        base: Value,
    ) -> Result<Value, RenterError> {
        let txid = tx.compute_txid();
        record.downloads[index].refund_txid = Some(txid);
        self.store(record)?;
        self.bitcoind
            .call("sendrawtransaction", json!([serialize_hex(&tx)]))
            .await?;
        record.downloads[index].phase = DownloadPhase::Refunded;
        self.store(record)?;
        Ok(merge(
            base,
            json!({
                "status": "broadcast",
                "txid": txid.to_string(),
                "amount_sat": tx.output[0].value.to_sat(),
            }),
        ))
    }

    pub(super) async fn unspent(&self, outpoint: &OutPoint) -> Result<bool, RenterError> {
        let found = self
            .bitcoind
            .call(
                "gettxout",
                json!([outpoint.txid.to_string(), outpoint.vout, true]),
            )
            .await?;
        Ok(!found.is_null())
    }

    pub(super) async fn confirmations(&self, txid: &Txid) -> Result<u32, RenterError> {
        let info = self
            .bitcoind
            .call("getrawtransaction", json!([txid.to_string(), true]))
            .await?;
        Ok(info["confirmations"].as_u64().unwrap_or(0) as u32)
    }
}

fn waiting(base: Value, height: u32, tip: u32, what: &str) -> Value {
    merge(
        base,
        json!({
            "status": "waiting",
            "refund_height": height,
            "blocks_to_wait": height.saturating_sub(tip),
            "message": format!("{what} can be broadcast once the chain reaches height {height} (now {tip})"),
        }),
    )
}
