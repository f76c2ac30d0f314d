//! Unit tests of groups (the beacon's choice among an audit's candidates), fallbacks and
//! the auditor's bookkeeping, on a real audit book's transactions (no node).

use super::auditor::{AuditOutcome, MerkleRecord, ReleaseDue, MAX_MERKLE_RECORDS};
use super::*;
use crate::audit::beacon::beacon_candidate;
use crate::audit::book::{AuditBook, KeptLock, RefundId};
use crate::audit::candidates::{self, CandidateSecret};
use crate::audit::transactions::AuditTerms;
use bitcoin::blockdata::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::SECP256K1;
use bitcoin::{Amount, CompactTarget, ScriptBuf, TxMerkleNode};
use rand::rngs::StdRng;
use rand::SeedableRng;

const ID: [u8; 32] = [5; 32];
const T0: u32 = 200;
const PERIOD: u32 = 10;
const W: u32 = 5;
const AUDITS: u32 = 3;
const KEPT: usize = 4;
const FEE: Amount = Amount::from_sat(500);

struct Audit {
    book: AuditBook,
    secrets: Vec<Vec<CandidateSecret>>,
    data: Vec<u8>,
    farmer_claim: SecretKey,
    renter_claim: SecretKey,
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_slice(&[byte; 32]).unwrap()
}

fn segment(data: &[u8], index: u64) -> &[u8] {
    let start = index as usize * 4096;
    &data[start..(start + 4096).min(data.len())]
}

fn audit() -> Audit {
    let (ra, fa, rc, fc) = (key(1), key(2), key(3), key(4));
    let terms = AuditTerms {
        contract_id: ID,
        renter_funding_key: ra.public_key(SECP256K1),
        farmer_funding_key: fa.public_key(SECP256K1),
        renter_claim_key: rc.public_key(SECP256K1),
        farmer_claim_key: fc.public_key(SECP256K1),
        first_audit_height: T0,
        period: PERIOD,
        claim_window: W as u16,
        audits: AUDITS,
        amount: Amount::from_sat(50_000),
        candidate_fee: Amount::from_sat(1_000),
        refund_fee: Amount::from_sat(2_000),
    };
    let data: Vec<u8> = (0..6 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let secrets: Vec<Vec<CandidateSecret>> = (0..AUDITS)
        .map(|_| candidates::choose_secrets(&mut rng, 7, KEPT))
        .collect();
    let kept_locks = secrets
        .iter()
        .map(|audit| {
            audit
                .iter()
                .map(|s| KeptLock(candidates::candidate(*s, segment(&data, s.segment_index)).lock))
                .collect()
        })
        .collect();
    let book = AuditBook {
        terms,
        funding_txid: Txid::from_byte_array([3; 32]),
        renter_destination: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([9; 20])),
        kept_locks,
        refund_anchor: None,
    };
    book.check().unwrap();
    Audit {
        book,
        secrets,
        data,
        farmer_claim: fc,
        renter_claim: rc,
    }
}

impl Audit {
    fn candidate(&self, i: u32, j: u32) -> Transaction {
        self.book.candidate(i, j).unwrap().tx
    }

    fn refund(&self, id: RefundId) -> Transaction {
        self.book.refund(id).unwrap().tx
    }

    fn reclaim(&self, i: u32, j: u32) -> Transaction {
        self.book.reclaim(i, j, &self.renter_claim, FEE).unwrap()
    }

    fn claim(&self, i: u32, j: u32) -> Transaction {
        let secret = self.secrets[i as usize][j as usize];
        let lock = self.book.lock(i, j).unwrap();
        let x =
            candidates::check_opening(&lock, &secret, segment(&self.data, secret.segment_index))
                .unwrap();
        let txid = self.candidate(i, j).compute_txid();
        let dest = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([8; 20]));
        self.book
            .terms
            .claim(txid, &lock, &x, &self.farmer_claim, &dest, FEE)
            .unwrap()
    }

    fn spec(&self) -> AuditorSpec {
        AuditorSpec {
            book: self.book.clone(),
            secrets: self.secrets.clone(),
            farmer_url: "http://127.0.0.1:9735".into(),
            root_c: crate::merkle::MerkleTree::from_data(&self.data).root(),
            length: self.data.len() as u64,
        }
    }

    /// What the renter's plugin registers with its own tower when it is the auditor.
    fn renter_registration(&self) -> Registration {
        let (audits, kept) = (self.book.terms.audits, self.book.kept_per_audit() as u32);
        let mut transactions = Vec::new();
        for i in 0..audits {
            for j in 0..kept {
                let mut p =
                    Presigned::new(format!("audit-{i}-candidate-{j}"), self.candidate(i, j));
                p.group = Some(i);
                transactions.push(p);
            }
        }
        for i in 0..audits {
            for j in 0..kept {
                let rf = self.refund(RefundId::AfterCandidate(i, j));
                transactions.push(Presigned::new(format!("audit-{i}-refund-after-{j}"), rf));
                let reclaim = self.reclaim(i, j);
                transactions.push(Presigned::new(format!("audit-{i}-reclaim-{j}"), reclaim));
            }
        }
        for i in 0..audits {
            let rf = self.refund(RefundId::Unraced(i));
            transactions.push(Presigned::new(format!("audit-{i}-refund"), rf));
        }
        Registration {
            id: ID,
            role: WatchRole::Renter,
            extract: None,
            transactions,
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: Some(self.spec()),
        }
    }
}

