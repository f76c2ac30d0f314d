//! Catching up on a pruned bitcoind after the tower was away longer than the node keeps
//! blocks: `getblock` answers "Block not available (pruned data)" for the blocks it
//! missed, so it asks about the contracts' state instead, then replays the blocks the node
//! still has.
//!
//! For every watched outpoint, `gettxout` (without the mempool) on the UTXO set: unspent
//! means still waiting, and its depth tells when its transaction confirmed (a TX1 or TX2
//! whose confirmation a refund's timelock counts from). An outpoint gone from the UTXO set
//! whose transaction is known confirmed was spent while the tower was away: by one of the
//! watches' own pre-signed transactions if `gettxout` finds one of that transaction's
//! outputs (which also dates it), otherwise by a transaction in a pruned block that nobody
//! can show the tower (the protocol marks it spent unseen: its pre-signed spends are never
//! broadcast, and a key only that spender reveals stays unknown). `gettxspendingprevout`
//! brings in the mempool's spends of the watched outpoints, which ZMQ could not deliver
//! while the tower was down. Then the tip jumps to the block below the first one the node
//! still has and the blocks are replayed from there as usual (a spend found there takes
//! precedence over an unseen one). A registration that asks to look back into pruned
//! blocks gets the same treatment for its own outpoints.
//!
//! The watches are recovered [`RECOVERY_BATCH`] at a time, in id order: a batch is loaded
//! (with the other watches sharing its outpoints), asked about, stored and evicted before
//! the next, so memory stays bounded however many contracts there are. Each batch's facts
//! are stored as it finishes; the jump of the tip is the last write, so a crash in between
//! redoes the recovery, and what is recorded again changes nothing.
//!
//! `scantxoutset` is not used here, on purpose: every watched outpoint is named (txid and
//! index) by its registration, and `gettxout` answers for a named outpoint from the UTXO
//! index at once, with the depth; `scantxoutset` walks the whole UTXO set (minutes on
//! mainnet, one scan at a time per node) and can only list the unspent outputs paying a
//! script, which tells nothing more about a named outpoint and cannot name a spender.
//! It stays the tool for what is known by script only: the tower's own coins
//! ([`Tower::own_coins`]).

use std::collections::BTreeSet;

use bitcoin::{OutPoint, Transaction};
use dstore_daemon::bitcoind::BitcoindError;
use dstore_protocol::watch::WatchId;
use serde_json::json;

use super::{height_of, parse_hash, State, Tower, TowerError};
use crate::store::Tip;

/// Watches loaded at once during a recovery.
pub(super) const RECOVERY_BATCH: usize = 500;

/// What a recovery found, by the method that answered (for the log).
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// The first block height the node still had.
    first_block: u32,
    /// Watched outpoints `gettxout` found unspent.
    unspent: usize,
    /// Outpoints spent by a pre-signed transaction `gettxout` found outputs of.
    presigned_spends: usize,
    /// Outpoints spent in a pruned block by a transaction nobody can show the tower.
    pub unseen: Vec<OutPoint>,
    /// Outpoints missing from the UTXO set whose transaction was never seen confirmed:
    /// unconfirmed yet, or spent together with it; left to the blocks and the mempool.
    undetermined: usize,
    /// Mempool spends `gettxspendingprevout` found.
    mempool_spends: usize,
    /// bitcoind's best block when last asked (the depth `gettxout` gives is counted
    /// from it).
    best: Option<Tip>,
}

impl Recovery {
    pub(super) fn new(first_block: u32) -> Self {
        Recovery {
            first_block,
            ..Recovery::default()
        }
    }
}

/// True for bitcoind's refusal to serve a block it has pruned.
pub(super) fn is_pruned_block(error: &TowerError) -> bool {
    matches!(error, TowerError::Bitcoind(BitcoindError::Rpc(e)) if e.message.contains("pruned"))
}

impl Tower {
    /// The first block height bitcoind still has, when it prunes.
    pub(super) async fn first_available_block(&self) -> Result<Option<u32>, TowerError> {
        let info = self.bitcoind.call("getblockchaininfo", json!([])).await?;
        if !info["pruned"].as_bool().unwrap_or(false) {
            return Ok(None);
        }
        let height = info["pruneheight"].as_u64().unwrap_or(0);
        Ok(Some(u32::try_from(height).unwrap_or(u32::MAX)))
    }

