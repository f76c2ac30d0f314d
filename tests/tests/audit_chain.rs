//! The audit contract (PROTOCOL.md 5) on a real regtest bitcoind, at the protocol level.
//!
//! Renter and farmer both run in-process through `dstore_protocol::audit`: the renter's
//! salted candidates over a random "ciphertext" and the farmer's toss commitment, TX_A
//! (N outputs, the renter's change, its stake to the farmer; segwit inputs only, so its
//! txid is final before anything is signed against it) with the farmer's signatures on
//! every RF_i, TX_A confirmed, then the toss revealed, the farmer's check of the opened
//! half, its signatures on every RF_ij, and the one-at-a-time candidate signature swap. A transaction counts only once
//! bitcoind accepts it (testmempoolaccept / sendrawtransaction) or mines it.
//!
//! What the tests show on chain:
//! * an honest farmer is paid for every audit, each candidate waiting for its T_i and chosen
//!   by the beacon, and no refund is left that could take the money back;
//! * a farmer that dropped the file cannot claim, and the renter's RF_ij refunds it;
//! * [fix] with the seed's unsalted locks a farmer keeping only the matched segments still
//!   passes every audit; with salted locks the same farmer matches nothing;
//! * a renter planting unanswerable locks is caught at the opening, once TX_A (and the
//!   stake it pays the farmer) is confirmed: the stake is lost, RF_0 returns the O_i;
//! * when both sides race different candidates exactly one confirms and it is claimable;
//! * a swap abandoned halfway by either side leaves both safe;
//! * the renter's plain reclaim (BIP68 older(W)) recovers an unclaimed candidate even when
//!   RF_ij is blocked because a later audit already spent its O_{i+1}.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{ecdsa, Message, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, BlockHash, EcdsaSighashType, OutPoint,
    ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use dstore_protocol::audit::beacon::beacon_candidate;
use dstore_protocol::audit::book::{AuditBook, KeptLock, RefundId};
use dstore_protocol::audit::candidates::{self, Candidate, CandidateError, CandidateSecret, Lock};
use dstore_protocol::audit::coin_toss;
use dstore_protocol::audit::opening::{self, Opening, OpeningError};
use dstore_protocol::audit::stake::{check_stake, required_stake, stake_output};
use dstore_protocol::audit::swap::{FarmerSwap, RenterSwap, SignedCandidate};
use dstore_protocol::audit::transactions::AuditTerms;
use dstore_protocol::merkle::SEGMENT_SIZE;
use dstore_tests::audit_fixture::{p2wpkh, Party};
use dstore_tests::funding::{broadcast, mempool_verdicts, Funder};
use dstore_tests::node::btc_to_sat;
use dstore_tests::BitcoinNode;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;

/// A: the value of each O_i.
const AMOUNT: Amount = Amount::from_sat(50_000);
const CANDIDATE_FEE: Amount = Amount::from_sat(1_000);
const REFUND_FEE: Amount = Amount::from_sat(2_000);
const CLAIM_FEE: Amount = Amount::from_sat(1_000);
const TX_A_FEE: Amount = Amount::from_sat(2_000);
/// The renter's change on TX_A, after the N funding outputs.
const CHANGE: Amount = Amount::from_sat(10_000);
/// P and W.
const PERIOD: u32 = 6;
const WINDOW: u16 = 3;
/// m: candidates kept per audit (2m proposed).
const KEPT: usize = 4;
/// T_0 = tip + 5 when the terms are made.
const FIRST_AUDIT_AHEAD: u32 = 5;
/// ~40 KiB of "ciphertext" (10 segments, the last one short).
const SMALL_FILE: usize = 40_000;
/// 100 segments, the last one short: big enough that the openings leave most of it unseen.
const LARGE_FILE: usize = 100 * SEGMENT_SIZE - 123;

/// The farmer's copy of C, segment by segment; a dropped segment is simply absent.
type Store = BTreeMap<u64, Vec<u8>>;

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

fn random_file(rng: &mut StdRng, len: usize) -> Store {
    random_bytes(rng, len)
        .chunks(SEGMENT_SIZE)
        .enumerate()
        .map(|(i, s)| (i as u64, s.to_vec()))
        .collect()
}

/// How the renter builds its locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locks {
    /// PROTOCOL.md 5: HASH160(SHA256(tag ‖ salt ‖ segment)).
    Salted,
    /// The seed's construction: HASH160(SHA256(tag ‖ segment)).
    Unsalted,
    /// Salted, but the first half of every audit's locks are over bytes not in the file.
    HalfBad,
}

impl Locks {
    fn candidate(self, position: usize, secret: CandidateSecret, segment: &[u8]) -> Candidate {
        match self {
            Locks::Salted => candidates::candidate(secret, segment),
            Locks::Unsalted => Candidate {
                secret,
                lock: candidates::lock(&candidates::unsalted_preimage(segment)),
            },
            Locks::HalfBad if position < KEPT => {
                candidates::candidate(secret, &[0xEE; SEGMENT_SIZE])
            }
            Locks::HalfBad => candidates::candidate(secret, segment),
        }
    }

