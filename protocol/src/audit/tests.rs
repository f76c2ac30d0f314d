//! Unit tests of the audit contract's pure parts: the whole setup in memory, and each refusal.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{SecretKey, SECP256K1};
use bitcoin::{Amount, ScriptBuf, Txid};
use miniscript::policy::Concrete;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::str::FromStr;

use super::book::{AuditBook, RefundId};
use super::candidates::{self, Candidate, Lock};
use super::coin_toss;
use super::opening::{self, OpeningError};
use super::swap::{FarmerSwap, RenterSwap, SwapError};
use super::transactions::{AuditTerms, AuditTxError, Signer, SigningKeys, Spent};

struct Party {
    funding: SecretKey,
    claim: SecretKey,
}

impl Party {
    fn keys(&self, with_claim: bool) -> SigningKeys {
        SigningKeys {
            funding: self.funding,
            claim: with_claim.then_some(self.claim),
        }
    }
}

fn party(rng: &mut StdRng) -> Party {
    Party {
        funding: SecretKey::new(rng),
        claim: SecretKey::new(rng),
    }
}

fn terms(renter: &Party, farmer: &Party, audits: u32) -> AuditTerms {
    AuditTerms {
        contract_id: [7; 32],
        renter_funding_key: renter.funding.public_key(SECP256K1),
        farmer_funding_key: farmer.funding.public_key(SECP256K1),
        renter_claim_key: renter.claim.public_key(SECP256K1),
        farmer_claim_key: farmer.claim.public_key(SECP256K1),
        first_audit_height: 200,
        period: 10,
        claim_window: 5,
        audits,
        amount: Amount::from_sat(50_000),
        candidate_fee: Amount::from_sat(1_000),
        refund_fee: Amount::from_sat(2_000),
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn segment(data: &[u8], index: u64) -> Vec<u8> {
    let start = index as usize * 4096;
    data[start..(start + 4096).min(data.len())].to_vec()
}

fn plan(rng: &mut StdRng, data: &[u8], audits: usize, per_audit: usize) -> Vec<Vec<Candidate>> {
    let count = (data.len() as u64).div_ceil(4096);
    (0..audits)
        .map(|_| {
            candidates::choose_secrets(rng, count, per_audit)
                .into_iter()
                .map(|s| candidates::candidate(s, &segment(data, s.segment_index)))
                .collect()
        })
        .collect()
}

fn locks(plan: &[Vec<Candidate>]) -> Vec<Vec<Lock>> {
    plan.iter()
        .map(|a| a.iter().map(|c| c.lock).collect())
        .collect()
}

fn toss(plan: &[Vec<Candidate>], rng: &mut StdRng) -> [u8; 32] {
    let (mut nf, mut nr) = ([0u8; 32], [0u8; 32]);
    rng.fill_bytes(&mut nf);
    rng.fill_bytes(&mut nr);
    let commitment = coin_toss::commit(&nf);
    coin_toss::check_reveal(&commitment, &nf).unwrap();
    coin_toss::seed(&[7; 32], &coin_toss::locks_digest(&locks(plan)), &nf, &nr)
}

struct Setup {
    renter: Party,
    farmer: Party,
    book: AuditBook,
}

fn setup(audits: u32) -> Setup {
    let mut rng = StdRng::seed_from_u64(audits as u64);
    let (renter, farmer) = (party(&mut rng), party(&mut rng));
    let file = data(10 * 4096 + 5);
    let plan = plan(&mut rng, &file, audits as usize, 4);
    let seed = toss(&plan, &mut rng);
    let openings = opening::openings(&plan, &seed);
    opening::check_openings(&locks(&plan), &seed, &openings, 11, |i| segment(&file, i)).unwrap();
    let book = AuditBook {
        terms: terms(&renter, &farmer, audits),
        funding_txid: Txid::from_byte_array([3; 32]),
        renter_destination: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([9; 20])),
        kept_locks: opening::kept_locks(&locks(&plan), &seed),
        refund_anchor: None,
    };
    book.check().unwrap();
    Setup {
        renter,
        farmer,
        book,
    }
}

#[test]
fn the_candidate_script_is_what_miniscript_compiles_from_the_policy() {
    let s = setup(1);
    let t = s.book.terms;
    let lock = s.book.lock(0, 0).unwrap();
    let h = bitcoin::hashes::hash160::Hash::from_byte_array(lock);
    let policy = format!(
        "or(and(pk({}),hash160({h})),and(pk({}),older({})))",
        bitcoin::PublicKey::new(t.farmer_claim_key),
        bitcoin::PublicKey::new(t.renter_claim_key),
        t.claim_window
    );
    let compiled = Concrete::<bitcoin::PublicKey>::from_str(&policy)
        .unwrap()
        .compile::<miniscript::Segwitv0>()
        .unwrap();
    let ours = t.candidate_descriptor(&lock).unwrap();
    assert_eq!(
        ours.to_string().split('#').next().unwrap(),
        format!("wsh({compiled})")
    );
}

#[test]
fn terms_are_checked() {
    let s = setup(2);
    let mut t = s.book.terms;
    t.claim_window = 10;
    assert!(matches!(t.check(), Err(AuditTxError::BadTerms(_))));
    let mut t = s.book.terms;
    t.audits = 0;
    assert!(t.check().is_err());
    let mut t = s.book.terms;
    t.candidate_fee = t.amount;
    assert!(t.check().is_err());
    let mut t = s.book.terms;
    t.first_audit_height = 499_999_990;
    assert!(t.check().is_err());
}

#[test]
fn refund_shapes_spend_the_right_outputs() {
    let s = setup(3);
    let rf1 = s.book.refund(RefundId::Unraced(1)).unwrap();
    assert_eq!(rf1.spends, vec![Spent::Funding(1), Spent::Funding(2)]);
    assert_eq!(rf1.tx.lock_time.to_consensus_u32(), 215);
    assert_eq!(rf1.tx.output[0].value, Amount::from_sat(98_000));
    let rf01 = s.book.refund(RefundId::AfterCandidate(0, 1)).unwrap();
    let candidate = s.book.candidate(0, 1).unwrap();
    assert_eq!(
        rf01.tx.input[0].previous_output.txid,
        candidate.tx.compute_txid()
    );
    assert_eq!(rf01.tx.input[0].sequence.0, 5);
    assert_eq!(rf01.tx.input.len(), 3);
    assert_eq!(candidate.tx.lock_time.to_consensus_u32(), 200);
}

#[test]
fn the_renter_verifies_every_refund_signature() {
    let s = setup(2);
    let mut sigs = s
        .book
        .farmer_refund_signatures(&s.book.refund_ids(), &s.farmer.keys(false))
        .unwrap();
    s.book
        .verify_farmer_refund_signatures(&s.book.refund_ids(), &sigs)
        .unwrap();
    sigs.swap(0, 1);
    assert!(s
        .book
        .verify_farmer_refund_signatures(&s.book.refund_ids(), &sigs)
        .is_err());
    sigs.pop();
    assert!(matches!(
        s.book
            .verify_farmer_refund_signatures(&s.book.refund_ids(), &sigs),
        Err(AuditTxError::SignatureCount { .. })
    ));
}

#[test]
fn the_swap_runs_one_candidate_at_a_time_farmer_first() {
    let s = setup(2);
    let (mut renter, mut farmer) = (RenterSwap::new(), FarmerSwap::new());
    let rkeys = s.renter.keys(true);
    let fkeys = s.farmer.keys(false);
    assert_eq!(
        farmer.receive(&s.book, 0, dummy_sig()),
        Err(SwapError::Waiting(0))
    );
    while !farmer.complete(&s.book) {
        let (step, fsig) = farmer.next(&s.book, &fkeys).unwrap();
        assert_eq!(farmer.next(&s.book, &fkeys).unwrap(), (step, fsig));
        let before = renter.clone();
        assert!(matches!(
            renter.receive(&s.book, &rkeys, step + 1, fsig),
            Err(SwapError::OutOfOrder { .. })
        ));
        assert!(renter.receive(&s.book, &rkeys, step, dummy_sig()).is_err());
        assert_eq!(renter, before);
        let rsig = renter.receive(&s.book, &rkeys, step, fsig).unwrap();
        assert!(farmer.receive(&s.book, step, fsig).is_err());
        farmer.receive(&s.book, step, rsig).unwrap();
    }
    assert_eq!(renter.expecting(&s.book), None);
    assert_eq!(farmer.next(&s.book, &fkeys), Err(SwapError::Complete));
    assert_eq!(renter.signed_candidates(&s.book).len(), 4);
    assert_eq!(farmer.signed_candidates(&s.book).len(), 4);
}

fn dummy_sig() -> bitcoin::secp256k1::ecdsa::Signature {
    let key = SecretKey::from_slice(&[1; 32]).unwrap();
    SECP256K1.sign_ecdsa(&bitcoin::secp256k1::Message::from_digest([0; 32]), &key)
}

#[test]
fn a_renter_planting_bad_locks_is_caught_by_the_opening() {
    let mut rng = StdRng::seed_from_u64(11);
    let file = data(8 * 4096);
    let mut caught = 0;
    for _ in 0..40 {
        let mut plan = plan(&mut rng, &file, 1, 16);
        // Half of the locks are for segments the file does not contain.
        for c in plan[0].iter_mut().take(8) {
            *c = candidates::candidate(c.secret, &[0xEE; 4096]);
        }
        let seed = toss(&plan, &mut rng);
        let openings = opening::openings(&plan, &seed);
        let verdict =
            opening::check_openings(&locks(&plan), &seed, &openings, 8, |i| segment(&file, i));
        if matches!(verdict, Err(OpeningError::Candidate { .. })) {
            caught += 1;
        }
    }
    // Escaping needs all 8 bad locks in the unopened half: 1/C(16,8) = 1/12870.
    assert_eq!(caught, 40);
}

#[test]
fn openings_must_be_the_tossed_positions() {
    let mut rng = StdRng::seed_from_u64(12);
    let file = data(4 * 4096);
    let plan = plan(&mut rng, &file, 2, 4);
    let seed = toss(&plan, &mut rng);
    let mut openings = opening::openings(&plan, &seed);
    openings[0].position = (openings[0].position + 1) % 4;
    let verdict =
        opening::check_openings(&locks(&plan), &seed, &openings, 4, |i| segment(&file, i));
    assert_eq!(verdict, Err(OpeningError::WrongPositions));
    let odd = vec![vec![[0u8; 20]; 3]];
    assert_eq!(
        opening::check_shape(&odd),
        Err(OpeningError::BadCandidateCount(0))
    );
}

#[test]
fn claims_and_reclaims_need_the_right_keys() {
    let s = setup(1);
    let lock = s.book.lock(0, 0).unwrap();
    let txid = s.book.candidate(0, 0).unwrap().tx.compute_txid();
    let dest = s.book.renter_destination.clone();
    let fee = Amount::from_sat(500);
    assert!(s
        .book
        .terms
        .claim(txid, &lock, &[0; 32], &s.renter.claim, &dest, fee)
        .is_err());
    // A wrong preimage leaves the hash path unsatisfiable.
    assert!(s
        .book
        .terms
        .claim(txid, &lock, &[0; 32], &s.farmer.claim, &dest, fee)
        .is_err());
    let reclaim = s
        .book
        .terms
        .reclaim(txid, &lock, &s.renter.claim, &dest, fee)
        .unwrap();
    assert_eq!(reclaim.input[0].sequence.0, 5);
    assert!(s
        .book
        .terms
        .sign(
            &s.book.candidate(0, 0).unwrap(),
            Signer::Farmer,
            &s.renter.keys(false)
        )
        .is_err());
}

#[test]
fn anchored_refunds_pay_the_tower_a_bumpable_output_from_the_renters_share() {
    use super::transactions::REFUND_ANCHOR_VALUE;
    let plain = setup(2);
    let anchor = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([5; 20]));
    let book = AuditBook {
        refund_anchor: Some(anchor.clone()),
        ..plain.book.clone()
    };
    book.check().unwrap();
    let farmer_sigs = book
        .farmer_refund_signatures(&book.refund_ids(), &plain.farmer.keys(false))
        .unwrap();
    book.verify_farmer_refund_signatures(&book.refund_ids(), &farmer_sigs)
        .unwrap();
    // The plain book's signatures do not cover the anchored refunds.
    let plain_sigs = plain
        .book
        .farmer_refund_signatures(&plain.book.refund_ids(), &plain.farmer.keys(false))
        .unwrap();
    assert!(book
        .verify_farmer_refund_signatures(&book.refund_ids(), &plain_sigs)
        .is_err());
    for (k, id) in book.refund_ids().into_iter().enumerate() {
        let tx = book
            .signed_refund(id, &plain.renter.keys(true), &farmer_sigs[k])
            .unwrap();
        let without = plain.book.refund(id).unwrap().tx;
        assert_eq!(tx.output.len(), 2, "{id:?}");
        assert_eq!(tx.output[1].script_pubkey, anchor);
        assert_eq!(tx.output[1].value, REFUND_ANCHOR_VALUE);
        assert_eq!(
            tx.output[0].value + REFUND_ANCHOR_VALUE,
            without.output[0].value,
            "the anchor comes out of the renter's refund, the fee is unchanged"
        );
        assert_eq!(tx.lock_time, without.lock_time);
        assert_eq!(tx.input.len(), without.input.len());
    }
    let reclaim = book
        .reclaim(0, 1, &plain.renter.claim, Amount::from_sat(1_000))
        .unwrap();
    assert_eq!(reclaim.output[1].script_pubkey, anchor);
    assert_eq!(reclaim.input[0].sequence.0, 5);
    assert!(book
        .reclaim(0, 1, &plain.farmer.claim, Amount::from_sat(1_000))
        .is_err());
    let bad = AuditBook {
        refund_anchor: Some(ScriptBuf::new_op_return([1, 2])),
        ..plain.book.clone()
    };
    assert!(matches!(bad.check(), Err(AuditTxError::BadTerms(_))));
}