    /// When the block after `tip` is pruned: recovers every watch's state without the
    /// missing blocks and moves the tip below the first block the node has. True if it did.
    pub(super) async fn recover_if_pruned(
        &self,
        state: &mut State,
        tip: Tip,
    ) -> Result<bool, TowerError> {
        let Some(first) = self.first_available_block().await? else {
            return Ok(false);
        };
        if tip.height + 1 >= first {
            return Ok(false);
        }
        tracing::warn!(
            from = tip.height + 1,
            pruned_below = first,
            contracts = state.engine.len(),
            batch = RECOVERY_BATCH,
            "bitcoind has pruned blocks the tower missed while it was away: recovering the contracts' state from the UTXO set (gettxout) and the mempool (gettxspendingprevout) instead, a batch of contracts at a time"
        );
        let mut recovery = Recovery::new(first);
        let mut after = None;
        loop {
            let batch = self.store.watches_after(after.as_ref(), RECOVERY_BATCH)?;
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(last.registration.id);
            self.recover_batch(state, batch, &mut recovery).await?;
        }
        let hash = self
            .bitcoind
            .call("getblockhash", json!([first - 1]))
            .await?;
        let new_tip = Tip {
            height: first - 1,
            hash: parse_hash(&hash)?,
        };
        // The jump is the last write: a crash before it redoes the whole recovery.
        self.store.save([], Some(new_tip))?;
        state.tip = Some(new_tip);
        tracing::warn!(
            "recovered without the pruned blocks: {} watched outpoints unspent (gettxout), {} spent by a pre-signed transaction (gettxout on its outputs), {} spent by an unknown transaction in a pruned block, {} not in the UTXO set and never seen confirmed (left to the blocks and the mempool), {} spent in the mempool (gettxspendingprevout); replaying the blocks from {first}",
            recovery.unspent,
            recovery.presigned_spends,
            recovery.unseen.len(),
            recovery.undetermined,
            recovery.mempool_spends,
        );
        state.recovery = Some(recovery);
        Ok(true)
    }

    /// Recovers one batch of stored watches: loads them and the other watches their
    /// outpoints name, asks the UTXO set and the mempool, stores what changed and evicts
    /// them all again.
    async fn recover_batch(
        &self,
        state: &mut State,
        batch: Vec<dstore_protocol::watch::Watch>,
        recovery: &mut Recovery,
    ) -> Result<(), TowerError> {
        let mut outpoints = BTreeSet::new();
        for watch in batch {
            outpoints.extend(watch.watched_outpoints());
            state.engine.page_in(watch);
        }
        let result = self.recover_loaded(state, &outpoints, recovery).await;
        state.engine.evict();
        result
    }

    async fn recover_loaded(
        &self,
        state: &mut State,
        outpoints: &BTreeSet<OutPoint>,
        recovery: &mut Recovery,
    ) -> Result<(), TowerError> {
        let sharing = state.engine.wanted_for_outpoints(outpoints);
        self.page_in(state, &sharing)?;
        let changed = self.recover_outpoints(state, outpoints, recovery).await?;
        self.persist(state, &changed, None)?;
        recovery.mempool_spends += self.replay_mempool(state, outpoints).await?;
        Ok(())
    }

    /// Where a registration's look-back from `from` starts: there, or, on a pruned node
    /// that no longer has that block, at the first block it has, after asking the UTXO set
    /// about the watch's outpoints instead of the missing blocks.
    pub(super) async fn look_back_start(
        &self,
        state: &mut State,
        id: &WatchId,
        from: u32,
    ) -> Result<(u32, Option<Recovery>), TowerError> {
        let first = match self.first_available_block().await? {
            Some(first) if from < first => first,
            _ => return Ok((from, None)),
        };
        let outpoints = state
            .engine
            .get(id)
            .map(|w| w.watched_outpoints())
            .unwrap_or_default();
        tracing::warn!(watch = %hex::encode(id), from, pruned_below = first, "the registration asks to look back into pruned blocks: recovering its state from the UTXO set (gettxout) instead");
        let sharing = state.engine.wanted_for_outpoints(&outpoints);
        self.page_in(state, &sharing)?;
        let mut recovery = Recovery::new(first);
        let changed = self
            .recover_outpoints(state, &outpoints, &mut recovery)
            .await?;
        self.persist(state, &changed, None)?;
        Ok((first, Some(recovery)))
    }

    /// Asks the UTXO set about `outpoints` and records what it tells; returns the
    /// watches that changed.
    pub(super) async fn recover_outpoints(
        &self,
        state: &mut State,
        outpoints: &BTreeSet<OutPoint>,
        recovery: &mut Recovery,
    ) -> Result<BTreeSet<WatchId>, TowerError> {
        let mut changed = BTreeSet::new();
        let mut gone = Vec::new();
        for outpoint in outpoints {
            match self.utxo_height(outpoint, recovery).await? {
                Some(height) => {
                    recovery.unspent += 1;
                    changed.extend(state.engine.note_confirmed(outpoint.txid, height));
                }
                None => gone.push(*outpoint),
            }
        }
        for outpoint in gone {
            if state.engine.confirmed_spend(&outpoint).is_some() {
                continue;
            }
            if let Some(ids) = self.presigned_spend(state, &outpoint, recovery).await? {
                recovery.presigned_spends += 1;
                changed.extend(ids);
            } else if state.engine.confirmed_height(&outpoint.txid).is_some() {
                changed.extend(
                    state
                        .engine
                        .note_unseen_spend(outpoint, recovery.first_block),
                );
                recovery.unseen.push(outpoint);
            } else {
                recovery.undetermined += 1;
            }
        }
        Ok(changed)
    }