fn block_at(height: u32, fork: u32, txs: Vec<Transaction>) -> Block {
    Block {
        header: Header {
            version: BlockVersion::TWO,
            prev_blockhash: BlockHash::all_zeros(),
            merkle_root: TxMerkleNode::all_zeros(),
            time: fork,
            bits: CompactTarget::from_consensus(0),
            nonce: height,
        },
        txdata: txs,
    }
}

/// Connects empty blocks `from..=to`.
fn connect_empty(engine: &mut Engine, from: u32, to: u32) {
    for height in from..=to {
        engine.connect_block(&block_at(height, 0, vec![]), height);
    }
}

fn names(due: &[DueBroadcast]) -> Vec<String> {
    due.iter().map(|d| d.name.clone()).collect()
}

fn state(engine: &Engine, name: &str, tip: u32) -> TxState {
    super::tests::named_state(engine, &ID, name, tip)
}

fn beacon_j(hash: BlockHash) -> u32 {
    beacon_candidate(&ID, &hash.to_byte_array(), KEPT)
}

fn registered(a: &Audit) -> Engine {
    let mut engine = Engine::new();
    assert_eq!(
        engine.register(a.renter_registration()).unwrap(),
        Merge::Registered
    );
    engine
}

#[test]
fn a_group_broadcasts_only_the_beacons_choice() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 20, T0 - 1);
    assert!(engine.due(T0 - 1).is_empty(), "candidates wait for T_0");
    let j = beacon_j(block_at(T0 - 1, 0, vec![]).block_hash());
    assert_eq!(
        names(&engine.due(T0)),
        vec![format!("audit-0-candidate-{j}")]
    );
    let chosen = a.candidate(0, j).compute_txid();
    let other = (j + 1) % KEPT as u32;
    assert_eq!(
        state(&engine, &format!("audit-0-candidate-{other}"), T0),
        TxState::Alternative { chosen }
    );
    let report = engine.get(&ID).unwrap().audits_report(Some(T0)).unwrap();
    assert_eq!(report.audits[0].beacon, Some(j));
    assert_eq!(report.audits[0].outcome, AuditOutcome::Pending);
    assert_eq!(report.audits[1].outcome, AuditOutcome::Waiting);
}

#[test]
fn a_seen_member_wins_and_a_reorg_brings_back_the_beacons_choice() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 3, T0);
    let j = beacon_j(block_at(T0 - 1, 0, vec![]).block_hash());
    let k = (j + 1) % KEPT as u32;
    let (name_j, name_k) = (
        format!("audit-0-candidate-{j}"),
        format!("audit-0-candidate-{k}"),
    );
    // The farmer's side broadcast k: the tower stands behind it, not behind j.
    engine.observe(&a.candidate(0, k), None);
    assert_eq!(names(&engine.due(T0)), vec![name_k.clone()]);
    let chosen = a.candidate(0, k).compute_txid();
    assert_eq!(state(&engine, &name_j, T0), TxState::Alternative { chosen });
    // k confirms: every other member is superseded by the conflict on O_0.
    let b = block_at(T0 + 1, 0, vec![a.candidate(0, k)]);
    engine.connect_block(&b, T0 + 1);
    assert_eq!(
        state(&engine, &name_j, T0 + 1),
        TxState::Superseded { by: chosen }
    );
    assert_eq!(
        state(&engine, &name_k, T0 + 1),
        TxState::Confirmed { depth: 1 }
    );
    assert!(engine.due(T0 + 1).is_empty());
    // A reorg undoes it: back to the beacon's choice.
    engine.disconnect_block(&b, T0 + 1);
    assert_eq!(names(&engine.due(T0)), vec![name_j]);
}

#[test]
fn the_beacon_follows_a_reorg_of_its_block_and_a_late_start_asks_for_the_hash() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 1, T0);
    // Block T0 − 1 is replaced by another one.
    engine.disconnect_block(&block_at(T0, 0, vec![]), T0);
    engine.disconnect_block(&block_at(T0 - 1, 0, vec![]), T0 - 1);
    assert!(engine.due(T0 - 2).is_empty());
    let replacement = block_at(T0 - 1, 1, vec![]);
    engine.connect_block(&replacement, T0 - 1);
    engine.connect_block(&block_at(T0, 1, vec![]), T0);
    let j = beacon_j(replacement.block_hash());
    assert_eq!(
        names(&engine.due(T0)),
        vec![format!("audit-0-candidate-{j}")]
    );

    // A tower that never saw block T0 − 1 asks for it and nothing is due meanwhile.
    let mut late = registered(&a);
    assert_eq!(late.missing_block_hashes(T0), vec![T0 - 1]);
    assert_eq!(
        state(&late, "audit-0-candidate-0", T0),
        TxState::Waiting { height: None }
    );
    assert!(late.due(T0).is_empty());
    assert_eq!(
        late.note_block_hash(T0 - 1, replacement.block_hash()).len(),
        1
    );
    assert!(late.missing_block_hashes(T0).is_empty());
    assert_eq!(names(&late.due(T0)), vec![format!("audit-0-candidate-{j}")]);
}

