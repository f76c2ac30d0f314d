//! The plugin's own on-chain wallet: a BDK descriptor wallet synced from bitcoind over RPC.
//!
//! The 32-byte seed lives in `<datadir>/<network>/seed` (hex, mode 0600); BIP84 descriptors
//! are derived from it at every start and never written to disk with their private keys.
//! Wallet state (public descriptors, revealed indices, seen transactions, chain tip) is kept
//! by `bdk_file_store` in `<datadir>/<network>/wallet.dat`. Every method syncs from the
//! wallet's last checkpoint to bitcoind's tip first, then reads or spends. All of it is
//! blocking: the RPC server calls it on tokio's blocking pool.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bdk_bitcoind_rpc::bitcoincore_rpc::{self, Auth, RpcApi};
use bdk_bitcoind_rpc::Emitter;
use bdk_wallet::bitcoin::bip32::Xpriv;
use bdk_wallet::bitcoin::{Address, Amount, FeeRate, Transaction, Txid};
use bdk_wallet::chain::ChainPosition;
use bdk_wallet::file_store::Store;
use bdk_wallet::{
    Balance, ChangeSet, KeychainKind, LocalOutput, PersistedWallet, SignOptions, Wallet,
};
use dstore_protocol::network::Network;
use rand::RngCore;

use crate::config::BitcoindAuth;
use crate::cookie::write_secret_file;

const SEED_FILE: &str = "seed";
const WALLET_FILE: &str = "wallet.dat";
const WALLET_MAGIC: &[u8] = b"dstore-wallet-v1";

/// Fee rate used on regtest when bitcoind has no estimate (it never has one there).
const REGTEST_FALLBACK_SAT_PER_VB: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("seed file {path}: {reason}")]
    Seed { path: PathBuf, reason: String },
    #[error("wallet file {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("wallet descriptors: {0}")]
    Descriptor(String),
    #[error("bitcoind: {0}")]
    Rpc(#[from] bitcoincore_rpc::Error),
    #[error("wallet does not connect to bitcoind's chain: {0}")]
    Chain(String),
    #[error("address is for another network: {0}")]
    WrongNetwork(String),
    #[error("Insufficient funds: {0}")]
    InsufficientFunds(String),
    #[error("cannot build the transaction: {0}")]
    Build(String),
    #[error("Fee estimation failed; pass fee_rate (sat/vB) explicitly")]
    NoFeeEstimate,
    #[error("wallet lock poisoned by an earlier panic")]
    Poisoned,
}

/// One unspent output, as `dstore-listunspent` reports it.
#[derive(Debug, Clone)]
pub struct Unspent {
    pub output: LocalOutput,
    pub address: Option<Address>,
    pub confirmations: u32,
}

/// How bitcoind is reached by the blocking RPC client the wallet syncs with.
#[derive(Debug, Clone)]
pub struct RpcTarget {
    pub url: String,
    pub auth: BitcoindAuth,
}

impl RpcTarget {
    /// A fresh client per use: the cookie is re-read, so a restarted bitcoind is no problem.
    fn client(&self) -> Result<bitcoincore_rpc::Client, WalletError> {
        let auth = match &self.auth {
            BitcoindAuth::Cookie(path) => Auth::CookieFile(path.clone()),
            BitcoindAuth::UserPass { user, password } => {
                Auth::UserPass(user.clone(), password.clone())
            }
        };
        Ok(bitcoincore_rpc::Client::new(&self.url, auth)?)
    }
}

struct Inner {
    wallet: PersistedWallet<Store<ChangeSet>>,
    store: Store<ChangeSet>,
    /// Signs the wallet's inputs (found through the PSBT's BIP32 derivations).
    master: Xpriv,
    /// Coins spent by transactions built but not broadcast yet (a TX_A waits for the
    /// farmer's refund signatures first; a TX1 is stored first), with when: another build
    /// meanwhile must not spend them too. bitcoind's view cannot say so (the transaction is
    /// not in its mempool yet), so the wallet remembers, for [`RESERVATION_TTL`] at most
    /// (a build that is never broadcast gives its coins back then).
    reserved: BTreeMap<bdk_wallet::bitcoin::OutPoint, Instant>,
}

