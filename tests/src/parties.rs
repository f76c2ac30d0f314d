//! The two parties of one download contract, in-process, for the functional tests: their
//! secrets, the agreed contract, and the steps each side takes (upload, seal, TX2, TX3).
//! Both roles run here; every transaction they build counts only once bitcoind accepts it.

use bitcoin::secp256k1::{Keypair, Message, SecretKey, SECP256K1};
use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction};
use dstore_protocol::contract::{
    twin_secret, txid_from_digest, DownloadContract, RefundDestination,
};
use dstore_protocol::datapath::encrypt_and_build_tree;
use dstore_protocol::extract::extract_farmer_key;
use dstore_protocol::keys::{commit_key, derive_key, verify_reveal, Role};
use dstore_protocol::merkle::MerkleTree;
use dstore_protocol::nonce_reuse::{farmer_sign_tx2, Tx2Template};
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::seal::{check_sealed_copy, seal, SealTranscript};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::funding::Funder;
use crate::BitcoinNode;

pub const PRICE: Amount = Amount::from_sat(100_000);
pub const TX2_FEE: Amount = Amount::from_sat(2_000);
pub const TX3_FEE: Amount = Amount::from_sat(1_000);
pub const REFUND_FEE: Amount = Amount::from_sat(1_000);

/// Both parties' secrets and the agreed contract.
pub struct Parties {
    pub contract: DownloadContract,
    pub renter_seed: [u8; 32],
    pub farmer_seed: [u8; 32],
    pub r: SecretKey,
    pub f: SecretKey,
    pub r2: SecretKey,
    pub f2: SecretKey,
    pub farmer_identity: Keypair,
    pub file_key: [u8; 32],
}

impl Parties {
    /// Fresh parties; TX1's refund opens `t1_ahead` blocks above the tip, TX2's after Δ.
    pub fn new(node: &BitcoinNode, rng: &mut StdRng, t1_ahead: u32, delta: u16) -> Self {
        let mut seed = || {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            s
        };
        let (renter_seed, farmer_seed, contract_id, file_key) = (seed(), seed(), seed(), seed());
        let r = derive_key(&renter_seed, Role::Download, 0).unwrap();
        let f = derive_key(&farmer_seed, Role::Download, 0).unwrap();
        let r2 = derive_key(&renter_seed, Role::Tx2, 0).unwrap();
        let f2 = derive_key(&farmer_seed, Role::Tx2, 0).unwrap();
        // Commit, then reveal: each side checks the other's reveal and proof of possession.
        let (renter_commit, renter_reveal) = commit_key(rng, &r, &contract_id);
        let (farmer_commit, farmer_reveal) = commit_key(rng, &f, &contract_id);
        verify_reveal(&renter_commit, &renter_reveal, &contract_id).unwrap();
        verify_reveal(&farmer_commit, &farmer_reveal, &contract_id).unwrap();
        let farmer_identity = Keypair::from_secret_key(
            SECP256K1,
            &derive_key(&farmer_seed, Role::Identity, 0).unwrap(),
        );
        let contract = DownloadContract {
            contract_id,
            farmer_key: farmer_reveal.pubkey,
            renter_key: renter_reveal.pubkey,
            renter_tx2_key: r2.public_key(SECP256K1),
            farmer_tx2_key: f2.public_key(SECP256K1),
            refund_height: node.block_count() as u32 + t1_ahead,
            payout_delay: delta,
            price: PRICE,
            tx1_key_order: dstore_protocol::contract::Tx1KeyOrder::RenterFirst,
        };
        Parties {
            contract,
            renter_seed,
            farmer_seed,
            r,
            f,
            r2,
            f2,
            farmer_identity,
            file_key,
        }
    }

    pub fn renter_refund_destination(&self) -> RefundDestination {
        RefundDestination::p2wpkh_of(&derive_key(&self.renter_seed, Role::Payout, 0).unwrap())
    }

    pub fn farmer_payout(&self) -> ScriptBuf {
        let key = derive_key(&self.farmer_seed, Role::Payout, 0).unwrap();
        RefundDestination::p2wpkh_of(&key).script_pubkey().clone()
    }

    /// The renter encrypts; the farmer stores C and signs the receipt.
    pub fn upload(&self, plaintext: &[u8]) -> (Vec<u8>, MerkleTree, StorageReceipt) {
        let mut c = Vec::with_capacity(plaintext.len() + plaintext.len() / 64 + 64);
        let id = &self.contract.contract_id;
        let c_tree = encrypt_and_build_tree(&self.file_key, id, plaintext, &mut c).unwrap();
        let receipt = StorageReceipt::sign(&self.farmer_identity, *id, c_tree.commitment(), 1_000);
        (c, c_tree, receipt)
    }

