//! An audit contract (PROTOCOL.md 5) set up in-process with `dstore_protocol::audit` for
//! the watchtower's audit tests, and the farmer's two peer endpoints served over HTTP.
//!
//! The setup is the protocol's own: the renter's salted candidates over random
//! "ciphertext", TX_A (N outputs, the renter's change, the stake to the farmer; one P2WPKH
//! input) checked by the farmer, which signs every RF_i before it is mined on regtest, the
//! commit-reveal coin toss once TX_A is confirmed, the farmer's check of the opened half,
//! its signatures on every RF_ij, and the one-at-a-time candidate swap. [`FarmerServer`] is a real protocol
//! participant: it checks a salt release against its copy of the data, builds the claim
//! with x and broadcasts it through bitcoind, and answers Merkle challenges with an
//! [`AnswerBuilder`] pass over the data, unless told to misbehave ([`FarmerMode`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{ecdsa, Message, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, BlockHash, CompressedPublicKey,
    EcdsaSighashType, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use dstore_protocol::audit::beacon::beacon_candidate;
use dstore_protocol::audit::book::{AuditBook, RefundId};
use dstore_protocol::audit::candidates::{self, Candidate, CandidateError, CandidateSecret, Lock};
use dstore_protocol::audit::merkle_audit::AnswerBuilder;
use dstore_protocol::audit::stake::{check_stake, required_stake, stake_index, stake_output};
use dstore_protocol::audit::swap::{FarmerSwap, RenterSwap};
use dstore_protocol::audit::transactions::{AuditTerms, SigningKeys};
use dstore_protocol::audit::wire::{
    MerkleRequest, RevealReply, RevealRequest, MERKLE_PATH, REVEAL_PATH,
};
use dstore_protocol::audit::{coin_toss, opening};
use dstore_protocol::merkle::{segment_count, MerkleTree, SEGMENT_SIZE};
use dstore_protocol::watch::{AuditorSpec, Presigned, Registration, WatchRole};
use rand::rngs::StdRng;
use rand::RngCore;
use serde_json::{json, Value};

use crate::funding::{broadcast, Funder};
use crate::node::rpc_call;
use crate::BitcoinNode;

/// A: the value of each O_i.
pub const AMOUNT: Amount = Amount::from_sat(50_000);
pub const CANDIDATE_FEE: Amount = Amount::from_sat(1_000);
pub const REFUND_FEE: Amount = Amount::from_sat(2_000);
pub const CLAIM_FEE: Amount = Amount::from_sat(1_000);
const TX_A_FEE: Amount = Amount::from_sat(2_000);
const CHANGE: Amount = Amount::from_sat(10_000);
/// P and W: small, regtest blocks are instant.
pub const PERIOD: u32 = 6;
pub const WINDOW: u16 = 3;
/// 10 segments of "ciphertext", the last one short.
const DATA_LEN: usize = 10 * SEGMENT_SIZE - 123;

/// One party's keys: Ra/Fa on TX_A, Rc/Fc on the candidates, and a payout script.
pub struct Party {
    pub funding: SecretKey,
    pub claim: SecretKey,
    pub payout: ScriptBuf,
}

impl Party {
    pub fn new(rng: &mut StdRng) -> Self {
        Party {
            funding: SecretKey::new(rng),
            claim: SecretKey::new(rng),
            payout: p2wpkh(&SecretKey::new(rng)),
        }
    }

    pub fn keys(&self) -> SigningKeys {
        SigningKeys {
            funding: self.funding,
            claim: Some(self.claim),
        }
    }
}

/// The P2WPKH script of `key`.
pub fn p2wpkh(key: &SecretKey) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&CompressedPublicKey(key.public_key(SECP256K1)).wpubkey_hash())
}