/// How long coins of a built, unbroadcast transaction stay out of other builds.
const RESERVATION_TTL: Duration = Duration::from_secs(30 * 60);

/// The plugin's wallet. Cheap to share; one operation at a time.
pub struct PluginWallet {
    inner: Mutex<Inner>,
    network: Network,
    rpc: RpcTarget,
    /// The seed the dstore protocol keys (PROTOCOL.md 2) are derived from as well.
    seed: [u8; 32],
}

/// A signed transaction paying one output, not yet broadcast, with the outputs it spends.
#[derive(Debug, Clone)]
pub struct Funded {
    pub tx: Transaction,
    /// Index of the requested output in `tx`.
    pub vout: u32,
    /// The outputs `tx` spends, in input order.
    pub prevouts: Vec<bdk_wallet::bitcoin::TxOut>,
}

impl PluginWallet {
    /// Opens the wallet in `network_dir`, creating seed and wallet file on first use.
    pub fn open(network_dir: &Path, network: Network, rpc: RpcTarget) -> Result<Self, WalletError> {
        let seed = load_or_create_seed(&network_dir.join(SEED_FILE))?;
        let master = Xpriv::new_master(network.to_bitcoin(), &seed)
            .map_err(|e| WalletError::Descriptor(e.to_string()))?;
        let (external, internal) = descriptors(&master, network);
        let path = network_dir.join(WALLET_FILE);
        let store_err = |reason: String| WalletError::Store {
            path: path.clone(),
            reason,
        };
        let (mut store, _) = Store::<ChangeSet>::load_or_create(WALLET_MAGIC, &path)
            .map_err(|e| store_err(e.to_string()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| store_err(e.to_string()))?;
        let loaded = Wallet::load()
            .descriptor(KeychainKind::External, Some(external.clone()))
            .descriptor(KeychainKind::Internal, Some(internal.clone()))
            .check_network(network.to_bitcoin())
            .load_wallet(&mut store)
            .map_err(|e| store_err(e.to_string()))?;
        let wallet = match loaded {
            Some(wallet) => wallet,
            None => Wallet::create(external, internal)
                .network(network.to_bitcoin())
                .create_wallet(&mut store)
                .map_err(|e| store_err(e.to_string()))?,
        };
        Ok(PluginWallet {
            inner: Mutex::new(Inner {
                wallet,
                store,
                master,
                reserved: BTreeMap::new(),
            }),
            network,
            rpc,
            seed,
        })
    }

    /// The wallet seed, from which the dstore protocol keys are derived too.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, WalletError> {
        self.inner.lock().map_err(|_| WalletError::Poisoned)
    }

    /// Brings the wallet up to bitcoind's tip and mempool, then persists it.
    pub fn sync(&self) -> Result<u32, WalletError> {
        let mut inner = self.lock()?;
        self.sync_locked(&mut inner)
    }

    fn sync_locked(&self, inner: &mut Inner) -> Result<u32, WalletError> {
        let client = Arc::new(self.rpc.client()?);
        let start_height = inner.wallet.latest_checkpoint().height();
        let unconfirmed: Vec<Arc<Transaction>> = inner
            .wallet
            .transactions()
            .filter(|tx| tx.chain_position.is_unconfirmed())
            .map(|tx| tx.tx_node.tx.clone())
            .collect();
        let mut emitter = Emitter::new(
            client,
            inner.wallet.latest_checkpoint(),
            start_height,
            unconfirmed,
        );
        while let Some(event) = emitter.next_block()? {
            let (height, connected_to) = (event.block_height(), event.connected_to());
            inner
                .wallet
                .apply_block_connected_to(&event.block, height, connected_to)
                .map_err(|e| WalletError::Chain(e.to_string()))?;
        }
        let mempool = emitter.mempool()?;
        inner.wallet.apply_evicted_txs(mempool.evicted);
        inner.wallet.apply_unconfirmed_txs(mempool.update);
        persist(inner)?;
        Ok(inner.wallet.latest_checkpoint().height())
    }

