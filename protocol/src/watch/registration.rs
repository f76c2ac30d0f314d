//! What a plugin hands its watchtower per contract (PROTOCOL.md 6): the outpoint whose
//! spend reveals f, the pre-signed transactions to broadcast when valid, and the txids to
//! watch; parsed from hostile JSON with hard limits, and merged idempotently.

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::secp256k1::PublicKey;
use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use serde::{Deserialize, Serialize};

/// Most pre-signed transactions one registration may carry.
pub const MAX_TRANSACTIONS: usize = 16;
/// Most extra txids one registration may watch.
pub const MAX_WATCH_TXIDS: usize = 16;
/// Largest pre-signed transaction accepted (bitcoind's standard weight limit / 4).
pub const MAX_TX_BYTES: usize = 100_000;
/// Longest transaction name.
pub const MAX_NAME_LEN: usize = 64;

/// Which side of the contract the registering plugin plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchRole {
    Renter,
    Farmer,
}

/// How to recover f from the transaction that spends TX1's output (PROTOCOL.md 3.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractSpec {
    pub tx1_outpoint: OutPoint,
    pub farmer_key: PublicKey,
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    pub tx1_script_pubkey: ScriptBuf,
}

/// A pre-signed transaction the tower broadcasts as soon as it is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presigned {
    pub name: String,
    #[serde(with = "tx_hex")]
    pub tx: Transaction,
    /// Alternatives: of the transactions sharing a group (an audit's candidates, which all
    /// spend the same output) the tower broadcasts only one, the beacon's choice
    /// (PROTOCOL.md 5), in the group's registration order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
}

impl Presigned {
    /// A transaction broadcast on its own (no group).
    pub fn new(name: impl Into<String>, tx: Transaction) -> Self {
        Presigned {
            name: name.into(),
            tx,
            group: None,
        }
    }
}

/// What an auditor needs to run a contract's audits (PROTOCOL.md 5): the audit book, the
/// secret (index, salt) of every kept candidate, and where and what to challenge.
/// Only the auditor's tower gets one; it holds the secrets encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditorSpec {
    pub book: crate::audit::book::AuditBook,
    /// Per audit, the secrets of its kept candidates, in the book's kept-lock order.
    pub secrets: Vec<Vec<crate::audit::candidates::CandidateSecret>>,
    /// The farmer's peer endpoint base URL (e.g. `http://127.0.0.1:9735`).
    pub farmer_url: String,
    /// root_C and length of the stored ciphertext, for off-chain Merkle audits.
    #[serde(with = "hex::serde")]
    pub root_c: [u8; 32],
    pub length: u64,
}

/// One contract as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(with = "hex::serde")]
    pub id: [u8; 32],
    pub role: WatchRole,
    #[serde(default)]
    pub extract: Option<ExtractSpec>,
    #[serde(default)]
    pub transactions: Vec<Presigned>,
    #[serde(default)]
    pub watch_txids: Vec<Txid>,
    /// Where the tower looks back for events that happened before the registration.
    #[serde(default)]
    pub rescan_from_height: Option<u32>,
    /// Present when this tower is the contract's auditor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auditor: Option<AuditorSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("invalid registration: {0}")]
    Malformed(String),
    #[error("too many {what}: {count} (at most {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("transaction {0:?}: {1}")]
    BadTransaction(String, String),
    #[error("registration {id} conflicts with the one on record: {what}")]
    Conflict { id: String, what: String },
}

/// What a registration did to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    Registered,
    Updated,
    Unchanged,
}

impl Registration {
    /// Parses and checks a registration from untrusted JSON.
    pub fn from_json(value: &serde_json::Value) -> Result<Registration, RegistrationError> {
        let registration: Registration = serde_json::from_value(value.clone())
            .map_err(|e| RegistrationError::Malformed(e.to_string()))?;
        registration.check()?;
        Ok(registration)
    }

    /// The limits and the consistency every registration must meet.
    pub fn check(&self) -> Result<(), RegistrationError> {
        limit("transactions", self.transactions.len(), MAX_TRANSACTIONS)?;
        limit("watched txids", self.watch_txids.len(), MAX_WATCH_TXIDS)?;
        if self.extract.is_none() && self.transactions.is_empty() && self.watch_txids.is_empty() {
            return Err(RegistrationError::Malformed(
                "nothing to watch: give extract, transactions or watch_txids".into(),
            ));
        }
        for (i, p) in self.transactions.iter().enumerate() {
            check_presigned(p)?;
            if self.transactions[..i].iter().any(|q| q.name == p.name) {
                return Err(RegistrationError::Malformed(format!(
                    "transaction name {:?} is used twice",
                    p.name
                )));
            }
        }
        Ok(())
    }

