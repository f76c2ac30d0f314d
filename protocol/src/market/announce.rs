//! Farmer announcements: the OP_RETURN that links a farmer's identity, its bond output in the
//! same transaction and its peer URL, and the parser the scanner runs on every transaction.
//!
//! Payload (one data push after OP_RETURN, at most 80 bytes):
//! `b"DSA" ‖ 0x01 (version) ‖ I (32, x-only) ‖ L (u32 LE) ‖ bond_vout (u8) ‖ url`,
//! url 1..=39 bytes of printable ASCII starting `http://` or `https://` (4+32+4+1+39 = 80).
//! The bond is output `bond_vout` of the same transaction and must pay exactly
//! `bond_script_pubkey(I, L)`, so a forger cannot point at coins it does not control.

use bitcoin::opcodes::all::OP_RETURN;
use bitcoin::script::{Instruction, PushBytesBuf};
use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{Amount, OutPoint, Script, ScriptBuf, Transaction};

use super::bond::bond_script_pubkey;
use super::MarketError;

/// First bytes of an announcement payload.
pub const ANNOUNCE_MAGIC: &[u8; 3] = b"DSA";
/// The only payload version this code writes and reads.
pub const ANNOUNCE_VERSION: u8 = 1;
/// Most bytes of a peer URL (in announcements and adverts).
pub const MAX_URL_BYTES: usize = 39;
/// Most bytes of an OP_RETURN payload the market writes.
pub const MAX_PAYLOAD_BYTES: usize = 80;
/// Bytes before the URL: magic, version, identity, locktime, bond_vout.
const HEADER_BYTES: usize = 3 + 1 + 32 + 4 + 1;

/// What a farmer announces: its identity, its bond's locktime and output index, its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub identity: XOnlyPublicKey,
    pub locktime: u32,
    pub bond_vout: u8,
    pub peer_url: String,
}

/// An announcement found in a transaction, with the bond output it names checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAnnouncement {
    pub announcement: Announcement,
    pub bond: OutPoint,
    pub bond_value: Amount,
}

/// Checks a peer URL: 1..=39 bytes, `http://` or `https://` and a non-empty rest, printable
/// ASCII only (no spaces, no control characters).
pub fn check_peer_url(url: &str) -> Result<(), MarketError> {
    let bad = |why: &str| Err(MarketError::BadUrl(format!("{why}: {:?}", truncated(url))));
    if url.is_empty() || url.len() > MAX_URL_BYTES {
        return bad(&format!(
            "must be 1..={MAX_URL_BYTES} bytes, is {}",
            url.len()
        ));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("must be printable ASCII without spaces");
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(()),
        Some(_) => bad("has no host"),
        None => bad("must start with http:// or https://"),
    }
}

/// The first 64 characters of a hostile string, for an error message.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

impl Announcement {
    /// The payload bytes (without the OP_RETURN and push opcodes).
    pub fn payload(&self) -> Result<Vec<u8>, MarketError> {
        check_peer_url(&self.peer_url)?;
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.peer_url.len());
        bytes.extend_from_slice(ANNOUNCE_MAGIC);
        bytes.push(ANNOUNCE_VERSION);
        bytes.extend_from_slice(&self.identity.serialize());
        bytes.extend_from_slice(&self.locktime.to_le_bytes());
        bytes.push(self.bond_vout);
        bytes.extend_from_slice(self.peer_url.as_bytes());
        Ok(bytes)
    }

    /// The OP_RETURN output script carrying the payload.
    pub fn script(&self) -> Result<ScriptBuf, MarketError> {
        let push = PushBytesBuf::try_from(self.payload()?)
            .map_err(|e| MarketError::Unparseable(e.to_string()))?;
        Ok(ScriptBuf::new_op_return(push))
    }

    /// Reads a payload that starts with the magic; any other layout is `Unparseable`.
    pub fn from_payload(bytes: &[u8]) -> Result<Announcement, MarketError> {
        let unparseable = |why: &str| MarketError::Unparseable(format!("announcement: {why}"));
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(unparseable("longer than 80 bytes"));
        }
        if bytes.len() <= HEADER_BYTES || !bytes.starts_with(ANNOUNCE_MAGIC) {
            return Err(unparseable("too short"));
        }
        if bytes[3] != ANNOUNCE_VERSION {
            return Err(unparseable(&format!("unknown version {}", bytes[3])));
        }
        let identity = XOnlyPublicKey::from_slice(&bytes[4..36])
            .map_err(|_| unparseable("identity is not an x-only key"))?;
        let locktime = u32::from_le_bytes(bytes[36..40].try_into().expect("4 bytes"));
        if locktime == 0 || locktime >= 0x8000_0000 {
            return Err(unparseable(&format!("locktime {locktime} is not 1..2^31")));
        }
        let peer_url = std::str::from_utf8(&bytes[HEADER_BYTES..])
            .map_err(|_| MarketError::BadUrl("not ASCII".into()))?
            .to_string();
        check_peer_url(&peer_url)?;
        Ok(Announcement {
            identity,
            locktime,
            bond_vout: bytes[40],
            peer_url,
        })
    }
}

