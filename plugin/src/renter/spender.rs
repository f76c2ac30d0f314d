//! The transaction that really spent TX1:0. A farmer may spend TX1 with a TX2' that it
//! re-signed under fresh nonces: valid (the renter's SIGHASH_ALL signature fixes TX2's
//! inputs and outputs, so TX2':0 pays the same script and value as TX2:0), but with another
//! txid, so refunds built for the expected TX2 txid would never be valid. The renter's
//! refund follows whatever is on the chain (or in the mempool) instead.

use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::{Block, OutPoint, Transaction, Txid};
use dstore_protocol::contract::DownloadContract;
use serde_json::json;

use super::records::RentedDownload;
use super::{internal, Renter, RenterError};

/// Who spent TX1:0.
pub(super) enum Tx1Spender {
    /// A TX2 (the expected one, or a re-signed TX2' with the same outputs): its txid.
    Tx2 { txid: Txid, expected: bool },
    /// Something else: a refund of TX1 through the renter's own after(T1) branch.
    Other(Txid),
}

impl Renter {
    /// Finds the transaction that spent `d`'s TX1:0 (which must be spent): the expected
    /// TX2 when it is there, else the real spender, from the mempool or the blocks since
    /// the download started.
    pub(super) async fn tx1_spender(
        &self,
        d: &RentedDownload,
        contract: &DownloadContract,
        tx1_outpoint: OutPoint,
    ) -> Result<Tx1Spender, RenterError> {
        if let Some(txid) = d.tx2_txid {
            if self.find_tx(&txid, d.start_height).await?.is_some() {
                return Ok(Tx1Spender::Tx2 {
                    txid,
                    expected: true,
                });
            }
        }
        let spender = self
            .spender_of(&tx1_outpoint, d.start_height)
            .await?
            .ok_or_else(|| internal("TX1 is spent but no spender was found"))?;
        let txid = spender.compute_txid();
        let tx2_script = contract.tx2_script_pubkey().map_err(internal)?;
        if spender.output.first().map(|o| &o.script_pubkey) != Some(&tx2_script) {
            return Ok(Tx1Spender::Other(txid));
        }
        tracing::warn!(
            download = %hex::encode(d.download_id),
            spender = %txid,
            expected = ?d.tx2_txid,
            "TX1 was spent by a TX2 that is not the agreed one (re-signed under fresh nonces): its output 0 is refunded"
        );
        Ok(Tx1Spender::Tx2 {
            txid,
            expected: false,
        })
    }

    /// The transaction spending `outpoint`: from the mempool (`gettxspendingprevout`), else
    /// from the blocks at or above `from_height`.
    async fn spender_of(
        &self,
        outpoint: &OutPoint,
        from_height: u32,
    ) -> Result<Option<Transaction>, RenterError> {
        let found = self
            .bitcoind
            .call(
                "gettxspendingprevout",
                json!([[{"txid": outpoint.txid.to_string(), "vout": outpoint.vout}]]),
            )
            .await?;
        if let Some(txid) = found[0]["spendingtxid"].as_str() {
            let hex = self
                .bitcoind
                .call("getrawtransaction", json!([txid]))
                .await?;
            return Ok(hex.as_str().and_then(|h| deserialize_hex(h).ok()));
        }
        let tip = self.tip().await?;
        for height in from_height..=tip {
            let hash = self.bitcoind.call("getblockhash", json!([height])).await?;
            let raw = self.bitcoind.call("getblock", json!([hash, 0])).await?;
            let block: Block = raw
                .as_str()
                .and_then(|h| deserialize_hex(h).ok())
                .ok_or_else(|| internal(format!("block {height} does not decode")))?;
            let spender = block
                .txdata
                .into_iter()
                .find(|tx| tx.input.iter().any(|i| i.previous_output == *outpoint));
            if spender.is_some() {
                return Ok(spender);
            }
        }
        Ok(None)
    }
}