/// A funded audit contract: TX_A mined, every transaction signed as both sides hold it.
pub struct AuditContract {
    /// The stored ciphertext C and its Merkle tree.
    pub data: Vec<u8>,
    pub tree: MerkleTree,
    pub renter: Party,
    pub farmer: Party,
    pub book: AuditBook,
    /// The kept candidates' secrets, per audit, in the book's order.
    pub secrets: Vec<Vec<CandidateSecret>>,
    /// A_ij, signed by both.
    pub candidates: Vec<Vec<Transaction>>,
    /// What TX_A paid the farmer at `stake_index` (the least these terms need), and where.
    pub stake: Amount,
    pub stake_script: ScriptBuf,
    refund_signatures: Vec<Vec<ecdsa::Signature>>,
}

impl AuditContract {
    /// Sets up and funds a contract of `audits` audits keeping `kept` candidates each,
    /// whose first audit height is `first_audit_ahead` blocks above the current tip (two
    /// blocks are mined on the way: the wallet coin and TX_A).
    pub fn new(
        node: &BitcoinNode,
        funder: &mut Funder,
        rng: &mut StdRng,
        audits: u32,
        kept: usize,
        first_audit_ahead: u32,
    ) -> Self {
        let mut data = vec![0u8; DATA_LEN];
        rng.fill_bytes(&mut data);
        let (renter, farmer) = (Party::new(rng), Party::new(rng));
        let mut contract_id = [0u8; 32];
        rng.fill_bytes(&mut contract_id);
        let plan = propose_candidates(rng, &data, audits, 2 * kept);
        let locks = locks_of(&plan);
        let terms = AuditTerms {
            contract_id,
            renter_funding_key: renter.funding.public_key(SECP256K1),
            farmer_funding_key: farmer.funding.public_key(SECP256K1),
            renter_claim_key: renter.claim.public_key(SECP256K1),
            farmer_claim_key: farmer.claim.public_key(SECP256K1),
            first_audit_height: tip(node) + first_audit_ahead,
            period: PERIOD,
            claim_window: WINDOW,
            audits,
            amount: AMOUNT,
            candidate_fee: CANDIDATE_FEE,
            refund_fee: REFUND_FEE,
        };
        terms.check().expect("consistent terms");
        // TX_A with the renter's stake; the farmer checks both and signs every RF_i
        // before TX_A is broadcast.
        let stake = required_stake(AMOUNT, kept);
        let stake_script = p2wpkh(&SecretKey::new(rng));
        let tx_a = fund_tx_a(node, funder, rng, &terms, &stake_script, stake);
        terms.check_funding(&tx_a).expect("the farmer checks TX_A");
        check_stake(&tx_a, audits, &stake_script, stake).expect("the farmer checks the stake");
        let funded =
            AuditBook::before_toss(terms, tx_a.compute_txid(), renter.payout.clone(), None);
        let unraced = funded.unraced_refund_ids();
        let mut refund_signatures = funded
            .farmer_refund_signatures(&unraced, &farmer.keys())
            .unwrap();
        funded
            .verify_farmer_refund_signatures(&unraced, &refund_signatures)
            .unwrap();
        broadcast(node, &tx_a).expect("TX_A accepted");
        node.mine(1);
        // TX_A is confirmed: the toss, the openings, then every RF_ij.
        let toss = toss(rng, &contract_id, &plan);
        let openings = opening::openings(&plan, &toss);
        let segments = segment_count(data.len() as u64);
        opening::check_openings(&locks, &toss, &openings, segments, |i| {
            segment(&data, i).to_vec()
        })
        .expect("the farmer accepts the honest openings");
        let book = funded
            .with_kept_locks(opening::kept_locks(&locks, &toss))
            .expect("the complete book");
        let after = book.after_candidate_refund_ids();
        let after_signatures = book
            .farmer_refund_signatures(&after, &farmer.keys())
            .unwrap();
        book.verify_farmer_refund_signatures(&after, &after_signatures)
            .unwrap();
        refund_signatures.extend(after_signatures);
        let candidates = swap(&book, &renter, &farmer);
        let secrets = opening::kept(&plan, &toss)
            .into_iter()
            .map(|audit| audit.into_iter().map(|c| c.secret).collect())
            .collect();
        AuditContract {
            tree: MerkleTree::from_data(&data),
            data,
            renter,
            farmer,
            book,
            secrets,
            candidates,
            stake,
            stake_script,
            refund_signatures,
        }
    }

