//! The tower: the watch engine behind one lock, fed by ZMQ notices and RPC reconciliation,
//! persisting every change before it acts and broadcasting whatever the engine says is due.
//! For auditor watches it also releases the salts of confirmed candidates and runs the
//! off-chain Merkle audits ([`crate::auditor`]), recording each before it is sent.
//!
//! Memory: the engine keeps only its compact index in RAM (issue 21). Before each
//! operation the tower loads from the store the watches the engine names (those a block
//! or a transaction touches, those due at the tip, the one an RPC names), and once what
//! changed is stored it evicts them again ([`Engine::evict`]): after each block of a
//! catch-up, and after each `--act-batch` of due watches when it acts, so a tower back
//! from a long outage does not load every contract at once. Audit contracts (groups or
//! an auditor) too: they are due at their timelocks, salt releases and Merkle audits like
//! any other wake height, and the auditor's duties run for the ones loaded at the tip. A
//! settled contract buried [`COMPACT_DEPTH`] blocks deep, its audits over, is replaced by
//! its summary ([`Tower::compact`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::consensus::encode::{deserialize, deserialize_hex, serialize_hex};
use bitcoin::{Amount, Block, BlockHash, OutPoint, Transaction, TxOut, Txid};
use dstore_daemon::bitcoind::{Bitcoind, BitcoindError};
use dstore_protocol::watch::{
    Engine, Merge, Registration, RegistrationError, WatchId, COMPACT_DEPTH,
};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Mutex;

use crate::auditor::{Auditor, AuditorOutcome, AuditorSettings};
use crate::config::DevFault;
use crate::store::{Store, StoreError, Tip};
use crate::wallet::TowerWallet;
use dstore_protocol::watch::auditor::{MerkleRecord, ReleaseDue};
use dstore_protocol::watch::cpfp::{cpfp_child, CpfpError};
use dstore_protocol::watch::DueBroadcast;

mod recovery;

/// bitcoind's "transaction already in block chain" (RPC_VERIFY_ALREADY_IN_CHAIN).
const ALREADY_IN_CHAIN: i64 = -27;

#[derive(Debug, thiserror::Error)]
pub enum TowerError {
    #[error(transparent)]
    Bitcoind(#[from] BitcoindError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    #[error("bitcoind sent something unreadable: {0}")]
    BadChainData(String),
    #[error("no watch {0}")]
    UnknownWatch(String),
    #[error("registration {index} of the batch: {error}")]
    BatchRegistration {
        index: usize,
        error: RegistrationError,
    },
}

/// Counters for the metrics endpoint and `tower-getinfo`.
#[derive(Debug, Default)]
pub struct Counters {
    pub blocks_connected: AtomicU64,
    pub blocks_disconnected: AtomicU64,
    pub keys_extracted: AtomicU64,
    pub broadcasts: AtomicU64,
    pub broadcast_rejections: AtomicU64,
    pub cpfp_bumps: AtomicU64,
    pub salt_releases: AtomicU64,
    pub merkle_audits_passed: AtomicU64,
    pub merkle_audits_failed: AtomicU64,
    pub zmq_messages: AtomicU64,
    pub zmq_malformed: AtomicU64,
    pub zmq_gaps: AtomicU64,
    pub reconcile_failures: AtomicU64,
    pub compactions: AtomicU64,
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct State {
    engine: Engine,
    tip: Option<Tip>,
    /// A recovery past pruned blocks whose replay has not reached bitcoind's tip yet.
    recovery: Option<recovery::Recovery>,
    /// Watches compacted to their summary and not forgotten.
    compacted: usize,
}

pub struct Tower {
    state: Mutex<State>,
    store: Store,
    bitcoind: Arc<Bitcoind>,
    wallet: TowerWallet,
    auditor: Auditor,
    /// Due watches loaded at a time while acting ([`Tower::act`]).
    act_batch: usize,
    /// A test-only fault (builds with the `dev-fault` feature only).
    dev_fault: Option<DevFault>,
    pub counters: Counters,
}

/// Package feerate of the first CPFP bump; each further bump of the same transaction adds
/// as much again (so a later child can replace an earlier one).
const BUMP_FEERATE_SAT_VB: u64 = 25;

impl Tower {
    /// Rebuilds the engine's index and schedule from the stored index records, and reads
    /// the last processed block. The auditor's
    /// answers arrive on the returned receiver; hand each to [`Tower::on_auditor_outcome`].
    pub fn open(
        store: Store,
        bitcoind: Arc<Bitcoind>,
        wallet: TowerWallet,
        settings: AuditorSettings,
        act_batch: usize,
        dev_fault: Option<DevFault>,
    ) -> Result<(Tower, UnboundedReceiver<AuditorOutcome>), TowerError> {
        let started = Instant::now();
        let mut engine = load_engine(&store)?;
        engine.set_merkle_every(settings.merkle_every);
        let mut compacted = 0;
        store.for_each_summary(|_| {
            compacted += 1;
            Ok(())
        })?;
        let tip = store.tip()?;
        tracing::info!(watches = engine.len(), compacted, tip = ?tip.map(|t| t.height), seconds = started.elapsed().as_secs_f64(), "watchtower state loaded (index only)");
        let (auditor, outcomes) = Auditor::new(settings);
        let tower = Tower {
            state: Mutex::new(State {
                engine,
                tip,
                recovery: None,
                compacted,
            }),
            store,
            bitcoind,
            wallet,
            auditor,
            act_batch: act_batch.max(1),
            dev_fault,
            counters: Counters::default(),
        };
        Ok((tower, outcomes))
    }