    /// The farmer's x for an opened candidate, computed from the segment it stores.
    fn preimage(
        self,
        lock: &Lock,
        secret: &CandidateSecret,
        store: &Store,
    ) -> Result<[u8; 32], CandidateError> {
        let missing = CandidateError::LockMismatch(secret.segment_index);
        let segment = store.get(&secret.segment_index).ok_or(missing.clone())?;
        match self {
            Locks::Unsalted => {
                let x = candidates::unsalted_preimage(segment);
                (candidates::lock(&x) == *lock).then_some(x).ok_or(missing)
            }
            _ => candidates::check_opening(lock, secret, segment),
        }
    }
}

/// What the two sides settle off-chain before any coin moves: the renter's 2m candidates
/// per audit (locks sent first) and the coin toss that picks the half to open.
struct Agreement {
    contract_id: [u8; 32],
    audits: u32,
    kind: Locks,
    renter: Party,
    farmer: Party,
    /// The renter's candidates with their secrets.
    plan: Vec<Vec<Candidate>>,
    /// The farmer's toss nonce and its commitment (sent with its acceptance); the nonce is
    /// revealed only once TX_A is confirmed ([`negotiate`]).
    farmer_nonce: [u8; 32],
    commitment: coin_toss::TossCommitment,
    /// The seed the toss will give (the test knows it ahead; the parties only after the
    /// reveal).
    toss: [u8; 32],
}

fn agree(rng: &mut StdRng, file: &Store, audits: u32, kind: Locks) -> Agreement {
    let contract_id: [u8; 32] = random_bytes(rng, 32).try_into().unwrap();
    let (renter, farmer) = (Party::new(rng), Party::new(rng));
    let plan: Vec<Vec<Candidate>> = (0..audits)
        .map(|_| {
            candidates::choose_secrets(rng, file.len() as u64, 2 * KEPT)
                .into_iter()
                .enumerate()
                .map(|(p, s)| kind.candidate(p, s, &file[&s.segment_index]))
                .collect()
        })
        .collect();
    // Locks are sent; the farmer commits to its nonce; once TX_A is confirmed the renter
    // answers with its nonce in the clear and the farmer reveals.
    let farmer_nonce: [u8; 32] = random_bytes(rng, 32).try_into().unwrap();
    let commitment = coin_toss::commit(&farmer_nonce);
    let renter_nonce: [u8; 32] = random_bytes(rng, 32).try_into().unwrap();
    let digest = coin_toss::locks_digest(&locks_of(&plan));
    let toss = coin_toss::seed(&contract_id, &digest, &farmer_nonce, &renter_nonce);
    Agreement {
        contract_id,
        audits,
        kind,
        renter,
        farmer,
        plan,
        farmer_nonce,
        commitment,
        toss,
    }
}

fn locks_of(plan: &[Vec<Candidate>]) -> Vec<Vec<Lock>> {
    plan.iter()
        .map(|a| a.iter().map(|c| c.lock).collect())
        .collect()
}

impl Agreement {
    fn openings(&self) -> Vec<Opening> {
        opening::openings(&self.plan, &self.toss)
    }

    /// The renter's double-spend sets, with secrets: candidate j of audit i of the book.
    fn kept(&self) -> Vec<Vec<Candidate>> {
        opening::kept(&self.plan, &self.toss)
    }

    /// The farmer's view of the same sets: locks only.
    fn kept_locks(&self) -> Vec<Vec<KeptLock>> {
        opening::kept_locks(&locks_of(&self.plan), &self.toss)
    }

    fn opened_segments(&self) -> BTreeSet<u64> {
        self.openings()
            .iter()
            .map(|o| o.secret.segment_index)
            .collect()
    }

    fn terms(&self, first_audit_height: u32) -> AuditTerms {
        AuditTerms {
            contract_id: self.contract_id,
            renter_funding_key: self.renter.funding.public_key(SECP256K1),
            farmer_funding_key: self.farmer.funding.public_key(SECP256K1),
            renter_claim_key: self.renter.claim.public_key(SECP256K1),
            farmer_claim_key: self.farmer.claim.public_key(SECP256K1),
            first_audit_height,
            period: PERIOD,
            claim_window: WINDOW,
            audits: self.audits,
            amount: AMOUNT,
            candidate_fee: CANDIDATE_FEE,
            refund_fee: REFUND_FEE,
        }
    }

    /// The farmer checks the opened half against the data it stores.
    fn farmer_checks_openings(&self, store: &Store) -> Result<(), OpeningError> {
        let locks = locks_of(&self.plan);
        let openings = self.openings();
        if self.kind == Locks::Unsalted {
            return check_unsalted_openings(&locks, &self.toss, &openings, store);
        }
        let read = |i: u64| store.get(&i).cloned().unwrap_or_default();
        opening::check_openings(&locks, &self.toss, &openings, store.len() as u64, read)
    }
}