    /// Folds `newer` (same id) into this registration: new transactions and txids are
    /// added; anything that contradicts the record is refused and changes nothing.
    pub fn merge(&mut self, newer: &Registration) -> Result<Merge, RegistrationError> {
        let conflict = |what: &str| RegistrationError::Conflict {
            id: hex::encode(self.id),
            what: what.to_string(),
        };
        if newer.role != self.role {
            return Err(conflict("another role"));
        }
        let mut merged = self.clone();
        match (&merged.extract, &newer.extract) {
            (Some(old), Some(new)) if old != new => return Err(conflict("another TX1")),
            (None, Some(new)) => merged.extract = Some(new.clone()),
            _ => {}
        }
        for p in &newer.transactions {
            match merged.transactions.iter().find(|q| q.name == p.name) {
                Some(q) if q.tx != p.tx => {
                    return Err(conflict(&format!("another transaction named {:?}", p.name)))
                }
                Some(_) => {}
                None => merged.transactions.push(p.clone()),
            }
        }
        for txid in &newer.watch_txids {
            if !merged.watch_txids.contains(txid) {
                merged.watch_txids.push(*txid);
            }
        }
        merged.rescan_from_height = match (self.rescan_from_height, newer.rescan_from_height) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        merged.check()?;
        if merged == *self {
            return Ok(Merge::Unchanged);
        }
        *self = merged;
        Ok(Merge::Updated)
    }
}

fn limit(what: &'static str, count: usize, max: usize) -> Result<(), RegistrationError> {
    if count > max {
        return Err(RegistrationError::TooMany { what, count, max });
    }
    Ok(())
}

fn check_presigned(p: &Presigned) -> Result<(), RegistrationError> {
    let bad = |why: &str| RegistrationError::BadTransaction(p.name.clone(), why.to_string());
    if p.name.is_empty() || p.name.len() > MAX_NAME_LEN {
        return Err(bad("the name must be 1 to 64 characters"));
    }
    if p.tx.input.is_empty() || p.tx.output.is_empty() {
        return Err(bad("no inputs or no outputs"));
    }
    if bitcoin::consensus::encode::serialize(&p.tx).len() > MAX_TX_BYTES {
        return Err(bad("larger than 100,000 bytes"));
    }
    Ok(())
}

/// Transactions as consensus hex in JSON, the way bitcoind's RPC shows them.
pub mod tx_hex {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tx: &Transaction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serialize_hex(tx))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Transaction, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() > 2 * MAX_TX_BYTES {
            return Err(serde::de::Error::custom(
                "transaction larger than 100,000 bytes",
            ));
        }
        deserialize_hex(&text)
            .map_err(|e| serde::de::Error::custom(format!("bad transaction hex: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{Amount, TxIn, TxOut};
    use serde_json::json;

    fn tx(lock: u32) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::from_consensus(lock),
            input: vec![TxIn::default()],
            output: vec![TxOut {
                value: Amount::from_sat(1000),
                script_pubkey: ScriptBuf::new(),
            }],
        }
    }

    fn registration(names: &[(&str, u32)]) -> Registration {
        Registration {
            id: [1; 32],
            role: WatchRole::Renter,
            extract: None,
            transactions: names
                .iter()
                .map(|(n, l)| Presigned::new(*n, tx(*l)))
                .collect(),
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: None,
        }
    }

    #[test]
    fn json_round_trip_and_limits() {
        let r = registration(&[("tx1-refund", 500)]);
        let value = serde_json::to_value(&r).unwrap();
        assert_eq!(Registration::from_json(&value).unwrap(), r);
        for bad in [
            json!({}),
            json!({"id": "00", "role": "renter", "watch_txids": []}),
            json!({"id": hex::encode([1u8; 32]), "role": "thief", "watch_txids": []}),
            json!({"id": hex::encode([1u8; 32]), "role": "renter"}),
            json!({"id": hex::encode([1u8; 32]), "role": "renter", "transactions": [{"name": "x", "tx": "zz"}]}),
        ] {
            assert!(Registration::from_json(&bad).is_err(), "{bad}");
        }
        let many: Vec<(String, u32)> = (0..17).map(|i| (format!("t{i}"), i)).collect();
        let names: Vec<(&str, u32)> = many.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        assert!(matches!(
            registration(&names).check(),
            Err(RegistrationError::TooMany { .. })
        ));
        assert!(registration(&[("a", 1), ("a", 2)]).check().is_err());
    }

    #[test]
    fn merging_adds_but_never_replaces() {
        let mut on_record = registration(&[("tx1-refund", 500)]);
        let same = on_record.clone();
        assert_eq!(on_record.merge(&same).unwrap(), Merge::Unchanged);
        let more = registration(&[("tx1-refund", 500), ("tx2-refund", 0)]);
        assert_eq!(on_record.merge(&more).unwrap(), Merge::Updated);
        assert_eq!(on_record.transactions.len(), 2);
        let before = on_record.clone();
        let replaced = registration(&[("tx1-refund", 501)]);
        assert!(matches!(
            on_record.merge(&replaced),
            Err(RegistrationError::Conflict { .. })
        ));
        let mut farmer = registration(&[]);
        farmer.role = WatchRole::Farmer;
        assert!(on_record.merge(&farmer).is_err());
        assert_eq!(on_record, before);
    }
}