    /// Loads the stored watches among `ids` that are not resident yet.
    fn page_in<'a>(
        &self,
        state: &mut State,
        ids: impl IntoIterator<Item = &'a WatchId>,
    ) -> Result<(), TowerError> {
        for id in ids {
            if state.engine.get(id).is_some() {
                continue;
            }
            if let Some(watch) = self.store.load(id)? {
                state.engine.page_in(watch);
            }
        }
        Ok(())
    }

    pub fn bitcoind(&self) -> &Bitcoind {
        &self.bitcoind
    }

    /// Brings the processed tip to bitcoind's best block (disconnecting stale blocks first,
    /// then connecting), then broadcasts whatever is due at the new tip.
    pub async fn reconcile(&self) -> Result<(), TowerError> {
        let mut state = self.state.lock().await;
        let result = self.catch_up(&mut state).await;
        if result.is_err() {
            bump(&self.counters.reconcile_failures);
        }
        let result = match result {
            Ok(()) => self.act(&mut state).await,
            Err(e) => Err(e),
        };
        state.engine.evict();
        result
    }

    async fn catch_up(&self, state: &mut State) -> Result<(), TowerError> {
        loop {
            let best = self.best_block().await?;
            let Some(tip) = state.tip else {
                // First start: nothing was registered before now, so nothing to replay.
                state.tip = Some(best);
                self.store.save([], Some(best))?;
                return Ok(());
            };
            if tip.hash == best.hash {
                return self.finish_recovery(state);
            }
            let header = self
                .bitcoind
                .call("getblockheader", json!([tip.hash.to_string(), true]))
                .await?;
            if header["confirmations"].as_i64().unwrap_or(-1) < 0 {
                self.disconnect(state, tip, &header).await?;
            } else if tip.height < best.height {
                if let Err(e) = self.connect_next(state, tip).await {
                    // A pruned node no longer has the block: recover without it.
                    let pruned = recovery::is_pruned_block(&e);
                    let recovered = pruned && self.recover_if_pruned(state, tip).await?;
                    if !recovered {
                        return Err(e);
                    }
                }
            } else {
                // Same height, other hash, yet ours is active: bitcoind moved; look again.
                continue;
            }
        }
    }

    async fn best_block(&self) -> Result<Tip, TowerError> {
        let hash = self.bitcoind.call("getbestblockhash", json!([])).await?;
        let hash = parse_hash(&hash)?;
        let header = self
            .bitcoind
            .call("getblockheader", json!([hash.to_string(), true]))
            .await?;
        Ok(Tip {
            height: height_of(&header)?,
            hash,
        })
    }

    async fn fetch_block(&self, hash: &BlockHash) -> Result<Block, TowerError> {
        let hex = self
            .bitcoind
            .call("getblock", json!([hash.to_string(), 0]))
            .await?;
        let hex = hex
            .as_str()
            .ok_or_else(|| TowerError::BadChainData("getblock: not a hex string".into()))?;
        deserialize_hex(hex).map_err(|e| TowerError::BadChainData(format!("block {hash}: {e}")))
    }