    /// The height of the block that created `outpoint`, if it is unspent in the chain
    /// (`gettxout` without the mempool).
    async fn utxo_height(
        &self,
        outpoint: &OutPoint,
        recovery: &mut Recovery,
    ) -> Result<Option<u32>, TowerError> {
        let params = json!([outpoint.txid.to_string(), outpoint.vout, false]);
        let coin = self.bitcoind.call("gettxout", params).await?;
        if coin.is_null() {
            return Ok(None);
        }
        let best = parse_hash(&coin["bestblock"])?;
        let best_height = match recovery.best {
            Some(tip) if tip.hash == best => tip.height,
            _ => {
                let header = self
                    .bitcoind
                    .call("getblockheader", json!([best.to_string(), true]))
                    .await?;
                let height = height_of(&header)?;
                recovery.best = Some(Tip { height, hash: best });
                height
            }
        };
        let confirmations = coin["confirmations"].as_u64().unwrap_or(0);
        let height = (u64::from(best_height) + 1)
            .checked_sub(confirmations)
            .and_then(|h| u32::try_from(h).ok());
        Ok(height)
    }

    /// A pre-signed transaction that spent `outpoint` and confirmed, found by one of its
    /// outputs still unspent: recorded as seen at that height. Returns the watches
    /// that changed, or `None` if no such transaction is found.
    async fn presigned_spend(
        &self,
        state: &mut State,
        outpoint: &OutPoint,
        recovery: &mut Recovery,
    ) -> Result<Option<BTreeSet<WatchId>>, TowerError> {
        for tx in state.engine.presigned_spenders(outpoint) {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() as u32 {
                if let Some(height) = self
                    .utxo_height(&OutPoint::new(txid, vout), recovery)
                    .await?
                {
                    tracing::info!(%txid, height, spent = %outpoint, "a pre-signed transaction confirmed while the tower was away (found by gettxout on its output)");
                    return Ok(Some(state.engine.observe(&tx, Some(height))));
                }
            }
        }
        Ok(None)
    }

    /// Records the mempool's spends of `outpoints` (`gettxspendingprevout`); returns how
    /// many there were.
    async fn replay_mempool(
        &self,
        state: &mut State,
        outpoints: &BTreeSet<OutPoint>,
    ) -> Result<usize, TowerError> {
        let outpoints: Vec<OutPoint> = outpoints.iter().copied().collect();
        let spends: Vec<Transaction> = self.mempool_spends(&outpoints).await?;
        let keys_before = self.keys_known(state);
        for tx in &spends {
            let changed = state.engine.observe(tx, None);
            self.persist(state, &changed, None)?;
        }
        self.note_new_keys(state, keys_before);
        Ok(spends.len())
    }

    /// Once the replay reached bitcoind's tip: says which unseen spends the blocks still
    /// available explained, and which stay unknown.
    pub(super) fn finish_recovery(&self, state: &mut State) -> Result<(), TowerError> {
        let Some(recovery) = state.recovery.take() else {
            return Ok(());
        };
        let wanted = state.engine.wanted_for_outpoints(&recovery.unseen);
        self.page_in(state, &wanted)?;
        self.report_unseen(state, &recovery);
        tracing::warn!(
            pruned_below = recovery.first_block,
            "recovered without the pruned blocks: caught up with bitcoind's tip"
        );
        Ok(())
    }

    /// For each outpoint found spent unseen: the spend the replayed blocks showed, or
    /// that the spender stays unknown.
    pub(super) fn report_unseen(&self, state: &State, recovery: &Recovery) {
        for outpoint in &recovery.unseen {
            match state.engine.confirmed_spend(outpoint) {
                Some((spender, height)) => {
                    tracing::info!(%outpoint, %spender, height, "the spend of a watched outpoint was found in a block the node still had")
                }
                None => {
                    tracing::warn!(%outpoint, pruned_below = recovery.first_block, "a watched outpoint was spent while the tower was away, in a pruned block: the spender is unknown, so its pre-signed spends are never broadcast (state spent_unseen) and a key only that spender reveals cannot be extracted")
                }
            }
        }
    }
}