#[test]
fn remembered_block_hashes_are_bounded_and_fill_late_registrations() {
    let a = audit();
    let mut engine = Engine::new();
    connect_empty(&mut engine, 1, T0 + 500);
    assert_eq!(engine.recent_hashes.len(), RECENT_BLOCK_HASHES as usize);
    // Registered long after T_0 − 1: that hash is asked for; T_2 − 1 is not reached.
    engine.register(a.renter_registration()).unwrap();
    assert_eq!(
        engine.missing_block_hashes(T0 + 500),
        vec![T0 - 1, T0 + PERIOD - 1, T0 + 2 * PERIOD - 1]
    );
    let mut fresh = Engine::new();
    connect_empty(&mut fresh, T0 - 5, T0 + 1);
    fresh.register(a.renter_registration()).unwrap();
    assert!(fresh.missing_block_hashes(T0 + 1).is_empty(), "from memory");
}

#[test]
fn rf_ij_goes_first_and_the_reclaim_only_once_rf_ij_is_refused() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 1, T0);
    let j = beacon_j(block_at(T0 - 1, 0, vec![]).block_hash());
    engine.connect_block(&block_at(T0 + 1, 0, vec![a.candidate(0, j)]), T0 + 1);
    let due_tip = T0 + W;
    let (rf, reclaim) = (
        format!("audit-0-refund-after-{j}"),
        format!("audit-0-reclaim-{j}"),
    );
    assert!(engine.due(due_tip - 1).is_empty(), "the claim window runs");
    assert_eq!(state(&engine, &reclaim, due_tip), TxState::Due);
    assert_eq!(names(&engine.due(due_tip)), vec![rf.clone()]);
    let watch = engine.watch_mut(&ID).unwrap();
    watch.record_intent(&rf, due_tip);
    watch.record_broadcast(&rf, due_tip, None);
    assert!(engine.due(due_tip).is_empty(), "RF_ij holds the output");
    let watch = engine.watch_mut(&ID).unwrap();
    watch.record_broadcast(
        &rf,
        due_tip + 1,
        Some("bad-txns-inputs-missingorspent".into()),
    );
    assert_eq!(names(&engine.due(due_tip + 2)), vec![rf, reclaim]);
}

#[test]
fn a_failed_merkle_audit_withholds_later_candidates_and_rf_i_refunds() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 5, T0 - 2);
    let watch = engine.watch_mut(&ID).unwrap();
    watch.record_merkle_audit(MerkleRecord {
        height: T0 - 2,
        block_hash: BlockHash::all_zeros(),
        k: 16,
        ok: false,
        error: Some("connection refused".into()),
        unreachable: false,
    });
    connect_empty(&mut engine, T0 - 1, T0 + W);
    assert_eq!(state(&engine, "audit-0-candidate-0", T0), TxState::Withheld);
    assert_eq!(
        names(&engine.due(T0 + W)),
        vec!["audit-0-refund".to_string()]
    );
    let report = engine.get(&ID).unwrap().audits_report(Some(T0)).unwrap();
    assert!(report.audits_failed && report.audits[0].withheld);
    assert_eq!(report.audits[0].outcome, AuditOutcome::Withheld);
    assert_eq!(report.merkle.failed, 1);
    // RF_0 confirms: every audit is refunded and the candidates are superseded.
    let rf0 = a.refund(RefundId::Unraced(0));
    engine.connect_block(&block_at(T0 + W + 1, 0, vec![rf0.clone()]), T0 + W + 1);
    let tip = T0 + W + 10;
    assert_eq!(
        state(&engine, "audit-1-candidate-0", tip),
        TxState::Superseded {
            by: rf0.compute_txid()
        }
    );
    let report = engine.get(&ID).unwrap().audits_report(Some(tip)).unwrap();
    for audit in &report.audits {
        assert_eq!(audit.outcome, AuditOutcome::Refunded, "{audit:?}");
        assert_eq!(audit.settled_by, Some(rf0.compute_txid()));
    }
    assert!(engine.get(&ID).unwrap().settled(tip));
}