#[test]
fn a_book_without_an_anchor_reads_and_writes_as_before() {
    let s = setup(1);
    let json = serde_json::to_value(&s.book).unwrap();
    assert!(json.get("refund_anchor").is_none());
    let back: AuditBook = serde_json::from_value(json).unwrap();
    assert_eq!(back, s.book);
    let anchored = AuditBook {
        refund_anchor: Some(s.book.renter_destination.clone()),
        ..s.book.clone()
    };
    let json = serde_json::to_value(&anchored).unwrap();
    assert_eq!(serde_json::from_value::<AuditBook>(json).unwrap(), anchored);
}

/// The market's outcome classifier on real, fully signed audit transactions: the
/// candidate, the farmer's claim, the renter's reclaim, RF_i and RF_ij.
mod lease_outcomes {
    use super::*;
    use crate::audit::book::RefundId;
    use crate::audit::swap::{FarmerSwap, RenterSwap, SignedCandidate};
    use crate::market::outcome::{classify_spend, Count, LeaseOutput, SpendOutcome};

    /// Setup plus every fully signed candidate and the farmer's refund signatures.
    fn signed(
        audits: u32,
    ) -> (
        Setup,
        Vec<SignedCandidate>,
        Vec<Vec<bitcoin::secp256k1::ecdsa::Signature>>,
    ) {
        let s = setup(audits);
        let (mut renter, mut farmer) = (RenterSwap::new(), FarmerSwap::new());
        let (rkeys, fkeys) = (s.renter.keys(true), s.farmer.keys(false));
        while !farmer.complete(&s.book) {
            let (step, fsig) = farmer.next(&s.book, &fkeys).unwrap();
            let rsig = renter.receive(&s.book, &rkeys, step, fsig).unwrap();
            farmer.receive(&s.book, step, rsig).unwrap();
        }
        let refund_sigs = s
            .book
            .farmer_refund_signatures(&s.book.refund_ids(), &fkeys)
            .unwrap();
        let candidates = renter.signed_candidates(&s.book);
        (s, candidates, refund_sigs)
    }

