//! A minimal P2WPKH funder for protocol tests: coinbase coins mined to one test key, spent
//! into whatever output a test needs (TX1, a P2SH under attack, …) with segwit inputs only.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::{
    absolute::LockTime, transaction::Version, Address, Amount, CompressedPublicKey,
    EcdsaSighashType, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use serde_json::{json, Value};

use crate::node::BitcoinNode;

/// Fee paid by every funding transaction (one P2WPKH input, two outputs: ~7 sat/vB).
pub const FUNDING_FEE: Amount = Amount::from_sat(1_000);

/// A version-2 transaction spending `coin` (a P2WPKH output of `secret`'s key) into
/// `outputs`, signed SIGHASH_ALL.
pub fn signed_p2wpkh_spend(
    secret: &SecretKey,
    outpoint: OutPoint,
    coin: &TxOut,
    outputs: Vec<TxOut>,
) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: outpoint,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: outputs,
    };
    let sighash = SighashCache::new(&tx)
        .p2wpkh_signature_hash(0, &coin.script_pubkey, coin.value, EcdsaSighashType::All)
        .expect("sighash");
    let signature = bitcoin::ecdsa::Signature::sighash_all(
        SECP256K1.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), secret),
    );
    tx.input[0].witness = Witness::p2wpkh(&signature, &secret.public_key(SECP256K1));
    tx
}

/// Spendable coinbase outputs of one key.
pub struct Funder {
    secret: SecretKey,
    public: CompressedPublicKey,
    utxos: Vec<(OutPoint, TxOut)>,
}

impl Funder {
    /// Mines `coins + 99` blocks to a fresh key, so that `coins` coinbases are spendable.
    pub fn new(node: &BitcoinNode, coins: u32) -> Self {
        let secret = SecretKey::new(&mut rand::thread_rng());
        let public = CompressedPublicKey(secret.public_key(SECP256K1));
        let address = Address::p2wpkh(&public, Network::Regtest);
        let hashes = node.mine_to(coins + 99, &address.to_string());
        let utxos = hashes
            .iter()
            .take(coins as usize)
            .map(|hash| coinbase_output(node, hash))
            .collect();
        Funder {
            secret,
            public,
            utxos,
        }
    }

    fn script_pubkey(&self) -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&self.public.wpubkey_hash())
    }

    /// Builds and signs a transaction paying `output` as output 0 (change as output 1),
    /// without broadcasting it.
    pub fn build(&mut self, output: TxOut) -> Transaction {
        self.build_with_prevouts(output).0
    }

    /// Like [`build`](Self::build), also returning the outputs its inputs spend.
    pub fn build_with_prevouts(&mut self, output: TxOut) -> (Transaction, Vec<TxOut>) {
        let (outpoint, prevout) = self.utxos.pop().expect("funder has no coins left");
        let change = prevout
            .value
            .checked_sub(output.value + FUNDING_FEE)
            .expect("coin too small");
        let change = TxOut {
            value: change,
            script_pubkey: self.script_pubkey(),
        };
        let tx = signed_p2wpkh_spend(&self.secret, outpoint, &prevout, vec![output, change]);
        // Change goes back to the pool once this transaction is mined or in the mempool.
        self.utxos.insert(
            0,
            (
                OutPoint {
                    txid: tx.compute_txid(),
                    vout: 1,
                },
                tx.output[1].clone(),
            ),
        );
        (tx, vec![prevout])
    }

    /// Builds, broadcasts and mines a transaction paying `output`; returns it and the
    /// outpoint of the paid output.
    pub fn fund(&mut self, node: &BitcoinNode, output: TxOut) -> (Transaction, OutPoint) {
        let tx = self.build(output);
        let txid = broadcast(node, &tx).expect("funding transaction accepted");
        node.mine(1);
        assert_eq!(node.confirmations(&txid), 1);
        let outpoint = OutPoint {
            txid: tx.compute_txid(),
            vout: 0,
        };
        (tx, outpoint)
    }
}

fn coinbase_output(node: &BitcoinNode, block_hash: &str) -> (OutPoint, TxOut) {
    let block = node.rpc_ok("getblock", json!([block_hash, 2]));
    let coinbase: Transaction =
        bitcoin::consensus::encode::deserialize_hex(block["tx"][0]["hex"].as_str().expect("hex"))
            .expect("coinbase");
    let outpoint = OutPoint {
        txid: coinbase.compute_txid(),
        vout: 0,
    };
    (outpoint, coinbase.output[0].clone())
}

/// Sends a transaction; returns its txid or bitcoind's rejection message.
pub fn broadcast(node: &BitcoinNode, tx: &Transaction) -> Result<String, String> {
    let hex = bitcoin::consensus::encode::serialize_hex(tx);
    node.rpc("sendrawtransaction", json!([hex]))
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .map_err(|e| e.message)
}

/// `testmempoolaccept` for a package; returns each transaction's reject reason (None if
/// it would be accepted).
pub fn mempool_verdicts(node: &BitcoinNode, txs: &[&Transaction]) -> Vec<Option<String>> {
    let hexes: Vec<String> = txs
        .iter()
        .map(|tx| bitcoin::consensus::encode::serialize_hex(*tx))
        .collect();
    let results = node.rpc_ok("testmempoolaccept", json!([hexes]));
    results
        .as_array()
        .expect("array")
        .iter()
        .map(|r| match r["allowed"].as_bool() {
            Some(true) => None,
            _ => Some(
                r.get("reject-reason")
                    .or_else(|| r.get("package-error"))
                    .and_then(Value::as_str)
                    .unwrap_or("rejected")
                    .to_string(),
            ),
        })
        .collect()
}

/// The transaction `txid` as bitcoind serves it (mempool or chain, thanks to -txindex).
pub fn fetch_tx(node: &BitcoinNode, txid: &str) -> Transaction {
    let hex = node.rpc_ok("getrawtransaction", json!([txid]));
    bitcoin::consensus::encode::deserialize_hex(hex.as_str().expect("hex")).expect("tx")
}

/// The transaction `txid` taken out of the raw block that confirmed it.
pub fn fetch_tx_from_block(node: &BitcoinNode, txid: &str) -> Transaction {
    let verbose = node.rpc_ok("getrawtransaction", json!([txid, true]));
    let block_hash = verbose["blockhash"].as_str().expect("confirmed");
    let raw = node.rpc_ok("getblock", json!([block_hash, 0]));
    let block: bitcoin::Block =
        bitcoin::consensus::encode::deserialize_hex(raw.as_str().expect("hex")).expect("block");
    block
        .txdata
        .into_iter()
        .find(|tx| tx.compute_txid().to_string() == txid)
        .expect("tx in its block")
}
