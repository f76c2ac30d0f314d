//! The plugin's `dstore-*` options and how they become dstore-plugin's flags.
//!
//! Options the user leaves unset take their defaults from lightningd: the network from
//! `init`, bitcoind's address and credentials from `listconfigs` (the `bitcoin-*`
//! options of lightningd's bcli plugin). The resulting flag list goes through
//! [`Config::from_args`], so both modes resolve their configuration the same way.

use cln_plugin::options::{
    ConfigOption, IntegerConfigOption, StringConfigOption, Value as OptValue,
};
use serde_json::Value;

/// A string option: name, flag, description.
pub struct StrOpt {
    pub name: &'static str,
    pub flag: &'static str,
    pub description: &'static str,
}

pub const STRING_OPTIONS: &[StrOpt] = &[
    StrOpt {
        name: "dstore-datadir",
        flag: "datadir",
        description: "dstore's data directory (default: <lightning-dir>/dstore)",
    },
    StrOpt {
        name: "dstore-network",
        flag: "network",
        description: "Bitcoin network: regtest, signet, testnet or mainnet (default: lightningd's network)",
    },
    StrOpt {
        name: "dstore-bitcoind-rpc-url",
        flag: "bitcoind-rpc-url",
        description: "bitcoind's JSON-RPC URL (default: from lightningd's bitcoin-rpcconnect and bitcoin-rpcport)",
    },
    StrOpt {
        name: "dstore-bitcoind-cookie",
        flag: "bitcoind-cookie",
        description: "bitcoind's cookie file (default: lightningd's bitcoin-rpcuser/bitcoin-rpcpassword, else <bitcoin-datadir>/<network>/.cookie)",
    },
    StrOpt {
        name: "dstore-role",
        flag: "",
        description: "renter (default) or farmer (stores files and sells downloads, and rents too)",
    },
    StrOpt {
        name: "dstore-peer-bind",
        flag: "peer-bind",
        description: "farmer: ADDR:PORT of the HTTP peer endpoint renters connect to (default 127.0.0.1:9737)",
    },
    StrOpt {
        name: "dstore-peer-url",
        flag: "peer-url",
        description: "farmer: the peer URL announced to Lightning peers by dstore-discover and named by its signed advert (default: http://<peer-bind>)",
    },
    StrOpt {
        name: "dstore-storage-dir",
        flag: "storage-dir",
        description: "farmer: where stored files live (default <datadir>/<network>/storage)",
    },
    StrOpt {
        name: "dstore-watchtower-url",
        flag: "watchtower-url",
        description: "a dstore-watchtower to register every download with (https://[user:password@]host:port, or http:// on loopback only)",
    },
    StrOpt {
        name: "dstore-crs-cache-dir",
        flag: "crs-cache-dir",
        description: "where Groth16 CRSs are cached (default <datadir>/<network>/crs)",
    },
];

/// An integer option: name, flag, description.
pub struct IntOpt {
    pub name: &'static str,
    pub flag: &'static str,
    pub description: &'static str,
}