/// The seed's opening check for unsalted locks (the salted `check_openings` hashes a salt).
fn check_unsalted_openings(
    locks: &[Vec<Lock>],
    toss: &[u8; 32],
    openings: &[Opening],
    store: &Store,
) -> Result<(), OpeningError> {
    let per_audit = opening::check_shape(locks)?;
    let expected = (0..locks.len() as u32).flat_map(|a| {
        coin_toss::opened_positions(toss, a, per_audit, per_audit / 2)
            .into_iter()
            .map(move |p| (a, p as u32))
    });
    if !expected.eq(openings.iter().map(|o| (o.audit, o.position))) {
        return Err(OpeningError::WrongPositions);
    }
    for o in openings {
        let lock = &locks[o.audit as usize][o.position as usize];
        Locks::Unsalted
            .preimage(lock, &o.secret, store)
            .map_err(|source| OpeningError::Candidate {
                audit: o.audit,
                position: o.position,
                source,
            })?;
    }
    Ok(())
}

/// The renter's wallet coin that pays for TX_A (P2WPKH, so TX_A's inputs are segwit).
struct Wallet {
    key: SecretKey,
    coin: OutPoint,
    value: Amount,
}

/// The terms and the renter's signed (not yet broadcast) TX_A, made once the farmer has
/// accepted the locks (committing to its toss nonce) and named its stake script.
struct Proposal {
    agreement: Agreement,
    terms: AuditTerms,
    /// The farmer's fresh stake address and the least stake the terms need.
    stake_script: ScriptBuf,
    stake: Amount,
    tx_a: Transaction,
}

fn propose(
    node: &BitcoinNode,
    funder: &mut Funder,
    rng: &mut StdRng,
    agreement: Agreement,
) -> Proposal {
    let key = SecretKey::new(rng);
    let stake = required_stake(AMOUNT, KEPT);
    let stake_script = p2wpkh(&SecretKey::new(rng));
    let value = AMOUNT * u64::from(agreement.audits) + TX_A_FEE + CHANGE + stake;
    let (_, coin) = funder.fund(
        node,
        TxOut {
            value,
            script_pubkey: p2wpkh(&key),
        },
    );
    let wallet = Wallet { key, coin, value };
    let terms = agreement.terms(tip(node) + FIRST_AUDIT_AHEAD);
    terms.check().expect("terms are consistent");
    let tx_a = build_tx_a(&wallet, &terms, &stake_script, stake);
    Proposal {
        agreement,
        terms,
        stake_script,
        stake,
        tx_a,
    }
}

/// TX_A: O_0..O_{N−1} at indices 0..N, the change at N (where a market farmer's lease
/// record goes; these parties have none), the stake at `stake_index` = N + 1; one P2WPKH
/// input.
fn build_tx_a(
    wallet: &Wallet,
    terms: &AuditTerms,
    stake_script: &ScriptBuf,
    stake: Amount,
) -> Transaction {
    let mut output = terms.funding_outputs().unwrap();
    output.push(TxOut {
        value: CHANGE,
        script_pubkey: p2wpkh(&wallet.key),
    });
    output.push(stake_output(stake_script, stake));
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: wallet.coin,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output,
    };
    let sighash = SighashCache::new(&tx)
        .p2wpkh_signature_hash(0, &p2wpkh(&wallet.key), wallet.value, EcdsaSighashType::All)
        .unwrap();
    let signature =
        SECP256K1.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &wallet.key);
    let public = wallet.key.public_key(SECP256K1);
    tx.input[0].witness =
        Witness::p2wpkh(&bitcoin::ecdsa::Signature::sighash_all(signature), &public);
    tx
}

/// A funded contract: TX_A mined, the book and the refund signatures on both sides, and
/// each side's swap state.
struct Contract {
    agreement: Agreement,
    book: AuditBook,
    refund_signatures: Vec<Vec<ecdsa::Signature>>,
    renter_swap: RenterSwap,
    farmer_swap: FarmerSwap,
}

/// A renter caught at the openings, after TX_A (and the stake in it) confirmed: the
/// farmer's refusal, and the RF_i the farmer signed before TX_A was broadcast.
struct Caught {
    error: OpeningError,
    agreement: Agreement,
    /// The book before the toss (only RF_i can be built from it) and the farmer's
    /// signatures on every RF_i.
    book: AuditBook,
    refund_signatures: Vec<Vec<ecdsa::Signature>>,
    tx_a: Transaction,
    stake_script: ScriptBuf,
    stake: Amount,
}

impl std::fmt::Debug for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "caught at the openings: {:?}", self.error)
    }
}

impl Caught {
    /// The renter's RF_i, signed with the farmer's signature from before TX_A.
    fn refund(&self, audit: u32) -> Transaction {
        let id = RefundId::Unraced(audit);
        self.book
            .signed_refund(
                id,
                &self.agreement.renter.keys(),
                &self.refund_signatures[audit as usize],
            )
            .unwrap()
    }
}

