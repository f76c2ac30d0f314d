//! Bitcoin networks dstore runs on, with the names used in flags, files and RPC replies.

use std::fmt;
use std::str::FromStr;

/// A Bitcoin network, named as dstore's `--network` flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    Mainnet,
    Testnet,
    Signet,
    Regtest,
}

/// A network name that dstore does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network '{0}' (expected regtest, signet, testnet or mainnet)")]
pub struct UnknownNetwork(pub String);

impl Network {
    /// The name used in flags and as the per-network directory under the datadir.
    pub fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }

    /// Maps bitcoind's `getblockchaininfo.chain` ("main", "test", "testnet4", "signet",
    /// "regtest") to a network.
    pub fn from_core_chain(chain: &str) -> Result<Self, UnknownNetwork> {
        match chain {
            "main" => Ok(Network::Mainnet),
            "test" | "testnet4" => Ok(Network::Testnet),
            "signet" => Ok(Network::Signet),
            "regtest" => Ok(Network::Regtest),
            other => Err(UnknownNetwork(other.to_string())),
        }
    }

    /// The rust-bitcoin network used for addresses and keys.
    pub fn to_bitcoin(self) -> bitcoin::Network {
        match self {
            Network::Mainnet => bitcoin::Network::Bitcoin,
            Network::Testnet => bitcoin::Network::Testnet,
            Network::Signet => bitcoin::Network::Signet,
            Network::Regtest => bitcoin::Network::Regtest,
        }
    }

    /// bitcoind's default RPC port on this network.
    pub fn default_bitcoind_rpc_port(self) -> u16 {
        match self {
            Network::Mainnet => 8332,
            Network::Testnet => 18332,
            Network::Signet => 38332,
            Network::Regtest => 18443,
        }
    }

    /// dstore-plugin's default RPC port on this network.
    pub fn default_plugin_rpc_port(self) -> u16 {
        match self {
            Network::Mainnet => 8450,
            Network::Testnet => 18451,
            Network::Signet => 38450,
            Network::Regtest => 18450,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Network {
    type Err = UnknownNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mainnet" | "main" | "bitcoin" => Ok(Network::Mainnet),
            "testnet" | "test" => Ok(Network::Testnet),
            "signet" => Ok(Network::Signet),
            "regtest" => Ok(Network::Regtest),
            other => Err(UnknownNetwork(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in [
            Network::Mainnet,
            Network::Testnet,
            Network::Signet,
            Network::Regtest,
        ] {
            assert_eq!(n.name().parse::<Network>().unwrap(), n);
        }
    }

    #[test]
    fn core_chain_names_map() {
        assert_eq!(Network::from_core_chain("main").unwrap(), Network::Mainnet);
        assert_eq!(
            Network::from_core_chain("regtest").unwrap(),
            Network::Regtest
        );
        assert!(Network::from_core_chain("liquid").is_err());
    }
}