    pub fn terms(&self) -> &AuditTerms {
        &self.book.terms
    }

    pub fn contract_id(&self) -> [u8; 32] {
        self.book.terms.contract_id
    }

    /// The watch id both towers know the contract by: its contract id, in hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.contract_id())
    }

    pub fn kept(&self) -> u32 {
        self.book.kept_per_audit() as u32
    }

    pub fn candidate(&self, audit: u32, j: u32) -> &Transaction {
        &self.candidates[audit as usize][j as usize]
    }

    pub fn candidate_txid(&self, audit: u32, j: u32) -> Txid {
        self.candidate(audit, j).compute_txid()
    }

    /// The refund `id`, signed by the renter with the farmer's setup signatures.
    pub fn refund(&self, id: RefundId) -> Transaction {
        let k = self
            .book
            .refund_ids()
            .iter()
            .position(|r| *r == id)
            .unwrap();
        self.book
            .signed_refund(id, &self.renter.keys(), &self.refund_signatures[k])
            .unwrap()
    }

    /// The renter's plain reclaim of candidate (audit, j) after older(W).
    pub fn reclaim(&self, audit: u32, j: u32) -> Transaction {
        let lock = self.book.lock(audit, j).unwrap();
        let txid = self.candidate_txid(audit, j);
        self.terms()
            .reclaim(
                txid,
                &lock,
                &self.renter.claim,
                &self.renter.payout,
                CLAIM_FEE,
            )
            .unwrap()
    }

    /// The salts the auditor holds.
    pub fn salts(&self) -> Vec<[u8; 32]> {
        self.secrets.iter().flatten().map(|s| s.salt).collect()
    }

    /// j = beacon(contract, blockhash(T_i − 1)) mod m, from bitcoind.
    pub fn beacon(&self, node: &BitcoinNode, audit: u32) -> u32 {
        let height = self.terms().audit_height(audit) - 1;
        let hash = node.rpc_ok("getblockhash", json!([height]));
        let hash = BlockHash::from_str(hash.as_str().unwrap()).unwrap();
        beacon_candidate(
            &self.contract_id(),
            &hash.to_byte_array(),
            self.kept() as usize,
        )
    }

    pub fn auditor_spec(&self, farmer_url: &str) -> AuditorSpec {
        AuditorSpec {
            book: self.book.clone(),
            secrets: self.secrets.clone(),
            farmer_url: farmer_url.to_string(),
            root_c: self.tree.root(),
            length: self.data.len() as u64,
        }
    }

    /// Every kept candidate as `audit-{i}-candidate-{j}` in group i.
    pub fn grouped_candidates(&self) -> Vec<Presigned> {
        let mut all = Vec::new();
        for (i, audit) in self.candidates.iter().enumerate() {
            for (j, tx) in audit.iter().enumerate() {
                let mut p = Presigned::new(format!("audit-{i}-candidate-{j}"), tx.clone());
                p.group = Some(i as u32);
                all.push(p);
            }
        }
        all
    }

    /// What the renter's plugin registers with its tower: the candidates, then RF_ij and
    /// the reclaim of every candidate, then RF_i; with the auditor spec when this tower
    /// is the auditor (`farmer_url`).
    pub fn renter_registration(&self, farmer_url: Option<&str>) -> Registration {
        let mut transactions = self.grouped_candidates();
        for i in 0..self.terms().audits {
            for j in 0..self.kept() {
                let rf = self.refund(RefundId::AfterCandidate(i, j));
                transactions.push(Presigned::new(format!("audit-{i}-refund-after-{j}"), rf));
                let reclaim = self.reclaim(i, j);
                transactions.push(Presigned::new(format!("audit-{i}-reclaim-{j}"), reclaim));
            }
        }
        for i in 0..self.terms().audits {
            let rf = self.refund(RefundId::Unraced(i));
            transactions.push(Presigned::new(format!("audit-{i}-refund"), rf));
        }
        Registration {
            id: self.contract_id(),
            role: WatchRole::Renter,
            extract: None,
            transactions,
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: farmer_url.map(|url| self.auditor_spec(url)),
        }
    }

    /// What the farmer's plugin registers with its tower: the candidates (later, each
    /// claim through a second registration).
    pub fn farmer_registration(&self) -> Registration {
        Registration {
            id: self.contract_id(),
            role: WatchRole::Farmer,
            extract: None,
            transactions: self.grouped_candidates(),
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: None,
        }
    }

    /// The farmer's side of the contract, for its server.
    pub fn farmer_side(&self) -> FarmerSide {
        FarmerSide {
            book: self.book.clone(),
            data: self.data.clone(),
            claim_key: self.farmer.claim,
            payout: self.farmer.payout.clone(),
        }
    }
}