/// The setup from the farmer's check of TX_A to the complete book: the farmer checks TX_A
/// (its outputs and the stake) and signs every RF_i; TX_A is mined; only then the farmer
/// reveals its toss nonce and checks the opened half. A failed check leaves the renter
/// with TX_A confirmed, its stake paid, and RF_i ([`Caught`]).
fn negotiate(
    node: &BitcoinNode,
    proposal: Proposal,
    store: &Store,
) -> Result<Contract, Box<Caught>> {
    let Proposal {
        agreement,
        terms,
        stake_script,
        stake,
        tx_a,
        ..
    } = proposal;
    terms
        .check_funding(&tx_a)
        .expect("the farmer checks TX_A before signing against its txid");
    check_stake(&tx_a, terms.audits, &stake_script, stake).expect("the farmer checks the stake");
    let funded = AuditBook::before_toss(
        terms,
        tx_a.compute_txid(),
        agreement.renter.payout.clone(),
        None,
    );
    let unraced = funded.unraced_refund_ids();
    let mut refund_signatures = funded
        .farmer_refund_signatures(&unraced, &agreement.farmer.keys())
        .unwrap();
    funded
        .verify_farmer_refund_signatures(&unraced, &refund_signatures)
        .expect("the renter verifies every RF_i signature before broadcasting TX_A");
    confirm(node, &tx_a);
    // TX_A is confirmed: the farmer reveals its nonce and checks the openings.
    coin_toss::check_reveal(&agreement.commitment, &agreement.farmer_nonce).unwrap();
    if let Err(error) = agreement.farmer_checks_openings(store) {
        return Err(Box::new(Caught {
            error,
            agreement,
            book: funded,
            refund_signatures,
            tx_a,
            stake_script,
            stake,
        }));
    }
    let book = funded
        .with_kept_locks(agreement.kept_locks())
        .expect("the complete book");
    let after = book.after_candidate_refund_ids();
    let after_signatures = book
        .farmer_refund_signatures(&after, &agreement.farmer.keys())
        .unwrap();
    book.verify_farmer_refund_signatures(&after, &after_signatures)
        .expect("the renter verifies every RF_ij signature");
    refund_signatures.extend(after_signatures);
    Ok(Contract {
        agreement,
        book,
        refund_signatures,
        renter_swap: RenterSwap::new(),
        farmer_swap: FarmerSwap::new(),
    })
}

/// A fresh node, a funder, and a renter-side rng.
fn start(seed: u64) -> (StdRng, BitcoinNode, Funder) {
    let node = BitcoinNode::start();
    let funder = Funder::new(&node, 2);
    (StdRng::seed_from_u64(seed), node, funder)
}

/// The whole honest setup including the complete swap.
fn funded_contract(
    node: &BitcoinNode,
    funder: &mut Funder,
    rng: &mut StdRng,
    agreement: Agreement,
    store: &Store,
) -> Contract {
    let proposal = propose(node, funder, rng, agreement);
    let mut contract = negotiate(node, proposal, store).expect("honest openings pass");
    contract.swap(contract.book.swap_order().len());
    assert!(contract.farmer_swap.complete(&contract.book));
    contract
}

impl Contract {
    fn terms(&self) -> &AuditTerms {
        &self.book.terms
    }

    /// `steps` rounds of the swap: the farmer signs, the renter verifies and answers, the
    /// farmer verifies.
    fn swap(&mut self, steps: usize) {
        let (renter, farmer) = (self.agreement.renter.keys(), self.agreement.farmer.keys());
        for _ in 0..steps {
            let (step, fsig) = self.farmer_swap.next(&self.book, &farmer).unwrap();
            let rsig = self
                .renter_swap
                .receive(&self.book, &renter, step, fsig)
                .unwrap();
            self.farmer_swap.receive(&self.book, step, rsig).unwrap();
        }
    }

    fn candidate_txid(&self, audit: u32, j: u32) -> Txid {
        self.book.candidate(audit, j).unwrap().tx.compute_txid()
    }

    /// j = beacon(contract, blockhash(T_i − 1)) mod m.
    fn beacon(&self, node: &BitcoinNode, audit: u32) -> u32 {
        let height = self.terms().audit_height(audit) - 1;
        let hash = node.rpc_ok("getblockhash", json!([height]));
        let hash = BlockHash::from_str(hash.as_str().unwrap()).unwrap();
        beacon_candidate(&self.agreement.contract_id, &hash.to_byte_array(), KEPT)
    }

    /// Which kept candidate of `audit` is on chain, as either side finds it.
    fn confirmed(&self, node: &BitcoinNode, audit: u32) -> Option<u32> {
        let mut found =
            (0..KEPT as u32).filter(|j| confirmations(node, &self.candidate_txid(audit, *j)) > 0);
        let j = found.next();
        assert_eq!(
            found.next(),
            None,
            "two candidates of audit {audit} confirmed"
        );
        j
    }

    /// The auditor's release of a confirmed candidate's (segment index, salt).
    fn release(&self, audit: u32, j: u32) -> CandidateSecret {
        self.agreement.kept()[audit as usize][j as usize].secret
    }