    fn refund_sigs_for(
        s: &Setup,
        all: &[Vec<bitcoin::secp256k1::ecdsa::Signature>],
        id: RefundId,
    ) -> Vec<bitcoin::secp256k1::ecdsa::Signature> {
        let index = s.book.refund_ids().iter().position(|r| *r == id).unwrap();
        all[index].clone()
    }

    #[test]
    fn a_candidate_then_the_farmers_claim_is_a_passed_audit() {
        let (s, candidates, _) = signed(2);
        let a = candidates.iter().find(|c| c.audit == 1).unwrap();
        let mined = classify_spend(LeaseOutput::AuditFunding { audit: 1 }, &a.tx, 0);
        let next = bitcoin::OutPoint::new(a.tx.compute_txid(), 0);
        assert_eq!(mined, SpendOutcome::CandidateMined { audit: 1, next });
        assert_eq!(
            mined.follow(),
            Some((next, LeaseOutput::Candidate { audit: 1 }))
        );
        assert_eq!(mined.count(), None);

        // The claim needs x_ij; rebuild the plan's preimage from the same seeded rng.
        let lock = s.book.lock(1, a.j).unwrap();
        let x = preimage_for(&lock);
        let dest = s.book.renter_destination.clone();
        let claim = s
            .book
            .terms
            .claim(
                next.txid,
                &lock,
                &x,
                &s.farmer.claim,
                &dest,
                Amount::from_sat(500),
            )
            .unwrap();
        let passed = classify_spend(LeaseOutput::Candidate { audit: 1 }, &claim, 0);
        assert_eq!(passed, SpendOutcome::AuditPassed { audit: 1 });
        assert_eq!(passed.count(), Some(Count::AuditPassed));
    }