    /// The farmer seals `served` (normally C) for one download; the renter checks E.
    pub fn seal(&self, rng: &mut StdRng, served: &[u8]) -> (SealTranscript, Vec<u8>, MerkleTree) {
        let context = self.contract.seal_context([7; 32]);
        let mut e = Vec::with_capacity(served.len());
        let transcript = seal(rng, &context, &self.farmer_identity, served, &mut e).unwrap();
        let e_tree = check_sealed_copy(&transcript, &e[..]).expect("E matches root_E");
        (transcript, e, e_tree)
    }

    /// Renter signs unsigned TX2; farmer signs with f and f + c under one nonce.
    pub fn tx2(&self, rng: &mut StdRng, tx1_outpoint: OutPoint) -> Tx2Template {
        let unsigned = self.contract.unsigned_tx2(tx1_outpoint, TX2_FEE).unwrap();
        let sig_r = self.contract.renter_sign_tx2(&unsigned, &self.r).unwrap();
        farmer_sign_tx2(rng, &self.contract, &unsigned, &self.f, &sig_r).unwrap()
    }

    /// TX3 as the renter can build it knowing only D (txid = SHA256(D)), signed by both.
    pub fn tx3(&self, digest: &[u8; 32]) -> Transaction {
        let txid = txid_from_digest(digest);
        let value = self.contract.tx2_value(TX2_FEE).unwrap();
        let unsigned = self
            .contract
            .unsigned_tx3(txid, value, TX3_FEE, self.farmer_payout())
            .unwrap();
        let renter_sig = self.contract.sign_tx3(&unsigned, value, &self.r2).unwrap();
        let farmer_sig = self.contract.sign_tx3(&unsigned, value, &self.f2).unwrap();
        self.contract
            .finalize_tx3(&unsigned, renter_sig, farmer_sig)
            .unwrap()
    }

    /// TX2 signed the honest way, with a fresh nonce per key: valid, but reveals nothing.
    /// Ground like the reused-nonce TX2, so the DER layout (the shape) matches it.
    pub fn tx2_with_fresh_nonces(&self, tx1_outpoint: OutPoint) -> Transaction {
        let unsigned = self.contract.unsigned_tx2(tx1_outpoint, TX2_FEE).unwrap();
        let z = Message::from_digest(self.contract.tx2_sighash(&unsigned).unwrap());
        let twin = twin_secret(&self.f, &self.contract.contract_id).unwrap();
        let sig_r = self.contract.renter_sign_tx2(&unsigned, &self.r).unwrap();
        let sig_f = sign_in_template_layout(&z, &self.f);
        let sig_twin = sign_in_template_layout(&z, &twin);
        self.contract
            .finalize_tx2(&unsigned, sig_f, sig_twin, sig_r)
            .unwrap()
    }

    pub fn extract(
        &self,
        tx: &Transaction,
    ) -> Result<SecretKey, dstore_protocol::extract::ExtractError> {
        let spk = self.contract.tx1_script_pubkey().unwrap();
        extract_farmer_key(
            tx,
            0,
            &self.contract.farmer_key,
            &self.contract.contract_id,
            Some(&spk),
        )
    }
}

/// A fresh node, a funder with `coins` spendable coins, and parties whose TX1 refund opens
/// `t1_ahead` blocks above the tip and whose TX2 refund opens Δ blocks after TX2.
pub fn start(
    seed: u64,
    coins: u32,
    t1_ahead: u32,
    delta: u16,
) -> (StdRng, BitcoinNode, Funder, Parties) {
    let mut rng = StdRng::seed_from_u64(seed);
    let node = BitcoinNode::start();
    let funder = Funder::new(&node, coins);
    let parties = Parties::new(&node, &mut rng, t1_ahead, delta);
    (rng, node, funder, parties)
}

pub fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

/// `len` bytes drawn from a generator seeded with `seed`: the same test data every run.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    random_bytes(&mut StdRng::seed_from_u64(seed), len)
}

/// An ECDSA signature whose DER encoding has 32-byte r and s (70 bytes), the layout of the
/// reused-nonce TX2's signatures: low-R alone still leaves s shorter one time in 128.
fn sign_in_template_layout(z: &Message, key: &SecretKey) -> bitcoin::secp256k1::ecdsa::Signature {
    (0u32..)
        .map(|i| {
            let mut extra = [0u8; 32];
            extra[..4].copy_from_slice(&i.to_le_bytes());
            SECP256K1.sign_ecdsa_with_noncedata(z, key, &extra)
        })
        .find(|sig| sig.serialize_der().len() == 70)
        .expect("a 70-byte signature within 2^32 nonces")
}