    /// Reveals, persists and returns the next receive address.
    pub fn new_address(&self) -> Result<Address, WalletError> {
        let mut inner = self.lock()?;
        let info = inner.wallet.reveal_next_address(KeychainKind::External);
        persist(&mut inner)?;
        Ok(info.address)
    }

    pub fn balance(&self) -> Result<Balance, WalletError> {
        let mut inner = self.lock()?;
        self.sync_locked(&mut inner)?;
        Ok(inner.wallet.balance())
    }

    pub fn list_unspent(&self) -> Result<Vec<Unspent>, WalletError> {
        let mut inner = self.lock()?;
        let tip = self.sync_locked(&mut inner)?;
        let network = self.network.to_bitcoin();
        Ok(inner
            .wallet
            .list_unspent()
            .map(|output| Unspent {
                address: Address::from_script(&output.txout.script_pubkey, network).ok(),
                confirmations: confirmations(&output.chain_position, tip),
                output,
            })
            .collect())
    }

    /// Pays `amount` to `address`; returns the broadcast transaction's id.
    pub fn send(
        &self,
        address: &str,
        amount: Amount,
        fee_rate: Option<FeeRate>,
    ) -> Result<Txid, WalletError> {
        let output = bdk_wallet::bitcoin::TxOut {
            value: amount,
            script_pubkey: self.parse_address(address)?.script_pubkey(),
        };
        let funded = self.fund_output(output, fee_rate)?;
        self.broadcast(&funded.tx)
    }

    /// Builds and signs (without broadcasting) a transaction paying `output`; the change
    /// index it reveals is persisted first. The caller stores the transaction, then calls
    /// [`PluginWallet::broadcast`].
    pub fn fund_output(
        &self,
        output: bdk_wallet::bitcoin::TxOut,
        fee_rate: Option<FeeRate>,
    ) -> Result<Funded, WalletError> {
        let (tx, prevouts) = self.build(std::slice::from_ref(&output), fee_rate, false)?;
        let vout = tx
            .output
            .iter()
            .position(|o| *o == output)
            .ok_or_else(|| WalletError::Build("the requested output is missing".into()))?;
        Ok(Funded {
            tx,
            vout: vout as u32,
            prevouts,
        })
    }

    /// Builds and signs (without broadcasting) a transaction whose first outputs are
    /// exactly `outputs`, in order (the change comes after them): TX_A of an audit contract.
    pub fn fund_outputs(
        &self,
        outputs: &[bdk_wallet::bitcoin::TxOut],
        fee_rate: Option<FeeRate>,
    ) -> Result<Funded, WalletError> {
        let (tx, prevouts) = self.build(outputs, fee_rate, true)?;
        if tx.output.get(..outputs.len()) != Some(outputs) {
            return Err(WalletError::Build(
                "the outputs are not in the requested order".into(),
            ));
        }
        Ok(Funded {
            tx,
            vout: 0,
            prevouts,
        })
    }

    /// Syncs, then builds and signs a transaction paying `outputs`; persists the change
    /// index it reveals.
    fn build(
        &self,
        outputs: &[bdk_wallet::bitcoin::TxOut],
        fee_rate: Option<FeeRate>,
        keep_order: bool,
    ) -> Result<(Transaction, Vec<bdk_wallet::bitcoin::TxOut>), WalletError> {
        let mut inner = self.lock()?;
        self.sync_locked(&mut inner)?;
        let fee_rate = match fee_rate {
            Some(rate) => rate,
            None => self.estimate_fee_rate()?,
        };
        let master = inner.master;
        inner
            .reserved
            .retain(|_, at| at.elapsed() < RESERVATION_TTL);
        let reserved: Vec<bdk_wallet::bitcoin::OutPoint> = inner.reserved.keys().copied().collect();
        let built = build_and_sign(
            &mut inner.wallet,
            &master,
            outputs,
            fee_rate,
            keep_order,
            &reserved,
        )?;
        let now = Instant::now();
        inner.reserved.extend(
            built
                .0
                .input
                .iter()
                .map(|input| (input.previous_output, now)),
        );
        persist(&mut inner)?;
        Ok(built)
    }