/// The first data push of an OP_RETURN script, and whether it is the script's only element.
/// None for a script that is not OP_RETURN followed by a push.
pub fn op_return_push(script: &Script) -> Option<(&[u8], bool)> {
    let mut instructions = script.instructions();
    match instructions.next()? {
        Ok(Instruction::Op(op)) if op == OP_RETURN => {}
        _ => return None,
    }
    let data = match instructions.next()? {
        Ok(Instruction::PushBytes(push)) => push.as_bytes(),
        _ => return None,
    };
    Some((data, instructions.next().is_none()))
}

/// Finds the transaction's announcement: the first OP_RETURN output whose first push starts
/// with `b"DSA"`. None when there is none; Some(Err) when it is forged or malformed
/// (unparseable payload, URL not allowed, bond_vout out of range, or output `bond_vout` not
/// paying `bond_script_pubkey(identity, locktime)`: `KeyMismatch`). Never panics.
pub fn parse_announcement(tx: &Transaction) -> Option<Result<ParsedAnnouncement, MarketError>> {
    let (payload, sole) = tx
        .output
        .iter()
        .filter_map(|out| op_return_push(&out.script_pubkey))
        .find(|(data, _)| data.starts_with(ANNOUNCE_MAGIC))?;
    Some(check_announcement(tx, payload, sole))
}

