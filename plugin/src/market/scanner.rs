//! The market scanner: follows bitcoind block by block from `--market-start-height`,
//! resumes from the stored tip, walks back to the fork on a reorg (undoing each block's
//! records), and turns each block into record changes with [`scan_block`], a plain function
//! of the block and the records so far (no RPC: the bench times it).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{Block, BlockHash, OutPoint, Transaction};
use dstore_protocol::market::announce::parse_announcement;
use dstore_protocol::market::lease::{
    leased_by, leased_outputs, parse_leases, verify_lease, LeaseRecord,
};
use dstore_protocol::market::outcome::classify_spend;
use serde_json::{json, Value};

use super::store::{
    prefix_of, AnnouncementRec, BlockDelta, BondRec, EventRec, FollowRec, Key, LeaseRec,
    MarketState, Record,
};
use super::Market;
use crate::bitcoind::{Bitcoind, BitcoindError};
use crate::db::DbError;

/// The scanner's policy.
#[derive(Debug, Clone, Copy)]
pub struct ScanSettings {
    /// Announcements with a smaller bond are ignored (`--market-min-bond-sat`).
    pub min_bond_sat: u64,
}

/// The record changes block `block` at `height` makes on top of `state`.
pub fn scan_block(
    state: &MarketState,
    block: &Block,
    height: u32,
    settings: &ScanSettings,
) -> BlockDelta {
    let mut scan = BlockScan {
        base: state,
        height,
        time: u64::from(block.header.time),
        changed: HashMap::new(),
        order: Vec::new(),
        new_identities: Vec::new(),
    };
    for (index, tx) in block.txdata.iter().enumerate() {
        if !tx.is_coinbase() {
            scan.spends(tx);
        }
        if tx.output.iter().any(|o| o.script_pubkey.is_op_return()) {
            scan.announcement(tx, index as u32, settings);
            scan.lease(tx);
        }
    }
    scan.finish()
}

/// One block's scan: the records as they stand after the transactions seen so far.
struct BlockScan<'a> {
    base: &'a MarketState,
    height: u32,
    time: u64,
    changed: HashMap<Key, Option<Record>>,
    order: Vec<Key>,
    /// Identities first announced in this block.
    new_identities: Vec<XOnlyPublicKey>,
}