    /// Broadcasts a transaction this wallet signed and records it as unconfirmed. A
    /// transaction bitcoind already has is not an error (a retried broadcast).
    pub fn broadcast(&self, tx: &Transaction) -> Result<Txid, WalletError> {
        let mut inner = self.lock()?;
        let txid = tx.compute_txid();
        match self.rpc.client()?.send_raw_transaction(tx) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("already") => {}
            Err(e) => return Err(e.into()),
        }
        inner
            .wallet
            .apply_unconfirmed_txs([(tx.clone(), unix_now())]);
        // bitcoind (and so the wallet) sees these coins spent now.
        for input in &tx.input {
            inner.reserved.remove(&input.previous_output);
        }
        persist(&mut inner)?;
        Ok(txid)
    }

    /// Gives the coins of `tx`, built here but abandoned before any broadcast, back to
    /// later builds (else they wait out [`RESERVATION_TTL`]).
    pub fn release(&self, tx: &Transaction) {
        if let Ok(mut inner) = self.lock() {
            for input in &tx.input {
                inner.reserved.remove(&input.previous_output);
            }
        }
    }

    /// Builds and signs (without broadcasting) a CPFP child of `parent`, an unconfirmed
    /// transaction whose output `vout` pays this wallet: it spends that output (plus more
    /// coins if needed) back to a change address, paying a fee that brings the package
    /// (parent and child) to `package` given the parent's `parent_fee`, and at least
    /// `min_fee`. The fee may not exceed `max_fee`. `replaces` is an earlier child of the
    /// same output: it is set aside while building (bitcoind replaces it), and restored in
    /// the wallet's view if no new child could be built.
    pub fn cpfp_child(
        &self,
        parent: &Transaction,
        vout: u32,
        fees: CpfpFees,
        replaces: Option<Txid>,
    ) -> Result<(Transaction, Amount), WalletError> {
        let mut inner = self.lock()?;
        self.sync_locked(&mut inner)?;
        inner
            .wallet
            .apply_unconfirmed_txs([(parent.clone(), unix_now())]);
        let old = replaces.and_then(|txid| inner.wallet.get_tx(txid).map(|t| t.tx_node.tx.clone()));
        if let Some(old) = &old {
            inner
                .wallet
                .apply_evicted_txs([(old.compute_txid(), unix_now())]);
        }
        let built = build_child(&mut inner, parent, vout, &fees);
        if let (Err(_), Some(old)) = (&built, old) {
            inner.wallet.apply_unconfirmed_txs([(old, unix_now() + 1)]);
        }
        persist(&mut inner)?;
        built
    }

    /// A fresh receive address's scriptPubKey (for payouts and refunds to this wallet).
    pub fn new_script(&self) -> Result<bdk_wallet::bitcoin::ScriptBuf, WalletError> {
        Ok(self.new_address()?.script_pubkey())
    }

    fn parse_address(&self, text: &str) -> Result<Address, WalletError> {
        let unchecked: Address<_> = text
            .parse()
            .map_err(|e| WalletError::WrongNetwork(format!("{text}: {e}")))?;
        unchecked
            .require_network(self.network.to_bitcoin())
            .map_err(|e| WalletError::WrongNetwork(format!("{text}: {e}")))
    }

    fn estimate_fee_rate(&self) -> Result<FeeRate, WalletError> {
        self.estimate_fee_rate_within(6)
    }

    /// bitcoind's `estimatesmartfee` for confirmation within `blocks` (a fixed fallback on
    /// regtest, which has no estimates).
    pub fn estimate_fee_rate_within(&self, blocks: u16) -> Result<FeeRate, WalletError> {
        let estimate = self.rpc.client()?.estimate_smart_fee(blocks, None)?;
        match estimate.fee_rate {
            // bitcoind answers in BTC per 1000 vbytes; 1 kvB = 4000 weight units.
            Some(per_kvb) => Ok(FeeRate::from_sat_per_kwu(per_kvb.to_sat() / 4)),
            None if self.network == Network::Regtest => {
                Ok(FeeRate::from_sat_per_vb_u32(REGTEST_FALLBACK_SAT_PER_VB))
            }
            None => Err(WalletError::NoFeeEstimate),
        }
    }
}