fn tip(node: &BitcoinNode) -> u32 {
    node.block_count() as u32
}

fn segment(data: &[u8], index: u64) -> &[u8] {
    let start = (index as usize * SEGMENT_SIZE).min(data.len());
    &data[start..(start + SEGMENT_SIZE).min(data.len())]
}

fn propose_candidates(
    rng: &mut StdRng,
    data: &[u8],
    audits: u32,
    per_audit: usize,
) -> Vec<Vec<Candidate>> {
    let segments = segment_count(data.len() as u64);
    (0..audits)
        .map(|_| {
            candidates::choose_secrets(rng, segments, per_audit)
                .into_iter()
                .map(|s| candidates::candidate(s, segment(data, s.segment_index)))
                .collect()
        })
        .collect()
}

fn locks_of(plan: &[Vec<Candidate>]) -> Vec<Vec<Lock>> {
    plan.iter()
        .map(|a| a.iter().map(|c| c.lock).collect())
        .collect()
}

/// The commit-reveal coin toss: the farmer commits, the renter answers, the farmer reveals.
fn toss(rng: &mut StdRng, contract_id: &[u8; 32], plan: &[Vec<Candidate>]) -> [u8; 32] {
    let (mut farmer_nonce, mut renter_nonce) = ([0u8; 32], [0u8; 32]);
    rng.fill_bytes(&mut farmer_nonce);
    let commitment = coin_toss::commit(&farmer_nonce);
    rng.fill_bytes(&mut renter_nonce);
    coin_toss::check_reveal(&commitment, &farmer_nonce).unwrap();
    let digest = coin_toss::locks_digest(&locks_of(plan));
    coin_toss::seed(contract_id, &digest, &farmer_nonce, &renter_nonce)
}

/// A wallet coin (mined), spent into TX_A: O_0..O_{N−1}, the renter's change at N (where a
/// market farmer's lease record goes; these parties have none), the stake at
/// `stake_index`.
fn fund_tx_a(
    node: &BitcoinNode,
    funder: &mut Funder,
    rng: &mut StdRng,
    terms: &AuditTerms,
    stake_script: &ScriptBuf,
    stake: Amount,
) -> Transaction {
    let key = SecretKey::new(rng);
    let value = AMOUNT * u64::from(terms.audits) + TX_A_FEE + CHANGE + stake;
    let (_, coin) = funder.fund(
        node,
        TxOut {
            value,
            script_pubkey: p2wpkh(&key),
        },
    );
    let mut output = terms.funding_outputs().unwrap();
    output.push(TxOut {
        value: CHANGE,
        script_pubkey: p2wpkh(&key),
    });
    output.push(stake_output(stake_script, stake));
    debug_assert_eq!(output.len() as u32, stake_index(terms.audits) + 1);
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output,
    };
    let sighash = SighashCache::new(&tx)
        .p2wpkh_signature_hash(0, &p2wpkh(&key), value, EcdsaSighashType::All)
        .unwrap();
    let signature = SECP256K1.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &key);
    tx.input[0].witness = Witness::p2wpkh(
        &bitcoin::ecdsa::Signature::sighash_all(signature),
        &key.public_key(SECP256K1),
    );
    tx
}