impl BlockScan<'_> {
    fn get(&self, key: &Key) -> Option<&Record> {
        match self.changed.get(key) {
            Some(record) => record.as_ref(),
            None => self.base.records.get(key),
        }
    }

    fn set(&mut self, key: Key, record: Option<Record>) {
        if self.changed.insert(key, record).is_none() {
            self.order.push(key);
        }
    }

    fn finish(self) -> BlockDelta {
        let mut delta = BlockDelta::default();
        for key in self.order {
            delta.undo.push((key, self.base.records.get(&key).cloned()));
            delta
                .changes
                .push((key, self.changed.get(&key).cloned().flatten()));
        }
        delta
    }

    /// Bond spends (withdrawals) and spends of followed contract outputs (outcomes).
    fn spends(&mut self, tx: &Transaction) {
        for (index, input) in tx.input.iter().enumerate() {
            let spent = input.previous_output;
            if let Some(Record::Bond(bond)) = self.get(&Key::Bond(spent)) {
                if bond.spent_height.is_none() {
                    let mut bond = bond.clone();
                    bond.spent_height = Some(self.height);
                    tracing::info!(farmer = %bond.identity, bond = %spent, "market: bond spent, withdrawn");
                    self.set(Key::Bond(spent), Some(Record::Bond(bond)));
                }
            }
            if let Some(Record::Follow(follow)) = self.get(&Key::Follow(spent)) {
                let follow = follow.clone();
                self.outcome(tx, index, spent, follow);
            }
        }
    }

    fn outcome(&mut self, tx: &Transaction, index: usize, spent: OutPoint, follow: FollowRec) {
        let outcome = classify_spend(follow.kind, tx, index);
        self.set(Key::Follow(spent), None);
        if let Some((next, kind)) = outcome.follow() {
            let record = FollowRec {
                lease: follow.lease,
                kind,
            };
            self.set(Key::Follow(next), Some(Record::Follow(record)));
        }
        if let Some(count) = outcome.count() {
            let event = EventRec {
                lease: follow.lease,
                count,
                height: self.height,
            };
            let key = Key::Event(OutPoint::new(tx.compute_txid(), index as u32));
            self.set(key, Some(Record::Event(event)));
        }
    }

    /// An announcement (`DSA`): kept if well formed and its bond is large enough.
    fn announcement(&mut self, tx: &Transaction, tx_index: u32, settings: &ScanSettings) {
        let parsed = match parse_announcement(tx) {
            None => return,
            Some(Err(e)) => {
                tracing::info!(txid = %tx.compute_txid(), "market: ignoring an announcement: {e}");
                return;
            }
            Some(Ok(parsed)) => parsed,
        };
        let value_sat = parsed.bond_value.to_sat();
        if value_sat < settings.min_bond_sat {
            tracing::info!(
                txid = %tx.compute_txid(),
                value_sat,
                min_bond_sat = settings.min_bond_sat,
                "market: ignoring an announcement: bond below --market-min-bond-sat"
            );
            return;
        }
        let a = parsed.announcement;
        let record = AnnouncementRec {
            identity: a.identity,
            peer_url: a.peer_url,
            locktime: a.locktime,
            bond: parsed.bond,
            height: self.height,
            tx_index,
        };
        let bond = BondRec {
            identity: a.identity,
            value_sat,
            locktime: a.locktime,
            confirmed_height: self.height,
            confirmed_time: self.time,
            spent_height: None,
        };
        tracing::info!(farmer = %a.identity, url = %record.peer_url, value_sat, "market: farmer announced");
        self.set(
            Key::Announcement(tx.compute_txid()),
            Some(Record::Announcement(record)),
        );
        self.set(Key::Bond(parsed.bond), Some(Record::Bond(bond)));
        if !self.is_known(&a.identity) {
            self.new_identities.push(a.identity);
            self.attribute_pending_leases(&a.identity);
        }
    }

    fn is_known(&self, identity: &XOnlyPublicKey) -> bool {
        self.new_identities.contains(identity)
            || self
                .base
                .identities
                .get(&prefix_of(identity))
                .is_some_and(|ids| ids.contains(identity))
    }

    /// Lease records seen before `identity` was announced that verify under it.
    fn attribute_pending_leases(&mut self, identity: &XOnlyPublicKey) {
        let prefix = prefix_of(identity);
        let mut keys: Vec<Key> = self
            .base
            .pending_leases
            .get(&prefix)
            .cloned()
            .unwrap_or_default();
        keys.extend(self.order.iter().filter(|k| matches!(k, Key::Lease(_))));
        for key in keys {
            let Some(Record::Lease(lease)) = self.get(&key) else {
                continue;
            };
            if lease.identity.is_some() || lease.identity_prefix != prefix {
                continue;
            }
            let mut lease = lease.clone();
            if verify_lease(&lease_record(&lease), identity, &lease.leased).is_ok() {
                lease.identity = Some(*identity);
                self.set(key, Some(Record::Lease(lease)));
            }
        }
    }

    /// Every lease record (`DSL`) of `tx`: see [`Self::lease_at`].
    fn lease(&mut self, tx: &Transaction) {
        for found in parse_leases(tx) {
            match found {
                Ok((vout, record)) => self.lease_at(tx, vout, record),
                Err(e) => {
                    tracing::info!(txid = %tx.compute_txid(), "market: ignoring a lease record: {e}")
                }
            }
        }
    }

    /// The lease record at `vout`: kept, attributed if it verifies under an announced
    /// identity, and its contract outputs followed.
    fn lease_at(&mut self, tx: &Transaction, vout: usize, record: LeaseRecord) {
        let leased = leased_by(tx, vout).to_vec();
        let identity = self
            .candidates(&record.identity_prefix)
            .into_iter()
            .find(|id| verify_lease(&record, id, &leased).is_ok());
        let lease_point = OutPoint::new(tx.compute_txid(), vout as u32);
        let rec = LeaseRec {
            identity_prefix: record.identity_prefix,
            contract_tag: record.contract_tag,
            signature: record.signature,
            leased,
            identity,
            height: self.height,
        };
        self.set(Key::Lease(lease_point), Some(Record::Lease(rec)));
        for (point, kind) in leased_outputs(tx, vout) {
            let follow = FollowRec {
                lease: lease_point,
                kind,
            };
            self.set(Key::Follow(point), Some(Record::Follow(follow)));
        }
    }

    fn candidates(&self, prefix: &[u8; 4]) -> Vec<XOnlyPublicKey> {
        let mut ids = self
            .base
            .identities
            .get(prefix)
            .cloned()
            .unwrap_or_default();
        ids.extend(
            self.new_identities
                .iter()
                .filter(|id| prefix_of(id) == *prefix),
        );
        ids
    }
}