    async fn disconnect(
        &self,
        state: &mut State,
        tip: Tip,
        header: &Value,
    ) -> Result<(), TowerError> {
        let block = self.fetch_block(&tip.hash).await?;
        let previous = parse_hash(&header["previousblockhash"])?;
        let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
        let wanted = state.engine.wanted_for_block(&block, &txids);
        self.page_in(state, &wanted)?;
        let changed = state.engine.disconnect_block(&block, tip.height);
        let new_tip = Tip {
            height: tip.height - 1,
            hash: previous,
        };
        self.persist(state, &changed, Some(new_tip))?;
        state.tip = Some(new_tip);
        bump(&self.counters.blocks_disconnected);
        tracing::warn!(height = tip.height, hash = %tip.hash, "block disconnected (reorg)");
        Ok(())
    }

    async fn connect_next(&self, state: &mut State, tip: Tip) -> Result<(), TowerError> {
        let height = tip.height + 1;
        let hash = self.bitcoind.call("getblockhash", json!([height])).await?;
        let hash = parse_hash(&hash)?;
        let block = self.fetch_block(&hash).await?;
        if block.header.prev_blockhash != tip.hash {
            // A reorg raced us; the next round sees our tip as stale and disconnects it.
            return Ok(());
        }
        let keys_before = self.keys_known(state);
        let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
        let touched = state.engine.touched_in_block(&block, &txids);
        let wanted = state.engine.wanted_in(&touched);
        self.page_in(state, &wanted)?;
        let changed = state.engine.connect_touched(&block, &touched, height);
        let new_tip = Tip { height, hash };
        self.persist(state, &changed, Some(new_tip))?;
        // Stored: a catch-up over many blocks keeps no block's watches in memory (the
        // changed ones are marked for the next act, which loads them again).
        state.engine.evict();
        state.tip = Some(new_tip);
        self.note_new_keys(state, keys_before);
        bump(&self.counters.blocks_connected);
        tracing::debug!(height, %hash, touched = changed.len(), "block connected");
        Ok(())
    }

    fn keys_known(&self, state: &State) -> usize {
        state.engine.keys()
    }

    fn note_new_keys(&self, state: &State, before: usize) {
        let after = self.keys_known(state);
        for _ in before..after {
            bump(&self.counters.keys_extracted);
        }
    }

    /// Stores the `changed` watches with their index records (evaluated at `tip`, or
    /// the current tip) and, if given, the new tip, in one synced write.
    fn persist(
        &self,
        state: &State,
        changed: &BTreeSet<WatchId>,
        tip: Option<Tip>,
    ) -> Result<(), TowerError> {
        let at = tip.or(state.tip).map_or(0, |t| t.height);
        let engine = &state.engine;
        let watches = changed
            .iter()
            .filter_map(|id| Some((engine.get(id)?, engine.index_record(id, at)?)));
        self.store.save(watches, tip)?;
        Ok(())
    }

    /// A transaction from the rawtx feed: recorded as unconfirmed (a confirmation comes
    /// with its block), and a TX2 among them yields f at once.
    pub async fn on_raw_tx(&self, bytes: &[u8]) -> Result<(), TowerError> {
        let tx: Transaction =
            deserialize(bytes).map_err(|e| TowerError::BadChainData(format!("rawtx: {e}")))?;
        let mut state = self.state.lock().await;
        let result = self.observe_raw_tx(&mut state, &tx);
        state.engine.evict();
        result
    }

    fn observe_raw_tx(&self, state: &mut State, tx: &Transaction) -> Result<(), TowerError> {
        let wanted = state.engine.wanted_for_tx(tx);
        self.page_in(state, &wanted)?;
        let keys_before = self.keys_known(state);
        let changed = state.engine.observe(tx, None);
        if changed.is_empty() {
            return Ok(());
        }
        self.persist(state, &changed, None)?;
        self.note_new_keys(state, keys_before);
        for id in &changed {
            if let Some(watch) = state.engine.get(id) {
                if watch.key.is_some() {
                    tracing::info!(watch = %hex::encode(id), txid = %tx.compute_txid(), "TX2 seen: key extracted and stored");
                }
            }
        }
        Ok(())
    }