/// The whole swap, one candidate at a time, farmer first.
fn swap(book: &AuditBook, renter: &Party, farmer: &Party) -> Vec<Vec<Transaction>> {
    let (mut renter_swap, mut farmer_swap) = (RenterSwap::new(), FarmerSwap::new());
    let (rkeys, fkeys) = (renter.keys(), farmer.keys());
    while !farmer_swap.complete(book) {
        let (step, fsig) = farmer_swap.next(book, &fkeys).unwrap();
        let rsig = renter_swap.receive(book, &rkeys, step, fsig).unwrap();
        farmer_swap.receive(book, step, rsig).unwrap();
    }
    let mut all: Vec<Vec<Transaction>> = vec![Vec::new(); book.terms.audits as usize];
    for signed in renter_swap.signed_candidates(book) {
        all[signed.audit as usize].push(signed.tx);
    }
    all
}

/// What the farmer holds of a contract.
#[derive(Clone)]
pub struct FarmerSide {
    pub book: AuditBook,
    pub data: Vec<u8>,
    pub claim_key: SecretKey,
    pub payout: ScriptBuf,
}

impl FarmerSide {
    /// x for a released candidate, from the stored segment, and the claim it signs.
    pub fn claim(&self, request: &RevealRequest) -> Result<Transaction, String> {
        let (audit, j) = (request.audit, request.candidate);
        let expected = self
            .book
            .candidate(audit, j)
            .map_err(|e| e.to_string())?
            .tx
            .compute_txid();
        if request.contract_id != self.book.terms.contract_id || request.candidate_txid != expected
        {
            return Err("not one of this contract's candidates".into());
        }
        let lock = self.book.lock(audit, j).map_err(|e| e.to_string())?;
        let segments = segment_count(self.data.len() as u64);
        candidates::check_index(&request.secret, segments).map_err(|e| e.to_string())?;
        let seg = segment(&self.data, request.secret.segment_index);
        let x = candidates::check_opening(&lock, &request.secret, seg)
            .map_err(|e: CandidateError| e.to_string())?;
        self.book
            .terms
            .claim(
                expected,
                &lock,
                &x,
                &self.claim_key,
                &self.payout,
                CLAIM_FEE,
            )
            .map_err(|e| e.to_string())
    }

    /// The answer to a Merkle challenge, from one pass over the data.
    pub fn merkle_answer(&self, request: &MerkleRequest) -> Result<Value, String> {
        let block = request.block_hash.to_byte_array();
        let id = self.book.terms.contract_id;
        let length = self.data.len() as u64;
        let mut builder = AnswerBuilder::for_challenge(&id, &block, length, request.k as usize)
            .map_err(|e| e.to_string())?;
        builder.update(&self.data);
        let answer = builder.finish(id, block).map_err(|e| e.to_string())?;
        serde_json::to_value(answer).map_err(|e| e.to_string())
    }
}

/// How the farmer's endpoints behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarmerMode {
    /// Claims every valid release and answers every challenge honestly.
    Honest,
    /// Lost its copy: answers releases and challenges with HTTP 500.
    DataLost,
    /// Claims honestly, but answers challenges with one segment byte flipped.
    WrongMerkle,
}

/// What the farmer's endpoints were asked and did.
#[derive(Debug, Default)]
pub struct FarmerLog {
    pub reveals: Vec<RevealRequest>,
    /// (audit, candidate, claim txid) of each claim broadcast.
    pub claims: Vec<(u32, u32, Txid)>,
    pub merkle: Vec<MerkleRequest>,
}