    /// The farmer's claim of candidate (audit, j) with x computed from `store`.
    fn claim(
        &self,
        store: &Store,
        audit: u32,
        j: u32,
        secret: &CandidateSecret,
    ) -> Result<Transaction, CandidateError> {
        let lock = self.book.lock(audit, j).unwrap();
        let x = self.agreement.kind.preimage(&lock, secret, store)?;
        let farmer = &self.agreement.farmer;
        let txid = self.candidate_txid(audit, j);
        Ok(self
            .terms()
            .claim(txid, &lock, &x, &farmer.claim, &farmer.payout, CLAIM_FEE)
            .unwrap())
    }

    /// The renter's refund `id`, signed with the farmer's setup signatures.
    fn refund(&self, id: RefundId) -> Transaction {
        let k = self
            .book
            .refund_ids()
            .iter()
            .position(|r| *r == id)
            .unwrap();
        self.book
            .signed_refund(
                id,
                &self.agreement.renter.keys(),
                &self.refund_signatures[k],
            )
            .unwrap()
    }

    fn renter_reclaim(&self, audit: u32, j: u32) -> Transaction {
        let lock = self.book.lock(audit, j).unwrap();
        let renter = &self.agreement.renter;
        let txid = self.candidate_txid(audit, j);
        self.terms()
            .reclaim(txid, &lock, &renter.claim, &renter.payout, CLAIM_FEE)
            .unwrap()
    }
}

fn held(candidates: &[SignedCandidate], audit: u32, j: u32) -> Option<Transaction> {
    candidates
        .iter()
        .find(|c| c.audit == audit && c.j == j)
        .map(|c| c.tx.clone())
}

/// Mines up to T_i − 1, where the beacon's candidate (taken from `holder`) is still
/// non-final; then at T_i it is accepted and mined. Returns j.
fn confirm_beacon_candidate(
    node: &BitcoinNode,
    contract: &Contract,
    audit: u32,
    holder: &[SignedCandidate],
) -> u32 {
    mine_to(node, contract.terms().audit_height(audit) - 1);
    let j = contract.beacon(node, audit);
    let tx = held(holder, audit, j).expect("the holder has the beacon's candidate");
    assert_eq!(
        verdict(node, &tx).as_deref(),
        Some("non-final"),
        "before T_{audit}"
    );
    node.mine(1);
    confirm(node, &tx);
    assert_eq!(contract.confirmed(node, audit), Some(j));
    j
}

/// The renter releases the confirmed candidate's opening and the farmer claims with x
/// from its own store; the claim is mined.
fn release_and_claim(node: &BitcoinNode, contract: &Contract, store: &Store, audit: u32) {
    let j = contract
        .confirmed(node, audit)
        .expect("a candidate confirmed");
    let secret = contract.release(audit, j);
    let claim = contract
        .claim(store, audit, j, &secret)
        .expect("the farmer answers from its data");
    confirm(node, &claim);
}

fn tip(node: &BitcoinNode) -> u32 {
    node.block_count() as u32
}

fn mine_to(node: &BitcoinNode, height: u32) {
    let tip = tip(node);
    assert!(tip <= height, "tip {tip} is already past {height}");
    if height > tip {
        node.mine(height - tip);
    }
}

fn verdict(node: &BitcoinNode, tx: &Transaction) -> Option<String> {
    mempool_verdicts(node, &[tx]).remove(0)
}

/// Broadcasts `tx`, mines a block and checks it confirmed.
fn confirm(node: &BitcoinNode, tx: &Transaction) {
    let txid =
        broadcast(node, tx).unwrap_or_else(|e| panic!("{} rejected: {e}", tx.compute_txid()));
    node.mine(1);
    assert_eq!(node.confirmations(&txid), 1, "{txid} is mined");
}

fn confirmations(node: &BitcoinNode, txid: &Txid) -> u64 {
    node.rpc("getrawtransaction", json!([txid.to_string(), true]))
        .ok()
        .and_then(|tx| tx.get("confirmations").and_then(|c| c.as_u64()))
        .unwrap_or(0)
}

/// What `script` holds in the UTXO set.
fn balance(node: &BitcoinNode, script: &ScriptBuf) -> Amount {
    let descriptor = format!("raw({})", script.to_hex_string());
    let scan = node.rpc_ok("scantxoutset", json!(["start", [descriptor]]));
    Amount::from_sat(btc_to_sat(&scan["total_amount"]))
}

fn assert_missing_inputs(node: &BitcoinNode, contract: &Contract, ids: &[RefundId]) {
    for id in ids {
        let reason = verdict(node, &contract.refund(*id));
        assert_eq!(reason.as_deref(), Some("missing-inputs"), "{id:?}");
    }
}