fn check_announcement(
    tx: &Transaction,
    payload: &[u8],
    sole_push: bool,
) -> Result<ParsedAnnouncement, MarketError> {
    if !sole_push {
        return Err(MarketError::Unparseable(
            "announcement: data after the payload push".into(),
        ));
    }
    let announcement = Announcement::from_payload(payload)?;
    let vout = announcement.bond_vout;
    let bond_output = tx
        .output
        .get(usize::from(vout))
        .ok_or(MarketError::BondVoutOutOfRange {
            vout,
            outputs: tx.output.len(),
        })?;
    let expected = bond_script_pubkey(&announcement.identity, announcement.locktime)?;
    if bond_output.script_pubkey != expected {
        return Err(MarketError::KeyMismatch);
    }
    Ok(ParsedAnnouncement {
        bond: OutPoint::new(tx.compute_txid(), u32::from(vout)),
        bond_value: bond_output.value,
        announcement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::identity_keypair;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{TxIn, TxOut};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn identity(seed: u8) -> XOnlyPublicKey {
        identity_keypair(&[seed; 32]).unwrap().x_only_public_key().0
    }

    fn announcement(url: &str) -> Announcement {
        Announcement {
            identity: identity(1),
            locktime: 800_000,
            bond_vout: 0,
            peer_url: url.to_string(),
        }
    }

    fn tx_with(outputs: Vec<TxOut>) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn::default()],
            output: outputs,
        }
    }

    fn bond_output(a: &Announcement) -> TxOut {
        TxOut {
            value: Amount::from_sat(250_000),
            script_pubkey: bond_script_pubkey(&a.identity, a.locktime).unwrap(),
        }
    }

    fn op_return(data: &[u8]) -> TxOut {
        TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::new_op_return(PushBytesBuf::try_from(data.to_vec()).unwrap()),
        }
    }

    fn announce_tx(a: &Announcement) -> Transaction {
        tx_with(vec![
            bond_output(a),
            TxOut {
                value: Amount::ZERO,
                script_pubkey: a.script().unwrap(),
            },
        ])
    }

    #[test]
    fn announcement_round_trips_through_a_transaction() {
        let a = announcement("https://farmer.example:8443");
        let tx = announce_tx(&a);
        let parsed = parse_announcement(&tx).unwrap().unwrap();
        assert_eq!(parsed.announcement, a);
        assert_eq!(parsed.bond, OutPoint::new(tx.compute_txid(), 0));
        assert_eq!(parsed.bond_value, Amount::from_sat(250_000));
    }

    #[test]
    fn a_39_byte_url_fills_80_bytes_and_a_40_byte_one_is_refused() {
        let url39 = format!("http://{}", "a".repeat(32));
        assert_eq!(url39.len(), 39);
        let a = announcement(&url39);
        assert_eq!(a.payload().unwrap().len(), 80);
        assert!(a.script().unwrap().len() <= 83);
        assert_eq!(
            parse_announcement(&announce_tx(&a))
                .unwrap()
                .unwrap()
                .announcement,
            a
        );
        let url40 = format!("{url39}a");
        assert!(matches!(
            announcement(&url40).script(),
            Err(MarketError::BadUrl(_))
        ));
    }

    #[test]
    fn peer_url_rules() {
        for good in ["http://a", "https://10.0.0.1:9000/x", "http://[::1]:80"] {
            check_peer_url(good).unwrap();
        }
        for bad in [
            "",
            "http://",
            "https://",
            "ftp://host",
            "host:80",
            "http://a b",
            "http://a\n",
            "http://a\u{7f}",
            "http://é.example",
            "HTTP://caps",
        ] {
            assert!(
                matches!(check_peer_url(bad), Err(MarketError::BadUrl(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_transaction_without_the_magic_is_not_an_announcement() {
        let plain = tx_with(vec![bond_output(&announcement("http://a"))]);
        assert!(parse_announcement(&plain).is_none());
        let other = tx_with(vec![op_return(b"DSL\x01something"), op_return(b"hello")]);
        assert!(parse_announcement(&other).is_none());
        let empty_op_return = tx_with(vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(vec![0x6a]),
        }]);
        assert!(parse_announcement(&empty_op_return).is_none());
    }

    #[test]
    fn the_first_op_return_with_the_magic_is_taken() {
        let a = announcement("http://first");
        let b = Announcement {
            peer_url: "http://second".into(),
            ..a.clone()
        };
        let tx = tx_with(vec![
            op_return(b"unrelated"),
            bond_output(&a),
            op_return(
                &Announcement {
                    bond_vout: 1,
                    ..a.clone()
                }
                .payload()
                .unwrap(),
            ),
            op_return(&Announcement { bond_vout: 1, ..b }.payload().unwrap()),
        ]);
        let parsed = parse_announcement(&tx).unwrap().unwrap();
        assert_eq!(parsed.announcement.peer_url, "http://first");
        assert_eq!(parsed.bond.vout, 1);
    }

    #[test]
    fn forged_announcements_are_refused() {
        let a = announcement("http://a");
        // Bond paid to another identity's bond key, or with another locktime.
        for forged_output in [
            bond_output(&Announcement {
                identity: identity(2),
                ..a.clone()
            }),
            bond_output(&Announcement {
                locktime: 800_001,
                ..a.clone()
            }),
            TxOut {
                value: Amount::from_sat(1),
                script_pubkey: ScriptBuf::new(),
            },
        ] {
            let tx = tx_with(vec![forged_output, op_return(&a.payload().unwrap())]);
            assert_eq!(parse_announcement(&tx), Some(Err(MarketError::KeyMismatch)));
        }
        // Naming the OP_RETURN itself as the bond.
        let self_ref = Announcement {
            bond_vout: 1,
            ..a.clone()
        };
        let tx = tx_with(vec![
            bond_output(&a),
            op_return(&self_ref.payload().unwrap()),
        ]);
        assert_eq!(parse_announcement(&tx), Some(Err(MarketError::KeyMismatch)));
        // An index past the outputs.
        let far = Announcement {
            bond_vout: 2,
            ..a.clone()
        };
        let tx = tx_with(vec![bond_output(&a), op_return(&far.payload().unwrap())]);
        assert_eq!(
            parse_announcement(&tx),
            Some(Err(MarketError::BondVoutOutOfRange {
                vout: 2,
                outputs: 2
            }))
        );
    }

    #[test]
    fn malformed_payloads_are_unparseable_or_bad_urls() {
        let a = announcement("http://a");
        let good = a.payload().unwrap();
        let mut version2 = good.clone();
        version2[3] = 2;
        let mut bad_key = good.clone();
        bad_key[4..36].copy_from_slice(&[0xff; 32]);
        let mut zero_locktime = good.clone();
        zero_locktime[36..40].copy_from_slice(&[0; 4]);
        for payload in [
            version2,
            bad_key,
            zero_locktime,
            good[..41].to_vec(),
            b"DSA".to_vec(),
        ] {
            let tx = tx_with(vec![bond_output(&a), op_return(&payload)]);
            assert!(
                matches!(
                    parse_announcement(&tx),
                    Some(Err(MarketError::Unparseable(_)))
                ),
                "{payload:?}"
            );
        }
        let mut bad_url = good.clone();
        bad_url.extend_from_slice(b" x");
        let tx = tx_with(vec![bond_output(&a), op_return(&bad_url)]);
        assert!(matches!(
            parse_announcement(&tx),
            Some(Err(MarketError::BadUrl(_)))
        ));
        // A second push after the payload.
        let mut script = a.script().unwrap().into_bytes();
        script.extend_from_slice(&[0x01, 0x00]);
        let tx = tx_with(vec![
            bond_output(&a),
            TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::from_bytes(script),
            },
        ]);
        assert!(matches!(
            parse_announcement(&tx),
            Some(Err(MarketError::Unparseable(_)))
        ));
    }

    #[test]
    fn hostile_payloads_never_panic() {
        let a = announcement("https://farmer.example");
        let good = a.payload().unwrap();
        let mut rng = StdRng::seed_from_u64(17);
        let mut payloads: Vec<Vec<u8>> = (0..=good.len()).map(|n| good[..n].to_vec()).collect();
        for extra in 1..=200 {
            let mut long = good.clone();
            long.extend((0..extra).map(|_| rng.gen::<u8>()));
            payloads.push(long);
        }
        for _ in 0..2_000 {
            let len = rng.gen_range(0..120);
            let mut random: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.8) && random.len() >= 4 {
                random[..4].copy_from_slice(b"DSA\x01");
            }
            payloads.push(random);
        }
        for payload in payloads {
            let tx = tx_with(vec![bond_output(&a), op_return(&payload)]);
            let result = parse_announcement(&tx);
            if payload.starts_with(ANNOUNCE_MAGIC) {
                assert!(result.is_some());
            }
            // Whatever parses is exactly a well-formed announcement (a truncated URL may
            // still be a valid one) naming output 0, which pays its bond script.
            if let Some(Ok(parsed)) = result {
                assert_eq!(parsed.announcement.payload().unwrap(), payload);
                assert_eq!(parsed.announcement.identity, a.identity);
            }
            let _ = Announcement::from_payload(&payload);
        }
        // Raw, possibly invalid scripts after OP_RETURN (truncated pushes, PUSHDATA4 …).
        for _ in 0..2_000 {
            let len = rng.gen_range(1..100);
            let mut raw: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            raw[0] = 0x6a;
            let tx = tx_with(vec![TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::from_bytes(raw),
            }]);
            let _ = parse_announcement(&tx);
        }
    }
}