pub const INT_OPTIONS: &[IntOpt] = &[
    IntOpt {
        name: "dstore-price-per-download-sat",
        flag: "price-per-download-sat",
        description: "farmer: the least it sells one download for, in satoshis (default 100000)",
    },
    IntOpt {
        name: "dstore-max-file-bytes",
        flag: "max-file-bytes",
        description: "farmer: the largest (encrypted) file it accepts, in bytes (default 4 GiB)",
    },
    IntOpt {
        name: "dstore-min-tx1-confirmations",
        flag: "min-tx1-confirmations",
        description: "farmer: confirmations TX1 needs before TX2 (which reveals f) is broadcast (default 1; 3 on mainnet)",
    },
    IntOpt {
        name: "dstore-tx2-broadcast-margin-blocks",
        flag: "tx2-broadcast-margin-blocks",
        description: "farmer: TX2 goes out only while the tip is more than this many blocks below T1, else the download is abandoned (default 36)",
    },
    IntOpt {
        name: "dstore-min-audit-claim-window-blocks",
        flag: "min-audit-claim-window-blocks",
        description: "farmer: the least claim window W, in blocks, accepted in audit terms (default 6)",
    },
    IntOpt {
        name: "dstore-min-audit-fee-rate-sat-vb",
        flag: "min-audit-fee-rate-sat-vb",
        description: "farmer: the least fee rate, in sat/vB, of audit candidates and refunds (default 2)",
    },
    IntOpt {
        name: "dstore-evidence-rate-per-min",
        flag: "evidence-rate-per-min",
        description: "farmer: evidence board POSTs accepted per minute, from everyone together (default 30)",
    },
    IntOpt {
        name: "dstore-evidence-max-items",
        flag: "evidence-max-items",
        description: "farmer: the most fraud proofs its evidence board keeps (default 10000)",
    },
    IntOpt {
        name: "dstore-min-storage-blocks",
        flag: "min-storage-blocks",
        description: "renter: the shortest storage term accepted from a farmer, in blocks (default 4320, about 30 days)",
    },
    IntOpt {
        name: "dstore-market-start-height",
        flag: "market-start-height",
        description: "market scanner: the first block height it reads (default 0 on regtest and signet, else the tip at its first start)",
    },
    IntOpt {
        name: "dstore-market-poll-ms",
        flag: "market-poll-ms",
        description: "market scanner: milliseconds between polls of bitcoind for new blocks (default 1000)",
    },
    IntOpt {
        name: "dstore-market-refresh-secs",
        flag: "market-refresh-secs",
        description: "market: seconds between refreshes of the farmers' adverts and evidence boards, which also follow every new block (default 60)",
    },
    IntOpt {
        name: "dstore-market-min-bond-sat",
        flag: "market-min-bond-sat",
        description: "market: the smallest fidelity bond, in satoshis, an announcement needs to be listed (default 10000)",
    },
];

pub fn string_option(o: &StrOpt) -> StringConfigOption<'static> {
    ConfigOption::new_str_no_default(o.name, o.description)
}

pub fn int_option(o: &IntOpt) -> IntegerConfigOption<'static> {
    ConfigOption::new_i64_no_default(o.name, o.description)
}

/// The values lightningd handed over in `init`, by option name.
pub type Given = std::collections::HashMap<&'static str, OptValue>;

/// What the plugin learned from lightningd about bitcoind (from `listconfigs`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LightningdBitcoin {
    pub rpcconnect: Option<String>,
    pub rpcport: Option<u16>,
    pub rpcuser: Option<String>,
    pub rpcpassword: Option<String>,
    pub datadir: Option<String>,
}