#[test]
fn audit_chain_honest_farmer_is_paid_for_every_audit() {
    let (mut rng, node, mut funder) = start(1);
    let file = random_file(&mut rng, SMALL_FILE);
    assert_eq!(file.len(), 10);
    let agreement = agree(&mut rng, &file, 4, Locks::Salted);
    let c = funded_contract(&node, &mut funder, &mut rng, agreement, &file);
    let farmer_holds = c.farmer_swap.signed_candidates(&c.book);
    let renter_holds = c.renter_swap.signed_candidates(&c.book);
    assert_eq!((farmer_holds.len(), renter_holds.len()), (16, 16));
    assert_eq!(farmer_holds, renter_holds);

    for audit in 0..4 {
        // The renter's tower broadcasts the beacon's candidate.
        confirm_beacon_candidate(&node, &c, audit, &renter_holds);
        release_and_claim(&node, &c, &file, audit);
    }
    let per_audit = AMOUNT - CANDIDATE_FEE - CLAIM_FEE;
    assert_eq!(balance(&node, &c.agreement.farmer.payout), per_audit * 4);

    // Past every refund's nLockTime, each refund is dead for lack of inputs.
    mine_to(&node, c.terms().refund_height(3));
    assert_missing_inputs(&node, &c, &c.book.refund_ids());
}

/// Seeds whose audit 1 keeps only candidates over segments no opening showed, so a farmer
/// that keeps just the opened segments cannot answer audit 1 whatever the beacon picks.
fn agreement_where_audit_one_was_never_opened() -> (StdRng, Store, Agreement) {
    (0..100)
        .map(|seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let file = random_file(&mut rng, LARGE_FILE);
            let agreement = agree(&mut rng, &file, 4, Locks::Salted);
            (rng, file, agreement)
        })
        .find(|(_, _, a)| {
            let opened = a.opened_segments();
            a.kept()[1]
                .iter()
                .all(|c| !opened.contains(&c.secret.segment_index))
        })
        .expect("a seed in 0..100")
}

#[test]
fn audit_chain_farmer_that_drops_the_file_is_refunded() {
    let (mut rng, file, agreement) = agreement_where_audit_one_was_never_opened();
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 2);
    let c = funded_contract(&node, &mut funder, &mut rng, agreement, &file);
    let holds = c.renter_swap.signed_candidates(&c.book);
    confirm_beacon_candidate(&node, &c, 0, &holds);
    release_and_claim(&node, &c, &file, 0);

    // The farmer keeps only the segments the openings showed it.
    let opened = c.agreement.opened_segments();
    let kept: Store = file
        .iter()
        .filter(|(i, _)| opened.contains(i))
        .map(|(i, s)| (*i, s.clone()))
        .collect();
    assert!(kept.len() <= 16 && kept.len() < file.len());
    for (j, candidate) in c.agreement.kept()[1].iter().enumerate() {
        let dropped = !kept.contains_key(&candidate.secret.segment_index);
        let answer = c.claim(&kept, 1, j as u32, &candidate.secret);
        assert_eq!(answer.is_err(), dropped, "candidate {j} of audit 1");
        assert!(
            dropped,
            "the seed was picked so that audit 1 was never opened"
        );
    }

    let j = confirm_beacon_candidate(&node, &c, 1, &holds);
    assert!(c.claim(&kept, 1, j, &c.release(1, j)).is_err());
    let refund = c.refund(RefundId::AfterCandidate(1, j));
    mine_to(&node, c.terms().refund_height(1) - 1);
    assert_eq!(verdict(&node, &refund).as_deref(), Some("non-final"));
    node.mine(1);
    let before = balance(&node, &c.agreement.renter.payout);
    confirm(&node, &refund);
    let after = balance(&node, &c.agreement.renter.payout);
    let expected = (AMOUNT - CANDIDATE_FEE) + AMOUNT * 2 - REFUND_FEE;
    assert_eq!(
        after - before,
        expected,
        "RF_1j returns A_1j:0, O_2 and O_3"
    );
    eprintln!("renter balance {before} -> {after} (+{expected})");
}

/// The seed's farmer: hash every segment once, match the locks it was shown, and keep
/// only the matched segments.
fn selective_farmer(file: &Store, locks: &[Vec<KeptLock>]) -> Store {
    let by_lock: HashMap<Lock, u64> = file
        .iter()
        .map(|(i, s)| (candidates::lock(&candidates::unsalted_preimage(s)), *i))
        .collect();
    locks
        .iter()
        .flatten()
        .filter_map(|lock| by_lock.get(&lock.0))
        .map(|i| (*i, file[i].clone()))
        .collect()
}