#[test]
fn a_release_is_due_only_for_a_confirmed_unspent_candidate() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 1, T0);
    let candidate = a.candidate(0, 2);
    let due = ReleaseDue {
        audit: 0,
        candidate: 2,
        candidate_txid: candidate.compute_txid(),
    };
    engine.observe(&candidate, None);
    let watch = engine.get(&ID).unwrap();
    assert!(watch.releases_due().is_empty(), "not confirmed: no release");
    assert!(watch.reveal_request(&due).is_none());
    engine.connect_block(&block_at(T0 + 1, 0, vec![candidate.clone()]), T0 + 1);
    let watch = engine.watch_mut(&ID).unwrap();
    assert_eq!(watch.releases_due(), vec![due.clone()]);
    let request = watch.reveal_request(&due).unwrap();
    assert_eq!(request.secret, a.secrets[0][2]);
    assert_eq!(request.contract_id, ID);
    watch.record_release_attempt(&due, T0 + 1);
    watch.record_release_outcome(&due, T0 + 1, Err("HTTP 500".into()));
    assert_eq!(watch.releases_due().len(), 1, "retried until accepted");
    let claim = a.claim(0, 2);
    watch.record_release_attempt(&due, T0 + 2);
    watch.record_release_outcome(&due, T0 + 2, Ok(claim.compute_txid()));
    assert!(watch.releases_due().is_empty());
    let report = watch.audits_report(Some(T0 + 2)).unwrap();
    let release = report.audits[0].release.clone().unwrap();
    assert_eq!(
        (release.attempts, release.released_height),
        (2, Some(T0 + 2))
    );
    assert_eq!(report.audits[0].outcome, AuditOutcome::Pending);
    // The claim reveals x: paid once it confirms.
    engine.connect_block(&block_at(T0 + 2, 0, vec![claim.clone()]), T0 + 2);
    let report = engine
        .get(&ID)
        .unwrap()
        .audits_report(Some(T0 + 2))
        .unwrap();
    assert_eq!(report.audits[0].outcome, AuditOutcome::Paid);
    assert_eq!(report.audits[0].settled_by, Some(claim.compute_txid()));
}

#[test]
fn a_reclaim_is_a_refund_and_a_spent_output_needs_no_release() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 1, T0);
    engine.connect_block(&block_at(T0 + 1, 0, vec![a.candidate(0, 1)]), T0 + 1);
    let reclaim = a.reclaim(0, 1);
    engine.observe(&reclaim, None);
    assert!(engine.get(&ID).unwrap().releases_due().is_empty());
    engine.connect_block(&block_at(T0 + 6, 0, vec![reclaim.clone()]), T0 + 6);
    let report = engine
        .get(&ID)
        .unwrap()
        .audits_report(Some(T0 + 6))
        .unwrap();
    assert_eq!(report.audits[0].outcome, AuditOutcome::Refunded);
    assert_eq!(report.audits[1].outcome, AuditOutcome::Waiting);
}

#[test]
fn an_auditor_only_watch_follows_candidates_it_has_no_transaction_for() {
    let a = audit();
    let mut registration = a.renter_registration();
    registration.transactions.clear();
    let mut engine = Engine::new();
    engine.register(registration).unwrap();
    let candidate = a.candidate(1, 3);
    let height = T0 + PERIOD + 1;
    assert_eq!(
        engine
            .connect_block(&block_at(height, 0, vec![candidate.clone()]), height)
            .len(),
        1
    );
    let watch = engine.get(&ID).unwrap();
    assert_eq!(watch.releases_due().len(), 1);
    let claim = a.claim(1, 3);
    engine.connect_block(&block_at(height + 1, 0, vec![claim.clone()]), height + 1);
    let report = engine
        .get(&ID)
        .unwrap()
        .audits_report(Some(height + 1))
        .unwrap();
    assert_eq!(report.audits[1].outcome, AuditOutcome::Paid);
    assert!(engine.get(&ID).unwrap().releases_due().is_empty());
}

#[test]
fn merkle_audits_are_due_every_n_blocks_while_the_contract_lives_and_kept_bounded() {
    let a = audit();
    let mut watch = Watch::new(a.renter_registration());
    assert!(!watch.merkle_audit_due(100, 0), "off");
    assert!(watch.merkle_audit_due(100, 3));
    let record = |height, ok| MerkleRecord {
        height,
        block_hash: BlockHash::all_zeros(),
        k: 16,
        ok,
        error: (!ok).then(|| "x".repeat(1000)),
        unreachable: false,
    };
    watch.record_merkle_audit(record(100, true));
    assert!(!watch.merkle_audit_due(102, 3));
    assert!(watch.merkle_audit_due(103, 3));
    let last_refund = T0 + 2 * PERIOD + W;
    assert!(!watch.merkle_audit_due(last_refund + 1, 3), "over");
    for height in 0..150 {
        watch.record_merkle_audit(record(200 + height, height != 70));
    }
    let audit = watch.audit.as_ref().unwrap();
    assert_eq!(audit.merkle.len(), MAX_MERKLE_RECORDS);
    let failure = audit.failure.as_ref().unwrap();
    assert_eq!(failure.height, 270);
    assert!(
        failure.error.as_ref().unwrap().len() < 400,
        "errors are cut"
    );
    assert_eq!(watch.groups_withheld_above, Some(270));
}

