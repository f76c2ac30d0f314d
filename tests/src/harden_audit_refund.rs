//! Fee-bumpable audit refunds (issue 15): an [`AuditContract`] whose book names the renter's
//! tower as its refund anchor, so every RF_i, RF_ij and reclaim carries an output paying the
//! tower's key, which the tower spends in a CPFP child when the refund is stuck.
//!
//! The fixture funds TX_A with the plain book; the anchor changes only the refunds, so the
//! farmer signs the anchored book's refunds here as it does at set-up.

use bitcoin::secp256k1::ecdsa;
use bitcoin::{ScriptBuf, Transaction};
use dstore_protocol::audit::book::{AuditBook, RefundId};
use dstore_protocol::watch::{Presigned, Registration, WatchRole};
use serde_json::json;

use crate::audit_fixture::{AuditContract, CLAIM_FEE};
use crate::TowerProcess;

/// The script of the tower's own key (`wallet_address` of `tower-getinfo`).
pub fn tower_script(tower: &TowerProcess) -> ScriptBuf {
    let info = tower.call_ok("tower-getinfo", json!([]));
    let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> = info["wallet_address"]
        .as_str()
        .expect("wallet_address")
        .parse()
        .expect("an address");
    address.assume_checked().script_pubkey()
}

/// The contract's refunds re-agreed with an anchor, as both sides hold them.
pub struct AnchoredRefunds {
    pub book: AuditBook,
    farmer_signatures: Vec<Vec<ecdsa::Signature>>,
}

impl AnchoredRefunds {
    /// The farmer signs every refund of `contract`'s book with `anchor`; the renter checks.
    pub fn new(contract: &AuditContract, anchor: ScriptBuf) -> Self {
        let book = AuditBook {
            refund_anchor: Some(anchor),
            ..contract.book.clone()
        };
        book.check().expect("the anchored book");
        let ids = book.refund_ids();
        let farmer_signatures = book
            .farmer_refund_signatures(&ids, &contract.farmer.keys())
            .expect("the farmer signs");
        book.verify_farmer_refund_signatures(&ids, &farmer_signatures)
            .expect("the renter checks");
        AnchoredRefunds {
            book,
            farmer_signatures,
        }
    }

    /// The refund `id`, signed by both.
    pub fn refund(&self, contract: &AuditContract, id: RefundId) -> Transaction {
        let k = self
            .book
            .refund_ids()
            .iter()
            .position(|r| *r == id)
            .expect("a refund of the book");
        self.book
            .signed_refund(id, &contract.renter.keys(), &self.farmer_signatures[k])
            .expect("signed refund")
    }

    /// What the renter's plugin registers with its tower, as
    /// [`AuditContract::renter_registration`] but with the anchored refunds and without
    /// an auditor: no salt is ever released, so the farmer never claims.
    pub fn renter_registration(&self, contract: &AuditContract) -> Registration {
        let mut transactions = contract.grouped_candidates();
        let terms = contract.terms();
        for i in 0..terms.audits {
            for j in 0..contract.kept() {
                let rf = self.refund(contract, RefundId::AfterCandidate(i, j));
                transactions.push(Presigned::new(format!("audit-{i}-refund-after-{j}"), rf));
                let reclaim = self
                    .book
                    .reclaim(i, j, &contract.renter.claim, CLAIM_FEE)
                    .expect("reclaim");
                transactions.push(Presigned::new(format!("audit-{i}-reclaim-{j}"), reclaim));
            }
        }
        for i in 0..terms.audits {
            let rf = self.refund(contract, RefundId::Unraced(i));
            transactions.push(Presigned::new(format!("audit-{i}-refund"), rf));
        }
        Registration {
            id: contract.contract_id(),
            role: WatchRole::Renter,
            extract: None,
            transactions,
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: None,
        }
    }
}