/// The protocol's record from a stored one.
pub fn lease_record(lease: &LeaseRec) -> LeaseRecord {
    LeaseRecord {
        identity_prefix: lease.identity_prefix,
        contract_tag: lease.contract_tag,
        signature: lease.signature,
    }
}

/// Why one step of following the chain failed (retried at the next poll).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{0}")]
    Bitcoind(#[from] BitcoindError),
    #[error("market store: {0}")]
    Db(#[from] DbError),
    #[error("bitcoind sent an unreadable block: {0}")]
    BadBlock(String),
}

/// Follows the chain until `shutdown`: scans every new block, rolls back on reorgs, and
/// asks for an advert refresh once caught up after new blocks.
pub async fn follow_chain(
    market: Arc<Market>,
    bitcoind: Arc<Bitcoind>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let poll = Duration::from_millis(market.settings().poll_ms);
    let mut scanned_since_refresh = false;
    loop {
        let progressed = match step(&market, &bitcoind).await {
            Ok(progressed) => progressed,
            Err(e) => {
                tracing::warn!("market scanner: {e}");
                false
            }
        };
        if progressed {
            scanned_since_refresh = true;
        } else if scanned_since_refresh {
            scanned_since_refresh = false;
            market.request_refresh();
        }
        let pause = if progressed { Duration::ZERO } else { poll };
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One block forward, or one block back on a reorg; false when at bitcoind's tip.
pub async fn step(market: &Market, bitcoind: &Bitcoind) -> Result<bool, ScanError> {
    let count = block_count(bitcoind).await?;
    let next = match market.tip() {
        None => match market.settings().start_height {
            Some(start) => start,
            None => count,
        },
        Some(tip) => {
            if tip.height > count || block_hash(bitcoind, tip.height).await? != tip.hash {
                market.rollback_tip()?;
                return Ok(true);
            }
            tip.height + 1
        }
    };
    if next > count {
        return Ok(false);
    }
    let hash = block_hash(bitcoind, next).await?;
    let block = fetch_block(bitcoind, &hash).await?;
    if let Some(tip) = market.tip() {
        if block.header.prev_blockhash != tip.hash {
            market.rollback_tip()?;
            return Ok(true);
        }
    }
    market.apply_block(next, &block)?;
    Ok(true)
}

async fn block_count(bitcoind: &Bitcoind) -> Result<u32, ScanError> {
    let count = bitcoind.call("getblockcount", json!([])).await?;
    count
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| ScanError::BadBlock(format!("getblockcount returned {count}")))
}

async fn block_hash(bitcoind: &Bitcoind, height: u32) -> Result<BlockHash, ScanError> {
    let hash = bitcoind.call("getblockhash", json!([height])).await?;
    hash.as_str()
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| ScanError::BadBlock(format!("getblockhash returned {hash}")))
}

/// `getblock <hash> 0`, parsed.
pub async fn fetch_block(bitcoind: &Bitcoind, hash: &BlockHash) -> Result<Block, ScanError> {
    let raw = bitcoind
        .call("getblock", json!([hash.to_string(), 0]))
        .await?;
    parse_block(&raw)
}

/// A block from getblock verbosity 0's hex.
pub fn parse_block(raw: &Value) -> Result<Block, ScanError> {
    let text = raw
        .as_str()
        .ok_or_else(|| ScanError::BadBlock("getblock did not return hex".into()))?;
    let bytes =
        decode_hex(text).ok_or_else(|| ScanError::BadBlock("getblock hex is not hex".into()))?;
    bitcoin::consensus::deserialize(&bytes).map_err(|e| ScanError::BadBlock(e.to_string()))
}

/// Each ASCII byte's hex digit value, 0xff for a non-digit.
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff_u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Hex to bytes through a lookup table: a block's megabyte of hex is the largest cost of
/// reading it after the RPC itself, and this is several times faster than `hex::decode`.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() / 2);
    let mut bad = 0u8;
    for pair in digits.chunks_exact(2) {
        let (hi, lo) = (HEX_VALUES[pair[0] as usize], HEX_VALUES[pair[1] as usize]);
        bad |= (hi | lo) & 0xf0;
        out.push((hi << 4) | (lo & 0x0f));
    }
    (bad == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::block::{Header, Version as BlockVersion};
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
    use bitcoin::transaction::Version;
    use bitcoin::{
        Amount, CompactTarget, ScriptBuf, Sequence, TxIn, TxMerkleNode, TxOut, Txid, Witness,
    };
    use dstore_protocol::market::announce::Announcement;
    use dstore_protocol::market::bond::bond_script_pubkey;
    use dstore_protocol::market::lease::sign_lease;

    const SETTINGS: ScanSettings = ScanSettings {
        min_bond_sat: 10_000,
    };

    fn keypair(n: u8) -> Keypair {
        Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[n; 32]).unwrap())
    }

    fn tx(inputs: Vec<OutPoint>, output: Vec<TxOut>) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .into_iter()
                .map(|previous_output| TxIn {
                    previous_output,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output,
        }
    }

    fn block(txs: Vec<Transaction>) -> Block {
        let coinbase = tx(vec![OutPoint::null()], vec![]);
        Block {
            header: Header {
                version: BlockVersion::TWO,
                prev_blockhash: BlockHash::all_zeros(),
                merkle_root: TxMerkleNode::all_zeros(),
                time: 1_700_000_000,
                bits: CompactTarget::from_consensus(0x207f_ffff),
                nonce: 0,
            },
            txdata: std::iter::once(coinbase).chain(txs).collect(),
        }
    }

    #[test]
    fn hex_decoding_matches_the_hex_crate_and_refuses_non_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_hex(&hex::encode(&bytes)), Some(bytes.clone()));
        assert_eq!(decode_hex(&hex::encode_upper(&bytes)), Some(bytes));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    fn coin(n: u8) -> OutPoint {
        OutPoint::new(Txid::from_byte_array([n; 32]), 0)
    }

    fn announcement(key: &Keypair, value_sat: u64, bond_script_of: &Keypair) -> Transaction {
        let announcement = Announcement {
            identity: key.x_only_public_key().0,
            locktime: 500,
            bond_vout: 0,
            peer_url: "http://127.0.0.1:9737".into(),
        };
        let bond = TxOut {
            value: Amount::from_sat(value_sat),
            script_pubkey: bond_script_pubkey(&bond_script_of.x_only_public_key().0, 500).unwrap(),
        };
        let record = TxOut {
            value: Amount::ZERO,
            script_pubkey: announcement.script().unwrap(),
        };
        tx(vec![coin(value_sat as u8)], vec![bond, record])
    }

    fn scan(state: &mut MarketState, height: u32, txs: Vec<Transaction>) -> BlockDelta {
        let delta = scan_block(state, &block(txs), height, &SETTINGS);
        state.apply(&delta.changes);
        delta
    }

    fn count(state: &MarketState, pred: impl Fn(&Record) -> bool) -> usize {
        state.records.values().filter(|r| pred(r)).count()
    }

    /// A lease record before its farmer's announcement is attributed when the announcement
    /// comes; a small bond and a bond of another key are ignored; spending the bond marks
    /// it spent; undoing the blocks in reverse restores the empty state.
    #[test]
    fn announcements_bonds_and_late_lease_attribution() {
        let farmer = keypair(7);
        let mut state = MarketState::default();
        let leased = vec![TxOut {
            value: Amount::from_sat(20_000),
            script_pubkey: ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_byte_array([3; 32])),
        }];
        let record = sign_lease(&farmer, &[9; 32], &leased);
        let mut outputs = leased.clone();
        outputs.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: record.script(),
        });
        let first = scan(&mut state, 1, vec![tx(vec![coin(1)], outputs)]);
        assert_eq!(
            count(
                &state,
                |r| matches!(r, Record::Lease(l) if l.identity.is_none())
            ),
            1
        );
        assert_eq!(count(&state, |r| matches!(r, Record::Follow(_))), 1);

        let small = announcement(&farmer, 5_000, &farmer);
        let forged = announcement(&farmer, 60_000, &keypair(8));
        let good = announcement(&farmer, 50_000, &farmer);
        let bond = OutPoint::new(good.compute_txid(), 0);
        let second = scan(&mut state, 2, vec![small, forged, good]);
        assert_eq!(count(&state, |r| matches!(r, Record::Announcement(_))), 1);
        assert_eq!(
            count(
                &state,
                |r| matches!(r, Record::Lease(l) if l.identity == Some(farmer.x_only_public_key().0))
            ),
            1,
            "attributed once the farmer is announced"
        );

        let third = scan(&mut state, 3, vec![tx(vec![bond], vec![])]);
        assert!(matches!(
            state.records.get(&Key::Bond(bond)),
            Some(Record::Bond(b)) if b.spent_height == Some(3)
        ));

        for delta in [third, second, first] {
            state.apply(&delta.undo);
        }
        assert!(state.records.is_empty());
        assert!(state.identities.is_empty());
    }
}