#[test]
fn a_farmer_tower_reports_its_claim_as_paid() {
    let a = audit();
    let mut registration = a.renter_registration();
    registration.role = WatchRole::Farmer;
    registration.auditor = None;
    registration.transactions.retain(|p| p.group.is_some());
    let mut engine = Engine::new();
    engine.register(registration.clone()).unwrap();
    connect_empty(&mut engine, T0 - 1, T0);
    engine.connect_block(&block_at(T0 + 1, 0, vec![a.candidate(0, 0)]), T0 + 1);
    let claim = a.claim(0, 0);
    registration.transactions = vec![Presigned::new("audit-0-claim-0", claim.clone())];
    assert_eq!(engine.register(registration).unwrap(), Merge::Updated);
    assert_eq!(
        names(&engine.due(T0 + 1)),
        vec!["audit-0-claim-0".to_string()]
    );
    engine.connect_block(&block_at(T0 + 2, 0, vec![claim]), T0 + 2);
    let report = engine
        .get(&ID)
        .unwrap()
        .audits_report(Some(T0 + 2))
        .unwrap();
    assert!(!report.auditor);
    assert_eq!(report.audits[0].outcome, AuditOutcome::Paid);
    assert_eq!(report.audits[0].candidate.as_ref().unwrap().j, 0);
}

#[test]
fn auditor_specs_are_checked() {
    let a = audit();
    let good = a.renter_registration();
    good.check().unwrap();
    let with = |change: &dyn Fn(&mut AuditorSpec)| {
        let mut r = good.clone();
        change(r.auditor.as_mut().unwrap());
        r.check()
    };
    let refused = |e: Result<(), RegistrationError>, what: &str| match e {
        Err(RegistrationError::BadAuditor(why)) => assert!(why.contains(what), "{why}"),
        other => panic!("{what}: {other:?}"),
    };
    refused(
        with(&|s| {
            s.secrets.pop();
        }),
        "secrets",
    );
    refused(
        with(&|s| {
            s.secrets[1].pop();
        }),
        "secrets",
    );
    refused(
        with(&|s| s.book.terms.contract_id = [6; 32]),
        "contract's id",
    );
    refused(with(&|s| s.farmer_url = "ftp://farmer".into()), "http");
    refused(with(&|s| s.farmer_url = "http://".into()), "host");
    refused(with(&|s| s.farmer_url = "http://a b".into()), "whitespace");
    refused(
        with(&|s| s.secrets[0][0].segment_index = 99),
        "out of range",
    );
    refused(with(&|s| s.length = 0), "length");
    refused(
        with(&|s| s.book.kept_locks[2].pop().map(|_| ()).unwrap()),
        "same number",
    );
    // Another spec for the same contract is a conflict and changes nothing.
    let mut on_record = good.clone();
    let mut other = good.clone();
    other.auditor.as_mut().unwrap().farmer_url = "http://elsewhere:1".into();
    assert!(matches!(
        on_record.merge(&other),
        Err(RegistrationError::Conflict { .. })
    ));
    assert_eq!(on_record, good);
}

#[test]
fn groups_must_share_a_block_height_locktime() {
    let a = audit();
    let mut r = a.renter_registration();
    r.transactions[1].tx.lock_time = LockTime::from_consensus(T0 + 1);
    assert!(matches!(
        r.check(),
        Err(RegistrationError::BadGroup { group: 0, .. })
    ));
    let mut r = a.renter_registration();
    r.transactions[0].tx.lock_time = LockTime::ZERO;
    assert!(matches!(r.check(), Err(RegistrationError::BadGroup { .. })));
    // Regrouping a registered transaction is a conflict.
    let mut on_record = a.renter_registration();
    let mut regrouped = on_record.clone();
    regrouped.transactions[0].group = Some(9);
    assert!(on_record.merge(&regrouped).is_err());
}

#[test]
fn a_big_audit_registration_fits_the_limits_and_the_totals_are_capped() {
    let a = audit();
    let r = a.renter_registration();
    let bytes: usize = r.transactions.iter().map(|p| p.tx.total_size()).sum();
    // N = 3, m = 4 here; the heaviest part, RF_ij, grows with N²·m.
    assert!(bytes < 40_000, "{bytes}");
    let mut big = r.clone();
    let heavy = big.transactions.last().unwrap().tx.clone();
    let mut heavy = heavy;
    heavy.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 90_000]);
    let copies = registration::MAX_REGISTRATION_TX_BYTES / 90_000 + 1;
    big.transactions = (0..copies)
        .map(|i| Presigned::new(format!("heavy-{i}"), heavy.clone()))
        .collect();
    assert!(matches!(
        big.check(),
        Err(RegistrationError::TooLarge { .. })
    ));
    let mut many = r.clone();
    many.transactions = (0..registration::MAX_TRANSACTIONS + 1)
        .map(|i| Presigned::new(format!("t{i}"), heavy.clone()))
        .collect();
    assert!(matches!(
        many.check(),
        Err(RegistrationError::TooMany { .. })
    ));
}