    /// Broadcasts every due transaction: the intent is stored first, then bitcoind is asked,
    /// then its answer is stored. Replaying a stored intent re-sends the same bytes. The
    /// watches due at the tip are loaded `--act-batch` at a time.
    async fn act(&self, state: &mut State) -> Result<(), TowerError> {
        let Some(tip) = state.tip else {
            return Ok(());
        };
        let wanted: Vec<WatchId> = state.engine.wanted_at(tip.height).into_iter().collect();
        let mut batches = wanted.chunks(self.act_batch);
        // The first round also acts on the watches already loaded (none may be due).
        let mut batch = batches.next().unwrap_or_default();
        loop {
            self.page_in(state, batch)?;
            self.act_on_loaded(state, tip).await?;
            let Some(next) = batches.next() else {
                return Ok(());
            };
            // Every change of this batch is stored: its watches leave memory (a watch the
            // engine still wants comes back at the next act).
            state.engine.evict();
            batch = next;
        }
    }

    /// Broadcasts, bumps and compacts what the loaded watches make due, and runs the
    /// auditor's duties for them.
    async fn act_on_loaded(&self, state: &mut State, tip: Tip) -> Result<(), TowerError> {
        self.fill_beacon_hashes(state, tip.height).await?;
        let script = self.wallet.script();
        let actions = state.engine.actions(tip.height, Some(&script));
        for due in actions.broadcasts {
            self.broadcast(state, tip.height, due).await?;
        }
        for stuck in actions.bumps {
            self.bump(state, tip.height, stuck).await?;
        }
        for id in actions.compact {
            self.compact(state, &id, tip.height).await?;
        }
        self.audit(state, tip)
    }