#[test]
fn audit_chain_unsalted_locks_let_a_selective_farmer_pass() {
    let (mut rng, node, mut funder) = start(3);
    let file = random_file(&mut rng, LARGE_FILE);
    let agreement = agree(&mut rng, &file, 3, Locks::Unsalted);
    let c = funded_contract(&node, &mut funder, &mut rng, agreement, &file);
    let store = selective_farmer(&file, &c.book.kept_locks);
    assert!(
        !store.is_empty() && store.len() <= 3 * KEPT,
        "{}",
        store.len()
    );
    eprintln!(
        "selective farmer keeps {} of {} segments",
        store.len(),
        file.len()
    );

    let holds = c.farmer_swap.signed_candidates(&c.book);
    for audit in 0..3 {
        confirm_beacon_candidate(&node, &c, audit, &holds);
        release_and_claim(&node, &c, &store, audit);
    }
    let per_audit = AMOUNT - CANDIDATE_FEE - CLAIM_FEE;
    assert_eq!(balance(&node, &c.agreement.farmer.payout), per_audit * 3);

    // Salted locks over the same file: the same strategy matches nothing and answers nothing.
    let salted = agree(&mut rng, &file, 3, Locks::Salted);
    let store = selective_farmer(&file, &salted.kept_locks());
    assert!(store.is_empty());
    for (audit, set) in salted.kept().iter().enumerate() {
        for candidate in set {
            let answer = Locks::Salted.preimage(&candidate.lock, &candidate.secret, &store);
            assert!(answer.is_err(), "audit {audit}");
        }
    }
}

/// The name predates the renter's stake (issue 15): the farmer now checks the openings
/// only once TX_A is confirmed, so a caught renter has paid the stake; its O_i come back
/// through RF_0 at T_0 + W.
#[test]
fn audit_chain_renter_with_bad_locks_is_caught_before_funds_move() {
    let (mut rng, node, mut funder) = start(4);
    let file = random_file(&mut rng, SMALL_FILE);
    let agreement = agree(&mut rng, &file, 2, Locks::HalfBad);
    let proposal = propose(&node, &mut funder, &mut rng, agreement);
    let Err(caught) = negotiate(&node, proposal, &file) else {
        panic!("the planted locks pass the farmer's check");
    };
    assert!(
        matches!(
            caught.error,
            OpeningError::Candidate {
                source: CandidateError::LockMismatch(_),
                ..
            }
        ),
        "{caught:?}"
    );
    // Money moved: TX_A is confirmed and its stake output is the farmer's.
    assert!(
        confirmations(&node, &caught.tx_a.compute_txid()) > 0,
        "TX_A mined"
    );
    assert_eq!(balance(&node, &caught.stake_script), caught.stake);
    assert_eq!(caught.stake, required_stake(AMOUNT, KEPT));
    // The renter gets every O_i back through RF_0 at T_0 + W, less the refund fee.
    let rf0 = caught.refund(0);
    mine_to(&node, caught.book.terms.refund_height(0) - 1);
    assert_eq!(verdict(&node, &rf0).as_deref(), Some("non-final"));
    node.mine(1);
    let payout = &caught.agreement.renter.payout;
    let before = balance(&node, payout);
    confirm(&node, &rf0);
    let gained = balance(&node, payout) - before;
    assert_eq!(gained, AMOUNT * 2 - REFUND_FEE, "RF_0 returns every O_i");
}

/// Who broadcasts which candidate.
type Racer<'a> = (u32, &'a [SignedCandidate]);

/// At T_i two different candidates of `audit` are broadcast: the first is accepted, the
/// second refused as a conflict; exactly the first is mined and the farmer claims it.
fn race(node: &BitcoinNode, c: &Contract, store: &Store, audit: u32, first: Racer, second: Racer) {
    mine_to(node, c.terms().audit_height(audit));
    let first_tx = held(first.1, audit, first.0).unwrap();
    let second_tx = held(second.1, audit, second.0).unwrap();
    assert_ne!(first_tx.compute_txid(), second_tx.compute_txid());
    broadcast(node, &first_tx).expect("the first candidate is accepted");
    let refused = broadcast(node, &second_tx).expect_err("the second conflicts");
    eprintln!("audit {audit}: the second candidate is refused: {refused}");
    // Same fee on the same O_i: under full RBF the second cannot replace the first.
    let second_txid = second_tx.compute_txid();
    let replacement = format!("insufficient fee, rejecting replacement {second_txid}");
    assert!(
        refused.contains("txn-mempool-conflict") || refused.starts_with(&replacement),
        "{refused}"
    );
    node.mine(1);
    assert_eq!(c.confirmed(node, audit), Some(first.0));
    assert_eq!(confirmations(node, &second_tx.compute_txid()), 0);
    let mempool = node.rpc_ok("getrawmempool", json!([]));
    assert_eq!(mempool.as_array().map(Vec::len), Some(0));
    release_and_claim(node, c, store, audit);
}

#[test]
fn audit_chain_race_either_candidate_completes_the_audit() {
    let (mut rng, node, mut funder) = start(5);
    let file = random_file(&mut rng, SMALL_FILE);
    let agreement = agree(&mut rng, &file, 2, Locks::Salted);
    let c = funded_contract(&node, &mut funder, &mut rng, agreement, &file);
    let renter = c.renter_swap.signed_candidates(&c.book);
    let farmer = c.farmer_swap.signed_candidates(&c.book);
    // The renter's tower takes the beacon's candidate; the farmer another one.
    mine_to(&node, c.terms().audit_height(0) - 1);
    let j = c.beacon(&node, 0);
    let other = (j + 1) % KEPT as u32;
    race(&node, &c, &file, 0, (j, &renter), (other, &farmer));
    mine_to(&node, c.terms().audit_height(1) - 1);
    let j = c.beacon(&node, 1);
    let other = (j + 1) % KEPT as u32;
    race(&node, &c, &file, 1, (other, &farmer), (j, &renter));
    let per_audit = AMOUNT - CANDIDATE_FEE - CLAIM_FEE;
    assert_eq!(balance(&node, &c.agreement.farmer.payout), per_audit * 2);
}