/// A fake 2-of-2 witness of realistic size (the refunds are unsigned in these tests).
fn with_multisig_witnesses(mut tx: Transaction) -> Transaction {
    for input in tx.input.iter_mut() {
        input.witness =
            bitcoin::Witness::from_slice(&[vec![], vec![1u8; 72], vec![1u8; 72], vec![2u8; 80]]);
    }
    tx
}

#[test]
fn fifty_two_audits_of_eight_candidates_fit_the_limits() {
    let mut a = audit();
    let (n, m) = (52u32, 8usize);
    a.book.terms.audits = n;
    let mut rng = StdRng::seed_from_u64(9);
    a.secrets = (0..n)
        .map(|_| candidates::choose_secrets(&mut rng, 7, m))
        .collect();
    a.book.kept_locks = a
        .secrets
        .iter()
        .map(|audit| {
            let lock = |s: &CandidateSecret| {
                KeptLock(candidates::candidate(*s, segment(&a.data, s.segment_index)).lock)
            };
            audit.iter().map(lock).collect()
        })
        .collect();
    let mut r = a.renter_registration();
    for p in r
        .transactions
        .iter_mut()
        .filter(|p| p.name.contains("refund"))
    {
        p.tx = with_multisig_witnesses(p.tx.clone());
    }
    assert_eq!(r.transactions.len(), 52 * 8 * 3 + 52);
    let bytes: usize = r.transactions.iter().map(|p| p.tx.total_size()).sum();
    let json = serde_json::to_vec(&r).unwrap();
    assert!(
        bytes < registration::MAX_REGISTRATION_TX_BYTES / 2,
        "{bytes}"
    );
    assert!(
        json.len() < registration::MAX_REGISTRATION_JSON_BYTES / 2,
        "{}",
        json.len()
    );
    let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let mut engine = Engine::new();
    engine
        .register(Registration::from_json(&parsed).unwrap())
        .unwrap();
    connect_empty(&mut engine, T0 - 1, T0);
    assert_eq!(engine.due(T0).len(), 1, "one candidate of audit 0");
}

#[test]
fn after_a_failed_merkle_audit_no_later_salt_is_released() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 1, T0 + PERIOD);
    let watch = engine.watch_mut(&ID).unwrap();
    watch.record_merkle_audit(MerkleRecord {
        height: T0 + 2,
        block_hash: BlockHash::all_zeros(),
        k: 16,
        ok: false,
        error: Some("proof does not lead to the root".into()),
        unreachable: false,
    });
    // The farmer races audit 1's candidate in itself; it confirms, but its salt stays
    // with the auditor, so the renter's RF_1j takes it after W.
    let candidate = a.candidate(1, 0);
    engine.connect_block(
        &block_at(T0 + PERIOD + 1, 0, vec![candidate]),
        T0 + PERIOD + 1,
    );
    let watch = engine.get(&ID).unwrap();
    assert!(
        watch.releases_due().is_empty(),
        "no release after the failure"
    );
}

#[test]
fn an_unreachable_farmer_is_retried_with_back_off_and_fails_only_after_a_whole_window() {
    let a = audit();
    let mut watch = Watch::new(a.renter_registration());
    let record = |height, ok, unreachable| MerkleRecord {
        height,
        block_hash: BlockHash::all_zeros(),
        k: 16,
        ok,
        error: (!ok).then(|| "cannot reach the farmer".to_string()),
        unreachable,
    };
    let every = 10;
    watch.record_merkle_audit(record(100, true, false));
    assert!(watch.merkle_audit_due(110, every));
    // Down: tried again 1, 2, 4 blocks later, never a failure while the window runs.
    watch.record_merkle_audit(record(110, false, true));
    assert!(watch.merkle_audit_due(111, every));
    watch.record_merkle_audit(record(111, false, true));
    assert!(!watch.merkle_audit_due(112, every));
    assert!(watch.merkle_audit_due(113, every));
    watch.record_merkle_audit(record(113, false, true));
    assert!(!watch.merkle_audit_due(116, every));
    assert!(watch.merkle_audit_due(117, every));
    assert!(watch.audit.as_ref().unwrap().failure.is_none());
    // Back before W ran out: the run ends, the schedule is the usual one again.
    watch.record_merkle_audit(record(117, true, false));
    assert!(!watch.merkle_audit_due(118, every));
    let report = watch.audits_report(Some(117)).unwrap();
    assert_eq!(report.merkle.unreachable, 3);
    assert_eq!(report.merkle.failed, 0);
    assert!(!report.audits_failed);
    // Down for a whole claim window W: that is a failure.
    for height in [130, 131, 133] {
        watch.record_merkle_audit(record(height, false, true));
        assert!(watch.audit.as_ref().unwrap().failure.is_none(), "{height}");
    }
    watch.record_merkle_audit(record(130 + W, false, true));
    let failure = watch.audit.as_ref().unwrap().failure.clone().unwrap();
    assert!(failure.error.unwrap().contains("unreachable"));
    // A verified wrong answer fails at once.
    let mut other = Watch::new(a.renter_registration());
    other.record_merkle_audit(record(100, false, false));
    assert!(other.audit.as_ref().unwrap().failure.is_some());
}