    /// Replaces a settled watch buried [`COMPACT_DEPTH`] blocks deep by its summary: one
    /// atomic write puts the summary in and takes the watch and its index record out.
    async fn compact(&self, state: &mut State, id: &WatchId, tip: u32) -> Result<(), TowerError> {
        let Some(watch) = state.engine.get(id).filter(|w| w.compactable(tip)) else {
            return Ok(());
        };
        let summary = watch.summary(tip);
        self.store.compact(&summary)?;
        state.engine.forget(id);
        state.compacted += 1;
        bump(&self.counters.compactions);
        tracing::info!(watch = %hex::encode(id), settled_height = summary.settled_height, depth = COMPACT_DEPTH, "contract settled and buried: compacted to its summary, its transactions dropped");
        if crate::dev_fault!(self.dev_fault, SlowCompaction) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Looks up the block hashes groups need that the engine did not see connected (a
    /// watch registered, or the tower started, after its beacon block).
    async fn fill_beacon_hashes(&self, state: &mut State, tip: u32) -> Result<(), TowerError> {
        for height in state.engine.missing_block_hashes(tip) {
            let hash = self.bitcoind.call("getblockhash", json!([height])).await?;
            let changed = state.engine.note_block_hash(height, parse_hash(&hash)?);
            self.persist(state, &changed, None)?;
        }
        Ok(())
    }

    /// The auditor's duties at `tip`, for the auditor watches loaded (those a block
    /// touched or whose wake height came): release the salts of confirmed candidates, and
    /// run a Merkle audit where one is due. Each release is recorded and stored before it is
    /// sent; the answers come back through [`Tower::on_auditor_outcome`].
    fn audit(&self, state: &mut State, tip: Tip) -> Result<(), TowerError> {
        let ids: Vec<WatchId> = state
            .engine
            .watches()
            .filter(|(_, w)| w.audit.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.release_salts(state, &id, tip.height)?;
            self.merkle_audit(state, &id, tip);
        }
        Ok(())
    }

    fn release_salts(&self, state: &mut State, id: &WatchId, tip: u32) -> Result<(), TowerError> {
        let Some(watch) = state.engine.get(id) else {
            return Ok(());
        };
        let Some(url) = watch
            .registration
            .auditor
            .as_ref()
            .map(|a| a.farmer_url.clone())
        else {
            return Ok(());
        };
        let requests: Vec<_> = watch
            .releases_due()
            .into_iter()
            .filter(|due| self.auditor.may_release(id, due, tip))
            .filter_map(|due| watch.reveal_request(&due).map(|r| (due, r)))
            .collect();
        for (due, request) in requests {
            if let Some(watch) = state.engine.watch_mut(id) {
                watch.record_release_attempt(&due, tip);
            }
            self.persist(state, &BTreeSet::from([*id]), None)?;
            tracing::info!(watch = %hex::encode(id), audit = due.audit, candidate = due.candidate, txid = %due.candidate_txid, "candidate confirmed: releasing its salt to the farmer");
            self.auditor.send_release(*id, due, tip, &url, request);
        }
        Ok(())
    }

    fn merkle_audit(&self, state: &State, id: &WatchId, tip: Tip) {
        let Some(watch) = state.engine.get(id) else {
            return;
        };
        let every = self.auditor.settings.merkle_every;
        if !self.auditor.may_audit(id) || !watch.merkle_audit_due(tip.height, every) {
            return;
        }
        if let Some(spec) = &watch.registration.auditor {
            tracing::debug!(watch = %hex::encode(id), height = tip.height, "Merkle audit");
            self.auditor.send_merkle(*id, tip, spec);
        }
    }

    /// Records the farmer's answer to a release or a Merkle challenge. The request stops
    /// counting as in flight only once its answer is recorded (under the state lock), so
    /// no concurrent round sends it again in between.
    pub async fn on_auditor_outcome(&self, outcome: AuditorOutcome) -> Result<(), TowerError> {
        let mut state = self.state.lock().await;
        let id = match &outcome {
            AuditorOutcome::Release { id, .. } | AuditorOutcome::Merkle { id, .. } => *id,
        };
        let result = self
            .page_in(&mut state, &BTreeSet::from([id]))
            .and_then(|()| self.record_outcome(&mut state, &outcome));
        self.auditor.finished(&outcome);
        state.engine.evict();
        result
    }

    fn record_outcome(
        &self,
        state: &mut State,
        outcome: &AuditorOutcome,
    ) -> Result<(), TowerError> {
        let id = match outcome {
            AuditorOutcome::Release { id, .. } | AuditorOutcome::Merkle { id, .. } => *id,
        };
        let Some(watch) = state.engine.watch_mut(&id) else {
            return Ok(());
        };
        match outcome {
            AuditorOutcome::Release {
                due, tip, result, ..
            } => {
                self.note_release(&id, due, result);
                watch.record_release_outcome(due, *tip, result.clone());
            }
            AuditorOutcome::Merkle { record, .. } => {
                self.note_merkle(&id, record);
                watch.record_merkle_audit(record.clone());
            }
        }
        self.persist(state, &BTreeSet::from([id]), None)
    }

    fn note_release(&self, id: &WatchId, due: &ReleaseDue, result: &Result<Txid, String>) {
        let (watch, audit, candidate) = (hex::encode(id), due.audit, due.candidate);
        match result {
            Ok(claim) => {
                bump(&self.counters.salt_releases);
                tracing::info!(%watch, audit, candidate, %claim, "salt released; the farmer broadcast its claim");
            }
            Err(e) => {
                tracing::warn!(%watch, audit, candidate, "salt release failed (retried next block): {e}")
            }
        }
    }

    fn note_merkle(&self, id: &WatchId, record: &MerkleRecord) {
        let watch = hex::encode(id);
        if record.ok {
            bump(&self.counters.merkle_audits_passed);
            tracing::info!(%watch, height = record.height, "Merkle audit passed");
        } else if record.unreachable {
            let error = record.error.as_deref().unwrap_or("");
            tracing::warn!(%watch, height = record.height, "Merkle audit: the farmer is unreachable ({error}); retried with back-off, a failure only after a whole claim window");
        } else {
            bump(&self.counters.merkle_audits_failed);
            let error = record.error.as_deref().unwrap_or("");
            tracing::warn!(%watch, height = record.height, "Merkle audit FAILED: {error}; the candidates of later audits are withheld so the refunds return the money");
        }
    }

    async fn broadcast(
        &self,
        state: &mut State,
        tip: u32,
        due: DueBroadcast,
    ) -> Result<(), TowerError> {
        let id = due.id;
        if let Some(watch) = state.engine.watch_mut(&id) {
            watch.record_intent(&due.name, tip);
        }
        self.persist(state, &BTreeSet::from([id]), None)?;
        let txid = due.tx.compute_txid();
        let rejection = match self.send(&due.tx).await {
            Ok(()) => None,
            Err(BitcoindError::Rpc(e)) => Some(e.message),
            // bitcoind is away: the intent stays and the next reconcile retries.
            Err(other) => return Err(other.into()),
        };
        match &rejection {
            None => {
                bump(&self.counters.broadcasts);
                tracing::info!(watch = %hex::encode(id), name = %due.name, %txid, height = tip, "broadcast");
            }
            Some(reason) => {
                bump(&self.counters.broadcast_rejections);
                tracing::info!(watch = %hex::encode(id), name = %due.name, %txid, "bitcoind refused the broadcast for now: {reason}");
            }
        }
        if let Some(watch) = state.engine.watch_mut(&id) {
            watch.record_broadcast(&due.name, tip, rejection);
        }
        self.persist(state, &BTreeSet::from([id]), None)?;
        Ok(())
    }

    /// sendrawtransaction; "already in the chain" counts as sent.
    async fn send(&self, tx: &Transaction) -> Result<(), BitcoindError> {
        match self
            .bitcoind
            .call("sendrawtransaction", json!([serialize_hex(tx)]))
            .await
        {
            Err(BitcoindError::Rpc(e)) if e.code == ALREADY_IN_CHAIN => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Bumps a stuck transaction with a child spending its output to the tower's key (and
    /// the tower's own coins if that output is too small). The bump is recorded first.
    async fn bump(
        &self,
        state: &mut State,
        tip: u32,
        stuck: DueBroadcast,
    ) -> Result<(), TowerError> {
        let id = stuck.id;
        let bumps = state
            .engine
            .get(&id)
            .and_then(|w| w.attempts_of(&stuck.name))
            .map(|a| a.bumps)
            .unwrap_or(0);
        let feerate = BUMP_FEERATE_SAT_VB * u64::from(bumps + 1);
        let key = &self.wallet.secret;
        let child = match cpfp_child(&stuck.tx, Amount::ZERO, key, &[], feerate) {
            Err(CpfpError::InsufficientFunds(_)) => {
                let coins = self.own_coins().await?;
                cpfp_child(&stuck.tx, Amount::ZERO, key, &coins, feerate)
            }
            other => other,
        };
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(watch = %hex::encode(id), name = %stuck.name, "cannot bump: {e}");
                return Ok(());
            }
        };
        let child_txid = child.compute_txid();
        if let Some(watch) = state.engine.watch_mut(&id) {
            watch.record_bump(&stuck.name, tip, child_txid);
        }
        self.persist(state, &BTreeSet::from([id]), None)?;
        match self.send(&child).await {
            Ok(()) => {
                bump(&self.counters.cpfp_bumps);
                tracing::info!(watch = %hex::encode(id), name = %stuck.name, child = %child_txid, feerate, "stuck for 3 blocks: bumped by CPFP");
            }
            Err(BitcoindError::Rpc(e)) => {
                tracing::warn!(watch = %hex::encode(id), name = %stuck.name, "bitcoind refused the CPFP child: {}", e.message)
            }
            Err(other) => return Err(other.into()),
        }
        Ok(())
    }

    /// The tower's confirmed coins, from bitcoind's UTXO set (scantxoutset).
    async fn own_coins(&self) -> Result<Vec<(OutPoint, TxOut)>, TowerError> {
        let descriptor = format!("addr({})", self.wallet.address);
        let scan = self
            .bitcoind
            .call("scantxoutset", json!(["start", [descriptor]]))
            .await?;
        let mut coins = Vec::new();
        for u in scan["unspents"].as_array().into_iter().flatten() {
            let (Some(txid), Some(vout), Some(amount)) = (
                u["txid"].as_str().and_then(|t| t.parse().ok()),
                u["vout"].as_u64(),
                u["amount"].as_f64(),
            ) else {
                continue;
            };
            let Ok(value) = Amount::from_btc(amount) else {
                continue;
            };
            coins.push((
                OutPoint {
                    txid,
                    vout: vout as u32,
                },
                TxOut {
                    value,
                    script_pubkey: self.wallet.script(),
                },
            ));
        }
        Ok(coins)
    }

    /// Registers (or merges) a contract; then looks back for what it missed and acts.
    pub async fn register(&self, registration: Registration) -> Result<Merge, TowerError> {
        let mut state = self.state.lock().await;
        let result = self.register_one(&mut state, registration).await;
        state.engine.evict();
        result
    }

    async fn register_one(
        &self,
        state: &mut State,
        registration: Registration,
    ) -> Result<Merge, TowerError> {
        let id = registration.id;
        let rescan = registration.rescan_from_height;
        self.page_in(state, &BTreeSet::from([id]))?;
        let merge = state.engine.register(registration)?;
        self.persist(state, &BTreeSet::from([id]), None)?;
        tracing::info!(watch = %hex::encode(id), ?merge, "registration");
        if merge != Merge::Unchanged {
            if let Err(e) = self.look_back(state, &id, rescan).await {
                tracing::warn!(watch = %hex::encode(id), "look-back after registration failed: {e}; the next reconcile catches up");
            }
            self.act(state).await.ok();
        }
        Ok(merge)
    }

    /// Registers (or merges) many contracts at once: all are checked first (one bad
    /// registration refuses the batch and changes nothing), then stored in one write,
    /// then each looks back as [`register`](Self::register) does, and the tower acts once.
    pub async fn register_many(
        &self,
        registrations: Vec<Registration>,
    ) -> Result<Vec<Merge>, TowerError> {
        let mut state = self.state.lock().await;
        let result = self.register_batch(&mut state, registrations).await;
        state.engine.evict();
        result
    }

    async fn register_batch(
        &self,
        state: &mut State,
        registrations: Vec<Registration>,
    ) -> Result<Vec<Merge>, TowerError> {
        let ids: BTreeSet<WatchId> = registrations.iter().map(|r| r.id).collect();
        if ids.len() != registrations.len() {
            return Err(
                RegistrationError::Malformed("an id appears twice in the batch".into()).into(),
            );
        }
        self.page_in(state, &ids)?;
        for (index, registration) in registrations.iter().enumerate() {
            let error = |error| TowerError::BatchRegistration { index, error };
            registration.check().map_err(error)?;
            if let Some(existing) = state.engine.get(&registration.id) {
                let mut merged = existing.registration.clone();
                merged.merge(registration).map_err(error)?;
            }
        }
        let mut merges = Vec::with_capacity(registrations.len());
        let mut looks = Vec::new();
        for registration in registrations {
            let (id, rescan) = (registration.id, registration.rescan_from_height);
            let merge = state.engine.register(registration)?;
            if merge != Merge::Unchanged {
                looks.push((id, rescan));
            }
            merges.push(merge);
        }
        self.persist(state, &ids, None)?;
        tracing::info!(
            registrations = merges.len(),
            changed = looks.len(),
            "batch registration"
        );
        for (id, rescan) in looks {
            if let Err(e) = self.look_back(state, &id, rescan).await {
                tracing::warn!(watch = %hex::encode(id), "look-back after registration failed: {e}; the next reconcile catches up");
            }
        }
        self.act(state).await.ok();
        Ok(merges)
    }

    /// Replays blocks from `from` to the tip and the mempool's spends of the watched
    /// outpoints, for one newly registered watch.
    async fn look_back(
        &self,
        state: &mut State,
        id: &WatchId,
        from: Option<u32>,
    ) -> Result<(), TowerError> {
        let Some(tip) = state.tip else {
            return Ok(());
        };
        let keys_before = self.keys_known(state);
        if let Some(from) = from {
            let (from, recovery) = self.look_back_start(state, id, from).await?;
            for height in from.min(tip.height)..=tip.height {
                let hash = self.bitcoind.call("getblockhash", json!([height])).await?;
                let block = self.fetch_block(&parse_hash(&hash)?).await?;
                for tx in &block.txdata {
                    state.engine.observe_for(id, tx, Some(height));
                }
            }
            if let Some(recovery) = recovery {
                self.report_unseen(state, &recovery);
            }
        }
        let outpoints: Vec<OutPoint> = state
            .engine
            .get(id)
            .map(|w| w.watched_outpoints().into_iter().collect())
            .unwrap_or_default();
        for tx in self.mempool_spends(&outpoints).await? {
            state.engine.observe_for(id, &tx, None);
        }
        self.persist(state, &BTreeSet::from([*id]), None)?;
        self.note_new_keys(state, keys_before);
        Ok(())
    }

    /// Mempool transactions spending any of `outpoints` (bitcoind's gettxspendingprevout).
    async fn mempool_spends(&self, outpoints: &[OutPoint]) -> Result<Vec<Transaction>, TowerError> {
        let mut found = Vec::new();
        for chunk in outpoints.chunks(500) {
            let query: Vec<Value> = chunk
                .iter()
                .map(|o| json!({"txid": o.txid.to_string(), "vout": o.vout}))
                .collect();
            let answer = self
                .bitcoind
                .call("gettxspendingprevout", json!([query]))
                .await?;
            for entry in answer.as_array().into_iter().flatten() {
                let Some(spender) = entry["spendingtxid"].as_str() else {
                    continue;
                };
                let hex = self
                    .bitcoind
                    .call("getrawtransaction", json!([spender, false]))
                    .await?;
                if let Some(tx) = hex.as_str().and_then(|h| deserialize_hex(h).ok()) {
                    found.push(tx);
                }
            }
        }
        Ok(found)
    }

    /// After a ZMQ gap: the mempool's spends of every watched outpoint, replayed. The
    /// watches are read from the store a batch at a time.
    pub async fn resync_mempool(&self) -> Result<(), TowerError> {
        let mut after = None;
        loop {
            let outpoints: Vec<OutPoint> = {
                let _state = self.state.lock().await;
                let batch = self
                    .store
                    .watches_after(after.as_ref(), recovery::RECOVERY_BATCH)?;
                let Some(last) = batch.last() else {
                    return Ok(());
                };
                after = Some(last.registration.id);
                let all: BTreeSet<OutPoint> =
                    batch.iter().flat_map(|w| w.watched_outpoints()).collect();
                all.into_iter().collect()
            };
            for tx in self.mempool_spends(&outpoints).await? {
                let mut state = self.state.lock().await;
                let result = self.observe_raw_tx(&mut state, &tx);
                state.engine.evict();
                result?;
            }
        }
    }

    /// Removes watch `id` entirely, whole or compacted.
    pub async fn forget(&self, id: &WatchId) -> Result<(), TowerError> {
        let mut state = self.state.lock().await;
        self.page_in(&mut state, &BTreeSet::from([*id]))?;
        if state.engine.forget(id).is_some() {
            self.store.forget(id)?;
        } else if self.store.summary(id)?.is_some() {
            self.store.forget(id)?;
            state.compacted -= 1;
        } else {
            return Err(TowerError::UnknownWatch(hex::encode(id)));
        }
        state.engine.evict();
        Ok(())
    }

    /// `tower-status`: the watch at the tip, or the summary of a compacted one.
    pub async fn status(&self, id: &WatchId) -> Result<Value, TowerError> {
        let mut state = self.state.lock().await;
        let tip = state.tip.map(|t| t.height);
        self.page_in(&mut state, &BTreeSet::from([*id]))?;
        let status = match state.engine.get(id) {
            Some(watch) => Some(crate::report::status(watch, tip)),
            None => self
                .store
                .summary(id)?
                .map(|s| crate::report::compacted_status(&s, tip)),
        };
        state.engine.evict();
        status.ok_or_else(|| TowerError::UnknownWatch(hex::encode(id)))
    }

    /// `tower-list`: one row per watch, whole or compacted, read from the store.
    pub async fn list(&self) -> Result<Value, TowerError> {
        let state = self.state.lock().await;
        let tip = state.tip.map(|t| t.height);
        let mut rows: Vec<Value> = Vec::new();
        self.store.for_each_watch(|watch| {
            rows.push(crate::report::summary(&watch, tip));
            Ok(())
        })?;
        self.store.for_each_summary(|summary| {
            rows.push(crate::report::compacted_summary(&summary));
            Ok(())
        })?;
        rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(Value::Array(rows))
    }

    pub async fn info(&self) -> Value {
        let state = self.state.lock().await;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "tip_height": state.tip.map(|t| t.height),
            "tip_hash": state.tip.map(|t| t.hash.to_string()),
            "contracts": state.engine.len(),
            "compacted": state.compacted,
            "keys_extracted": state.engine.keys(),
            "wallet_address": self.wallet.address.to_string(),
        })
    }

    /// (watches, tip height) for the metrics endpoint.
    pub async fn gauges(&self) -> (usize, Option<u32>) {
        let state = self.state.lock().await;
        (state.engine.len(), state.tip.map(|t| t.height))
    }
}

/// The engine as stored: every watch's index record restored (indexed and scheduled, not
/// loaded).
pub fn load_engine(store: &Store) -> Result<Engine, TowerError> {
    let mut engine = Engine::new();
    for record in store.index_records()? {
        engine.restore(&record);
    }
    Ok(engine)
}

fn parse_hash(value: &Value) -> Result<BlockHash, TowerError> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TowerError::BadChainData(format!("not a block hash: {value}")))
}

fn height_of(header: &Value) -> Result<u32, TowerError> {
    header["height"]
        .as_u64()
        .and_then(|h| u32::try_from(h).ok())
        .ok_or_else(|| TowerError::BadChainData("a header without a height".into()))
}