/// A contract whose swap stopped after half of its 16 steps (audits 0 and 1 swapped).
fn half_swapped(
    node: &BitcoinNode,
    funder: &mut Funder,
    rng: &mut StdRng,
    file: &Store,
) -> Contract {
    let agreement = agree(rng, file, 4, Locks::Salted);
    let proposal = propose(node, funder, rng, agreement);
    let mut c = negotiate(node, proposal, file).unwrap();
    c.swap(8);
    c
}

#[test]
fn audit_chain_swap_abort_leaves_both_sides_safe() {
    let (mut rng, node, mut funder) = start(6);
    let file = random_file(&mut rng, SMALL_FILE);

    // (a) The farmer stops after half: nobody races, the renter's RF_0 takes back all.
    let c = half_swapped(&node, &mut funder, &mut rng, &file);
    assert_eq!(c.renter_swap.signed_candidates(&c.book).len(), 8);
    let rf0 = c.refund(RefundId::Unraced(0));
    mine_to(&node, c.terms().refund_height(0) - 1);
    assert_eq!(verdict(&node, &rf0).as_deref(), Some("non-final"));
    node.mine(1);
    let before = balance(&node, &c.agreement.renter.payout);
    confirm(&node, &rf0);
    let gained = balance(&node, &c.agreement.renter.payout) - before;
    assert_eq!(gained, AMOUNT * 4 - REFUND_FEE, "RF_0 returns every O_i");

    // (b) The renter stops after half: the farmer's step-8 signature goes unanswered.
    let mut c = half_swapped(&node, &mut funder, &mut rng, &file);
    let farmer_keys = c.agreement.farmer.keys();
    let (step, _) = c.farmer_swap.next(&c.book, &farmer_keys).unwrap();
    assert_eq!(step, 8);
    let holds = c.farmer_swap.signed_candidates(&c.book);
    assert_eq!(holds.len(), 8);
    assert!(holds.iter().all(|h| h.audit < 2), "audits 0 and 1 only");
    for audit in 0..2 {
        confirm_beacon_candidate(&node, &c, audit, &holds);
        release_and_claim(&node, &c, &file, audit);
    }
    let per_audit = AMOUNT - CANDIDATE_FEE - CLAIM_FEE;
    assert_eq!(balance(&node, &c.agreement.farmer.payout), per_audit * 2);
    // The farmer holds nothing for audit 2; the renter's RF_2 takes back O_2 and O_3.
    let rf2 = c.refund(RefundId::Unraced(2));
    mine_to(&node, c.terms().refund_height(2) - 1);
    assert_eq!(verdict(&node, &rf2).as_deref(), Some("non-final"));
    node.mine(1);
    let before = balance(&node, &c.agreement.renter.payout);
    confirm(&node, &rf2);
    let gained = balance(&node, &c.agreement.renter.payout) - before;
    assert_eq!(gained, AMOUNT * 2 - REFUND_FEE);
}

#[test]
fn audit_chain_reclaim_when_refund_is_blocked() {
    let (mut rng, node, mut funder) = start(7);
    let file = random_file(&mut rng, SMALL_FILE);
    let agreement = agree(&mut rng, &file, 2, Locks::Salted);
    let c = funded_contract(&node, &mut funder, &mut rng, agreement, &file);
    let holds = c.farmer_swap.signed_candidates(&c.book);
    // Audit 0's candidate confirms at T_0 + 1 and the farmer never claims it.
    let j = confirm_beacon_candidate(&node, &c, 0, &holds);
    let reclaim = c.renter_reclaim(0, j);
    let refund = c.refund(RefundId::AfterCandidate(0, j));
    mine_to(&node, c.terms().refund_height(0) - 1);
    assert_eq!(verdict(&node, &reclaim).as_deref(), Some("non-BIP68-final"));
    node.mine(1);
    assert_eq!(verdict(&node, &reclaim), None, "older(W) has passed");
    assert_eq!(verdict(&node, &refund), None);
    // The renter stays offline; at T_1 audit 1's candidate spends O_1, which RF_0j needs.
    confirm_beacon_candidate(&node, &c, 1, &holds);
    release_and_claim(&node, &c, &file, 1);
    assert_eq!(verdict(&node, &refund).as_deref(), Some("missing-inputs"));
    let before = balance(&node, &c.agreement.renter.payout);
    confirm(&node, &reclaim);
    let gained = balance(&node, &c.agreement.renter.payout) - before;
    assert_eq!(gained, AMOUNT - CANDIDATE_FEE - CLAIM_FEE);
}