#[test]
fn an_anchored_audit_refund_left_unconfirmed_is_bumped_by_the_tower() {
    let own = cpfp::own_script(&key(9));
    let mut a = audit();
    a.book.refund_anchor = Some(own.clone());
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 1, T0);
    engine.connect_block(&block_at(T0 + 1, 0, vec![a.candidate(0, 1)]), T0 + 1);
    connect_empty(&mut engine, T0 + 2, T0 + W);
    // RF_01 is valid in block T0 + 1 + W: due at tip T0 + W, not stuck yet.
    let (tip, name) = (T0 + W, "audit-0-refund-after-1");
    let actions = engine.actions(tip, Some(&own));
    assert_eq!(names(&actions.broadcasts), [name]);
    assert!(actions.bumps.is_empty());
    engine
        .watch_mut(&ID)
        .unwrap()
        .record_broadcast(name, tip, None);
    let watch = engine.get(&ID).unwrap();
    assert!(watch.stuck(tip + STUCK_BLOCKS - 1, &own).is_empty());
    let stuck: Vec<&str> = watch
        .stuck(tip + STUCK_BLOCKS, &own)
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(stuck, [name], "only the accepted refund, not its fallback");
    // The reclaim carries the anchor too; a tower of another key bumps nothing.
    assert_eq!(a.reclaim(0, 1).output[1].script_pubkey, own);
    let stranger = cpfp::own_script(&key(10));
    assert!(watch.stuck(tip + STUCK_BLOCKS, &stranger).is_empty());
}

/// Every audit of `a` paid: at T_i + 1 the beacon-independent candidate j = i % KEPT
/// confirms and at T_i + 2 the farmer's claim; the salt of each is released first.
/// Returns the height of the last claim.
fn pay_every_audit(a: &Audit, engine: &mut Engine) -> u32 {
    let mut tip = 0;
    for i in 0..AUDITS {
        let t = a.book.terms.audit_height(i);
        let j = i % KEPT as u32;
        // A losing member seen in a mempool and never confirmed blocks nothing.
        engine.observe(&a.candidate(i, (j + 1) % KEPT as u32), None);
        engine.connect_block(&block_at(t + 1, 0, vec![a.candidate(i, j)]), t + 1);
        let due = ReleaseDue {
            audit: i,
            candidate: j,
            candidate_txid: a.candidate(i, j).compute_txid(),
        };
        let claim = a.claim(i, j);
        let watch = engine.watch_mut(&ID).unwrap();
        watch.record_release_attempt(&due, t + 1);
        watch.record_release_outcome(&due, t + 1, Ok(claim.compute_txid()));
        engine.connect_block(&block_at(t + 2, 0, vec![claim]), t + 2);
        tip = t + 2;
    }
    tip
}

fn passed_merkle_audit(height: u32) -> MerkleRecord {
    MerkleRecord {
        height,
        block_hash: BlockHash::all_zeros(),
        k: 16,
        ok: true,
        error: None,
        unreachable: false,
    }
}

#[test]
fn an_audit_contract_is_compacted_once_every_audit_ended_and_keeps_its_audits_report() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 1, T0);
    for height in [T0 - 5, T0 - 2] {
        let watch = engine.watch_mut(&ID).unwrap();
        watch.record_merkle_audit(passed_merkle_audit(height));
    }
    let first = a.book.terms.audit_height(0);
    engine.connect_block(&block_at(first + 1, 0, vec![a.candidate(0, 0)]), first + 1);
    let watch = engine.get(&ID).unwrap();
    assert_eq!(watch.compact_height(first + 200), None, "audits ahead");
    let last = pay_every_audit(&a, &mut engine);
    let watch = engine.get(&ID).unwrap();
    assert!(watch.audits_settled());
    assert_eq!(watch.compact_height(last + 10), Some(last + COMPACT_DEPTH));
    assert_eq!(watch.wake(last + 10), Some(last + COMPACT_DEPTH));
    assert!(engine
        .actions(last + COMPACT_DEPTH - 1, None)
        .compact
        .is_empty());
    assert_eq!(engine.actions(last + COMPACT_DEPTH, None).compact, vec![ID]);

    let watch = engine.get(&ID).unwrap();
    let tip = last + COMPACT_DEPTH;
    let summary = watch.summary(tip);
    assert!(summary.auditor);
    let report = summary.audits.clone().unwrap();
    let mut before = watch.audits_report(Some(tip)).unwrap();
    assert_eq!(before.merkle.records.len(), 2);
    before.merkle.records.clear();
    assert_eq!(
        report, before,
        "the report as it stood, without the records"
    );
    assert_eq!(report.merkle.passed, 2, "the counts stay");
    for (i, row) in report.audits.iter().enumerate() {
        let j = i as u32 % KEPT as u32;
        assert_eq!(row.outcome, AuditOutcome::Paid);
        assert_eq!(row.settled_by, Some(a.claim(i as u32, j).compute_txid()));
        assert_eq!(
            row.release.as_ref().unwrap().released_height,
            Some(row.height + 1)
        );
    }
    assert_eq!(
        summary.outcomes.len(),
        watch.registration.transactions.len()
    );
    // Stored as one JSON line, well under the watch (the transactions' names, txids and
    // final states are most of it), without any secret, and read back whole.
    let line = serde_json::to_string(&summary).unwrap();
    let whole = serde_json::to_string(watch).unwrap();
    assert!(
        line.len() * 2 < whole.len(),
        "{} bytes vs {}",
        line.len(),
        whole.len()
    );
    assert!(!line.contains(&hex::encode(a.secrets[0][0].salt)));
    assert_eq!(
        serde_json::from_str::<WatchSummary>(&line).unwrap(),
        summary
    );
}