/// The farmer's peer endpoints, served on a loopback port until dropped.
pub struct FarmerServer {
    pub url: String,
    pub log: Arc<Mutex<FarmerLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How the farmer reaches bitcoind.
struct Chain {
    url: String,
    cookie: PathBuf,
    http: reqwest::blocking::Client,
}

impl Chain {
    fn broadcast(&self, tx: &Transaction) -> Result<(), String> {
        let credentials = std::fs::read_to_string(&self.cookie).map_err(|e| e.to_string())?;
        let hex = bitcoin::consensus::encode::serialize_hex(tx);
        rpc_call(
            &self.http,
            &self.url,
            &credentials,
            "sendrawtransaction",
            json!([hex]),
        )
        .map(|_| ())
        .map_err(|e| e.message)
    }
}

impl FarmerServer {
    pub fn start(node: &BitcoinNode, farmer: FarmerSide, mode: FarmerMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the farmer's port");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(FarmerLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let chain = Chain {
            url: node.rpc_url(),
            cookie: node.cookie_path(),
            http: reqwest::blocking::Client::new(),
        };
        let handler = Handler {
            farmer,
            mode,
            chain,
            log: log.clone(),
        };
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => handler.serve(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FarmerServer {
            url,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The claims broadcast so far.
    pub fn claims(&self) -> Vec<(u32, u32, Txid)> {
        self.log.lock().unwrap().claims.clone()
    }

    pub fn reveals(&self) -> usize {
        self.log.lock().unwrap().reveals.len()
    }

    pub fn merkle_requests(&self) -> Vec<MerkleRequest> {
        self.log.lock().unwrap().merkle.clone()
    }
}

impl Drop for FarmerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Handler {
    farmer: FarmerSide,
    mode: FarmerMode,
    chain: Chain,
    log: Arc<Mutex<FarmerLog>>,
}

impl Handler {
    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let Some((path, body)) = read_request(&stream) else {
            return;
        };
        let (status, reply) = match path.as_str() {
            REVEAL_PATH => self.reveal(&body),
            MERKLE_PATH => self.merkle(&body),
            _ => (404, json!({"error": "no such endpoint"})),
        };
        write_reply(stream, status, &reply);
    }

    fn reveal(&self, body: &[u8]) -> (u16, Value) {
        let request: RevealRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => return (400, json!({"error": e.to_string()})),
        };
        self.log.lock().unwrap().reveals.push(request.clone());
        if self.mode == FarmerMode::DataLost {
            return (500, json!({"error": "the segment is gone"}));
        }
        let claim = match self.farmer.claim(&request) {
            Ok(claim) => claim,
            Err(e) => return (400, json!({ "error": e })),
        };
        if let Err(e) = self.chain.broadcast(&claim) {
            return (
                500,
                json!({ "error": format!("bitcoind refused the claim: {e}") }),
            );
        }
        let txid = claim.compute_txid();
        let entry = (request.audit, request.candidate, txid);
        self.log.lock().unwrap().claims.push(entry);
        let reply = RevealReply { claim_txid: txid };
        (200, serde_json::to_value(reply).unwrap())
    }

    fn merkle(&self, body: &[u8]) -> (u16, Value) {
        let request: MerkleRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => return (400, json!({"error": e.to_string()})),
        };
        self.log.lock().unwrap().merkle.push(request.clone());
        if self.mode == FarmerMode::DataLost {
            return (500, json!({"error": "the data is gone"}));
        }
        match self.farmer.merkle_answer(&request) {
            Ok(mut answer) if self.mode == FarmerMode::WrongMerkle => {
                flip_first_segment_byte(&mut answer);
                (200, answer)
            }
            Ok(answer) => (200, answer),
            Err(e) => (400, json!({ "error": e })),
        }
    }
}

/// Flips the first byte of the first answered segment (hex in JSON).
fn flip_first_segment_byte(answer: &mut Value) {
    if let Some(segment) = answer["items"][0]["segment"].as_str() {
        let mut bytes = hex::decode(segment).unwrap();
        bytes[0] ^= 1;
        answer["items"][0]["segment"] = Value::String(hex::encode(bytes));
    }
}

/// (path, body) of one HTTP/1.1 request.
pub(crate) fn read_request(stream: &TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, body))
}

fn write_reply(mut stream: TcpStream, status: u16, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}