/// What a CPFP child must pay (see [`PluginWallet::cpfp_child`]).
#[derive(Debug, Clone, Copy)]
pub struct CpfpFees {
    pub parent_fee: Amount,
    pub package: FeeRate,
    pub min_fee: Amount,
    pub max_fee: Amount,
}

/// Two passes: a child at the package rate gives its size, then the child paying what
/// the package needs.
fn build_child(
    inner: &mut Inner,
    parent: &Transaction,
    vout: u32,
    fees: &CpfpFees,
) -> Result<(Transaction, Amount), WalletError> {
    let outpoint = bdk_wallet::bitcoin::OutPoint::new(parent.compute_txid(), vout);
    let change = inner
        .wallet
        .next_unused_address(KeychainKind::Internal)
        .script_pubkey();
    let probe = sign_child(inner, outpoint, &change, FeePolicy::Rate(fees.package))?;
    let vsize = (parent.vsize() + probe.vsize()) as u64;
    let needed = fees.package.to_sat_per_kwu() * vsize * 4 / 1000;
    let fee = Amount::from_sat(needed)
        .checked_sub(fees.parent_fee)
        .unwrap_or(Amount::ZERO)
        .max(fees.min_fee)
        .max(Amount::from_sat(probe.vsize() as u64));
    if fee > fees.max_fee {
        return Err(WalletError::Build(format!(
            "the child's fee {fee} would exceed the cap {}",
            fees.max_fee
        )));
    }
    let tx = sign_child(inner, outpoint, &change, FeePolicy::Absolute(fee))?;
    Ok((tx, fee))
}

enum FeePolicy {
    Rate(FeeRate),
    Absolute(Amount),
}

fn sign_child(
    inner: &mut Inner,
    outpoint: bdk_wallet::bitcoin::OutPoint,
    change: &bdk_wallet::bitcoin::ScriptBuf,
    fee: FeePolicy,
) -> Result<Transaction, WalletError> {
    let master = inner.master;
    let wallet = &mut inner.wallet;
    let mut builder = wallet.build_tx();
    builder
        .add_utxo(outpoint)
        .map_err(|e| WalletError::Build(format!("the claim's output: {e}")))?;
    builder.drain_to(change.clone());
    match fee {
        FeePolicy::Rate(rate) => builder.fee_rate(rate),
        FeePolicy::Absolute(amount) => builder.fee_absolute(amount),
    };
    let psbt = builder.finish().map_err(build_error)?;
    sign_psbt(wallet, &master, psbt)
}

fn build_error(e: bdk_wallet::error::CreateTxError) -> WalletError {
    match e {
        bdk_wallet::error::CreateTxError::CoinSelection(e) => {
            WalletError::InsufficientFunds(e.to_string())
        }
        other => WalletError::Build(other.to_string()),
    }
}

fn sign_psbt(
    wallet: &mut Wallet,
    master: &Xpriv,
    mut psbt: bdk_wallet::bitcoin::Psbt,
) -> Result<Transaction, WalletError> {
    psbt.sign(master, wallet.secp_ctx())
        .map_err(|(_, errors)| WalletError::Build(format!("signing failed: {errors:?}")))?;
    let finalized = wallet
        .finalize_psbt(&mut psbt, SignOptions::default())
        .map_err(|e| WalletError::Build(e.to_string()))?;
    if !finalized {
        return Err(WalletError::Build("could not sign every input".into()));
    }
    psbt.extract_tx()
        .map_err(|e| WalletError::Build(e.to_string()))
}