#[test]
fn an_auditor_only_watch_waits_for_its_audits_not_for_transactions() {
    let a = audit();
    let mut registration = a.renter_registration();
    registration.transactions.clear();
    let mut engine = Engine::new();
    engine.register(registration).unwrap();
    let watch = engine.get(&ID).unwrap();
    assert!(watch.settled(T0 + 500), "no transaction of its own");
    assert_eq!(watch.compact_height(T0 + 500), None, "its audits are ahead");
    let first = a.book.terms.audit_height(0);
    engine.connect_block(&block_at(first + 1, 0, vec![a.candidate(0, 0)]), first + 1);
    let watch = engine.get(&ID).unwrap();
    assert_eq!(
        watch.wake(first + 1),
        Some(first + 2),
        "a salt release is due"
    );
    let last = pay_every_audit(&a, &mut engine);
    let summary = engine.get(&ID).unwrap().summary(last + COMPACT_DEPTH);
    assert!(engine.get(&ID).unwrap().compactable(last + COMPACT_DEPTH));
    assert!(summary.outcomes.is_empty());
    let report = summary.audits.unwrap();
    assert!(report.auditor && !report.audits_failed);
    assert!(report
        .audits
        .iter()
        .all(|r| r.outcome == AuditOutcome::Paid));
}

#[test]
fn a_stored_audit_contract_is_woken_for_its_candidates_and_merkle_audits_and_gets_its_beacon() {
    let a = audit();
    let mut engine = registered(&a);
    engine.set_merkle_every(4);
    engine.actions(T0 - 30, None);
    // Only the index is kept: the next Merkle audit is due at once, then 4 blocks on.
    let record = engine.index_record(&ID, T0 - 30).unwrap();
    assert_eq!(record.wake, Some(T0 - 29));
    engine
        .watch_mut(&ID)
        .unwrap()
        .record_merkle_audit(passed_merkle_audit(T0 - 29));
    let record = engine.index_record(&ID, T0 - 29).unwrap();
    assert_eq!(record.wake, Some(T0 - 25));
    let stored = engine.get(&ID).unwrap().clone();
    let mut fresh = Engine::new();
    fresh.set_merkle_every(0);
    let mut record = IndexRecord::of(&stored, T0 - 20);
    assert_eq!(
        record.wake,
        Some(T0),
        "without Merkle audits: its candidates' T_0"
    );
    fresh.restore(&record);
    fresh.evict();
    connect_empty(&mut fresh, T0 - 20, T0);
    assert!(
        fresh.get(&ID).is_none(),
        "not loaded by blocks that do not touch it"
    );
    assert_eq!(fresh.wanted_at(T0), BTreeSet::from([ID]));
    assert!(fresh.page_in(stored.clone()));
    let j = beacon_j(block_at(T0 - 1, 0, vec![]).block_hash());
    assert_eq!(
        names(&fresh.due(T0)),
        vec![format!("audit-0-candidate-{j}")],
        "the beacon's hash was handed over at page-in"
    );
    fresh.evict();
    assert!(fresh.get(&ID).is_none(), "audit contracts are evicted too");
    // A record written by an earlier version (pinned, evaluated every block) is due at once.
    record.pinned = true;
    record.wake = None;
    let mut legacy = Engine::new();
    legacy.restore(&record);
    assert_eq!(legacy.wanted_at(0), BTreeSet::from([ID]));
}

#[test]
fn a_beacon_hash_disconnected_while_the_watch_was_stored_is_forgotten_at_page_in() {
    let a = audit();
    let mut engine = registered(&a);
    connect_empty(&mut engine, T0 - 3, T0 - 1);
    let stored = engine.get(&ID).unwrap().clone();
    assert!(stored.beacon_hash(T0 - 1).is_some());
    engine.evict();
    engine.disconnect_block(&block_at(T0 - 1, 0, vec![]), T0 - 1);
    assert!(engine.page_in(stored.clone()));
    assert_eq!(engine.get(&ID).unwrap().beacon_hash(T0 - 1), None);
    engine.evict();
    let fork = block_at(T0 - 1, 1, vec![]);
    engine.connect_block(&fork, T0 - 1);
    assert!(engine.page_in(stored));
    assert_eq!(
        engine.get(&ID).unwrap().beacon_hash(T0 - 1),
        Some(fork.block_hash())
    );
}