    #[test]
    fn a_reclaim_or_rf_ij_is_a_failed_audit_and_sweeps_later_outputs_without_counting() {
        let (s, candidates, sigs) = signed(3);
        let a = candidates.iter().find(|c| c.audit == 0).unwrap();
        let reclaim = s
            .book
            .reclaim(0, a.j, &s.renter.claim, Amount::from_sat(500))
            .unwrap();
        let failed = classify_spend(LeaseOutput::Candidate { audit: 0 }, &reclaim, 0);
        assert_eq!(failed, SpendOutcome::AuditFailed { audit: 0 });
        assert_eq!(failed.count(), Some(Count::AuditFailed));

        let id = RefundId::AfterCandidate(0, a.j);
        let rf = s
            .book
            .signed_refund(id, &s.renter.keys(true), &refund_sigs_for(&s, &sigs, id))
            .unwrap();
        assert_eq!(
            classify_spend(LeaseOutput::Candidate { audit: 0 }, &rf, 0),
            SpendOutcome::AuditFailed { audit: 0 }
        );
        for (input, audit) in [(1, 1), (2, 2)] {
            let swept = classify_spend(LeaseOutput::AuditFunding { audit }, &rf, input);
            assert_eq!(swept, SpendOutcome::SweptByRefund { audit });
            assert_eq!(swept.count(), None);
        }
    }