impl LightningdBitcoin {
    /// Reads the `bitcoin-*` entries of a `listconfigs` result: the current form
    /// (`{"configs": {"bitcoin-rpcport": {"value_int": 18443, ...}}}`) or the old flat one.
    pub fn from_listconfigs(list: &Value) -> Self {
        let get = |name: &str| -> Option<String> {
            let entry = match list.get("configs") {
                Some(configs) => configs.get(name)?,
                None => list.get(name)?,
            };
            let value = match entry {
                Value::Object(map) => ["value_str", "value_int", "value_msat", "value_bool"]
                    .iter()
                    .find_map(|k| map.get(*k))?,
                other => other,
            };
            match value {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        LightningdBitcoin {
            rpcconnect: get("bitcoin-rpcconnect"),
            rpcport: get("bitcoin-rpcport").and_then(|p| p.parse().ok()),
            rpcuser: get("bitcoin-rpcuser"),
            rpcpassword: get("bitcoin-rpcpassword"),
            datadir: get("bitcoin-datadir"),
        }
    }
}

/// lightningd's network names as dstore's (`bitcoin` is mainnet; testnet4 is "testnet").
pub fn network_from_lightningd(network: &str) -> String {
    match network {
        "bitcoin" => "mainnet".into(),
        "testnet4" => "testnet".into(),
        other => other.into(),
    }
}

/// The dstore-plugin flag list for these options and lightningd's defaults.
pub fn flags(
    given: &Given,
    lightning_dir: &str,
    ln_network: &str,
    bitcoin: &LightningdBitcoin,
) -> Result<Vec<String>, String> {
    let text = |name: &str| -> Option<String> {
        match given.get(name) {
            Some(OptValue::String(s)) => Some(s.clone()),
            Some(OptValue::Integer(i)) => Some(i.to_string()),
            Some(OptValue::Boolean(b)) => Some(b.to_string()),
            _ => None,
        }
    };
    let mut argv = vec!["dstore-plugin".to_string()];
    for o in STRING_OPTIONS.iter().filter(|o| !o.flag.is_empty()) {
        if let Some(v) = text(o.name) {
            argv.push(format!("--{}={v}", o.flag));
        }
    }
    for o in INT_OPTIONS {
        if let Some(v) = text(o.name) {
            argv.push(format!("--{}={v}", o.flag));
        }
    }
    if text("dstore-datadir").is_none() {
        let dir = std::path::Path::new(lightning_dir).join("dstore");
        argv.push(format!("--datadir={}", dir.display()));
    }
    let network = match text("dstore-network") {
        Some(n) => n,
        None => {
            let n = network_from_lightningd(ln_network);
            argv.push(format!("--network={n}"));
            n
        }
    };
    if text("dstore-bitcoind-rpc-url").is_none() {
        let port = match bitcoin.rpcport {
            Some(port) => port,
            None => network
                .parse::<dstore_protocol::network::Network>()
                .map_err(|e| format!("dstore-network: {e}"))?
                .default_bitcoind_rpc_port(),
        };
        let host = bitcoin.rpcconnect.as_deref().unwrap_or("127.0.0.1");
        argv.push(format!("--bitcoind-rpc-url=http://{host}:{port}"));
    }
    if text("dstore-bitcoind-cookie").is_none() {
        match (&bitcoin.rpcuser, &bitcoin.rpcpassword) {
            (Some(user), Some(password)) => {
                argv.push(format!("--bitcoind-rpc-user={user}"));
                argv.push(format!("--bitcoind-rpc-password={password}"));
            }
            _ => {
                if let Some(dir) = &bitcoin.datadir {
                    let sub = match network.as_str() {
                        "mainnet" | "main" | "bitcoin" => "",
                        "testnet" | "test" => "testnet3",
                        other => other,
                    };
                    let cookie = std::path::Path::new(dir).join(sub).join(".cookie");
                    argv.push(format!("--bitcoind-cookie={}", cookie.display()));
                }
            }
        }
    }
    match text("dstore-role").as_deref() {
        None | Some("renter") => {}
        Some("farmer") => argv.push("--farmer".into()),
        Some(other) => {
            return Err(format!(
                "dstore-role must be renter or farmer, not '{other}'"
            ))
        }
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_come_from_lightningd() {
        let list = json!({"configs": {
            "bitcoin-rpcport": {"value_int": 18443, "source": "cmdline"},
            "bitcoin-rpcconnect": {"value_str": "127.0.0.2", "source": "cmdline"},
            "bitcoin-datadir": {"value_str": "/b", "source": "cmdline"},
        }});
        let bitcoin = LightningdBitcoin::from_listconfigs(&list);
        let argv = flags(&Given::new(), "/ln/regtest", "regtest", &bitcoin).unwrap();
        assert_eq!(
            argv,
            [
                "dstore-plugin",
                "--datadir=/ln/regtest/dstore",
                "--network=regtest",
                "--bitcoind-rpc-url=http://127.0.0.2:18443",
                "--bitcoind-cookie=/b/regtest/.cookie",
            ]
        );
        let flat = json!({"bitcoin-rpcuser": "u", "bitcoin-rpcpassword": "p"});
        let bitcoin = LightningdBitcoin::from_listconfigs(&flat);
        let mut given = Given::new();
        given.insert("dstore-role", OptValue::String("farmer".into()));
        given.insert("dstore-price-per-download-sat", OptValue::Integer(5000));
        let argv = flags(&given, "/ln/bitcoin", "bitcoin", &bitcoin).unwrap();
        assert!(argv.contains(&"--network=mainnet".to_string()));
        assert!(argv.contains(&"--bitcoind-rpc-url=http://127.0.0.1:8332".to_string()));
        assert!(argv.contains(&"--bitcoind-rpc-user=u".to_string()));
        assert!(argv.contains(&"--farmer".to_string()));
        assert!(argv.contains(&"--price-per-download-sat=5000".to_string()));
        given.insert("dstore-role", OptValue::String("miner".into()));
        assert!(flags(&given, "/ln", "regtest", &bitcoin).is_err());
    }
}