fn build_and_sign(
    wallet: &mut Wallet,
    master: &Xpriv,
    outputs: &[bdk_wallet::bitcoin::TxOut],
    fee_rate: FeeRate,
    keep_order: bool,
    reserved: &[bdk_wallet::bitcoin::OutPoint],
) -> Result<(Transaction, Vec<bdk_wallet::bitcoin::TxOut>), WalletError> {
    let mut builder = wallet.build_tx();
    builder.unspendable(reserved.to_vec());
    for output in outputs {
        builder.add_recipient(output.script_pubkey.clone(), output.value);
    }
    builder.fee_rate(fee_rate);
    if keep_order {
        // A contract's outputs (TX_A): their order is part of the contract, change last.
        builder.ordering(bdk_wallet::TxOrdering::Untouched);
    }
    let psbt = builder.finish().map_err(build_error)?;
    let prevouts = psbt
        .inputs
        .iter()
        .map(|input| {
            input
                .witness_utxo
                .clone()
                .ok_or_else(|| WalletError::Build("an input without its prevout".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tx = sign_psbt(wallet, master, psbt)?;
    Ok((tx, prevouts))
}

fn persist(inner: &mut Inner) -> Result<(), WalletError> {
    let Inner { wallet, store, .. } = inner;
    wallet
        .persist(store)
        .map(|_| ())
        .map_err(|e| WalletError::Store {
            path: PathBuf::from(WALLET_FILE),
            reason: e.to_string(),
        })
}

fn confirmations(
    position: &ChainPosition<bdk_wallet::chain::ConfirmationBlockTime>,
    tip: u32,
) -> u32 {
    match position {
        ChainPosition::Confirmed { anchor, .. } => {
            tip.saturating_sub(anchor.block_id.height).saturating_add(1)
        }
        ChainPosition::Unconfirmed { .. } => 0,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the hex seed, or creates a fresh one (mode 0600) when there is none.
fn load_or_create_seed(path: &Path) -> Result<[u8; 32], WalletError> {
    let err = |reason: String| WalletError::Seed {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|e| err(format!("not hex: {e}")))?;
            bytes
                .try_into()
                .map_err(|_| err("expected 32 bytes".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            write_secret_file(path, hex::encode(seed).as_bytes())
                .map_err(|e| err(e.to_string()))?;
            Ok(seed)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// BIP84 receive and change descriptors for the master key.
fn descriptors(master: &Xpriv, network: Network) -> (String, String) {
    let coin = if network == Network::Mainnet { 0 } else { 1 };
    (
        format!("wpkh({master}/84'/{coin}'/0'/0/*)"),
        format!("wpkh({master}/84'/{coin}'/0'/1/*)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regtest").join(SEED_FILE);
        let first = load_or_create_seed(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_seed(&path).unwrap(), first);
    }

    #[test]
    fn corrupt_seed_is_an_error_not_a_new_wallet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEED_FILE);
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            load_or_create_seed(&path),
            Err(WalletError::Seed { .. })
        ));
        std::fs::write(&path, "abcd").unwrap();
        assert!(matches!(
            load_or_create_seed(&path),
            Err(WalletError::Seed { .. })
        ));
    }

    #[test]
    fn confirmations_count_from_tip() {
        let anchor = bdk_wallet::chain::ConfirmationBlockTime {
            block_id: bdk_wallet::chain::BlockId {
                height: 10,
                hash: bdk_wallet::bitcoin::hashes::Hash::all_zeros(),
            },
            confirmation_time: 0,
        };
        let confirmed = ChainPosition::Confirmed {
            anchor,
            transitively: None,
        };
        assert_eq!(confirmations(&confirmed, 10), 1);
        assert_eq!(confirmations(&confirmed, 109), 100);
    }
}