    #[test]
    fn rf_i_fails_audit_i_once_and_the_renters_own_branch_counts_nothing() {
        let (s, _, sigs) = signed(3);
        for audit in [0, 1] {
            let id = RefundId::Unraced(audit);
            let rf = s
                .book
                .signed_refund(id, &s.renter.keys(true), &refund_sigs_for(&s, &sigs, id))
                .unwrap();
            // Miniscript spends O_i at T_i + W through the cheaper renter-alone branch.
            assert_eq!(
                classify_spend(LeaseOutput::AuditFunding { audit }, &rf, 0),
                SpendOutcome::RenterAlone
            );
            let failed = classify_spend(LeaseOutput::AuditFunding { audit: audit + 1 }, &rf, 1);
            assert_eq!(failed, SpendOutcome::AuditFailed { audit });
            for later in audit + 2..3 {
                let input = (later - audit) as usize;
                assert_eq!(
                    classify_spend(LeaseOutput::AuditFunding { audit: later }, &rf, input),
                    SpendOutcome::SweptByRefund { audit: later }
                );
            }
        }
        // RF_{N-1} is one input through the renter's branch: nothing the renter could not
        // do alone, so nothing is counted.
        let id = RefundId::Unraced(2);
        let last = s
            .book
            .signed_refund(id, &s.renter.keys(true), &refund_sigs_for(&s, &sigs, id))
            .unwrap();
        let outcome = classify_spend(LeaseOutput::AuditFunding { audit: 2 }, &last, 0);
        assert_eq!(outcome, SpendOutcome::RenterAlone);
        assert_eq!(outcome.count(), None);
    }

    /// x_ij for `lock`: the setup's plan is deterministic, so redraw it and find the lock.
    fn preimage_for(lock: &Lock) -> [u8; 32] {
        for audits in 1..=3u64 {
            let mut rng = StdRng::seed_from_u64(audits);
            let (_, _) = (party(&mut rng), party(&mut rng));
            let file = data(10 * 4096 + 5);
            let plan = plan(&mut rng, &file, audits as usize, 4);
            for c in plan.iter().flatten() {
                let x =
                    candidates::preimage(&c.secret.salt, &segment(&file, c.secret.segment_index));
                if candidates::lock(&x) == *lock {
                    return x;
                }
            }
        }
        panic!("no preimage for the lock");
    }
}
