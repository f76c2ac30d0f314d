//! What every dstore daemon's configuration shares: how to reach bitcoind, the `key=value`
//! conf file layered under the command-line flags, and the default paths under `$HOME`.
//!
//! The conf file holds `key=value` lines whose keys are the long flag names without the
//! leading `--` (`#` starts a comment). It is layered under the flags by replaying its
//! lines as flags placed *before* the real ones; clap's `args_override_self` then lets
//! the later, real flag win.

use std::path::{Path, PathBuf};

use dstore_protocol::network::Network;

/// Largest conf file accepted; anything bigger is not a hand-written conf file.
const MAX_CONF_BYTES: u64 = 64 * 1024;

/// How to reach bitcoind: the flags every dstore daemon takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BitcoindArgs {
    /// bitcoind's JSON-RPC URL (default: http://127.0.0.1:<network's bitcoind port>)
    #[arg(long, value_name = "URL")]
    pub bitcoind_rpc_url: Option<String>,

    /// bitcoind's cookie file (default: $HOME/.bitcoin/<network dir>/.cookie)
    #[arg(long, value_name = "PATH")]
    pub bitcoind_cookie: Option<PathBuf>,

    /// bitcoind RPC user name (instead of the cookie)
    #[arg(long, value_name = "USER")]
    pub bitcoind_rpc_user: Option<String>,

    /// bitcoind RPC password (instead of the cookie)
    #[arg(long, value_name = "PASSWORD")]
    pub bitcoind_rpc_password: Option<String>,
}

impl BitcoindArgs {
    /// The RPC URL and credentials, with `network`'s defaults for what is not given.
    pub fn resolve(self, network: Network) -> Result<(String, BitcoindAuth), ConfigError> {
        let url = self
            .bitcoind_rpc_url
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", network.default_bitcoind_rpc_port()));
        let auth = match (self.bitcoind_rpc_user, self.bitcoind_rpc_password) {
            (Some(user), Some(password)) => BitcoindAuth::UserPass { user, password },
            (None, None) => BitcoindAuth::Cookie(match self.bitcoind_cookie {
                Some(path) => path,
                None => default_bitcoind_cookie(network)?,
            }),
            _ => return Err(ConfigError::HalfUserPass),
        };
        Ok((url, auth))
    }
}

/// How a daemon authenticates to bitcoind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitcoindAuth {
    Cookie(PathBuf),
    UserPass { user: String, password: String },
}

/// A configuration error any dstore daemon can meet: an unreadable or malformed conf file,
/// a bad flag, half of a user/password pair, no `$HOME` for the defaults.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    ReadConf {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONF_BYTES} bytes")]
    ConfTooLarge { path: PathBuf },
    #[error("{path}:{line}: expected key=value, found '{text}'")]
    ConfSyntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(#[from] clap::Error),
    #[error("--bitcoind-rpc-user and --bitcoind-rpc-password must be given together")]
    HalfUserPass,
    #[error("no datadir given and $HOME is not set")]
    NoHome,
}

pub fn home() -> Result<PathBuf, ConfigError> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or(ConfigError::NoHome)
}

pub fn default_bitcoind_cookie(network: Network) -> Result<PathBuf, ConfigError> {
    let bitcoin_dir = home()?.join(".bitcoin");
    Ok(match network {
        Network::Mainnet => bitcoin_dir.join(".cookie"),
        Network::Testnet => bitcoin_dir.join("testnet3").join(".cookie"),
        Network::Signet => bitcoin_dir.join("signet").join(".cookie"),
        Network::Regtest => bitcoin_dir.join("regtest").join(".cookie"),
    })
}

/// Turns the conf file's `key=value` lines into `--key=value` flags. A missing file is an
/// empty conf.
pub fn read_conf_flags(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::ReadConf {
                path: path.into(),
                source,
            })
        }
        Ok(meta) if meta.len() > MAX_CONF_BYTES => {
            return Err(ConfigError::ConfTooLarge { path: path.into() })
        }
        Ok(_) => std::fs::read_to_string(path).map_err(|source| ConfigError::ReadConf {
            path: path.into(),
            source,
        })?,
    };
    parse_conf(path, &text)
}

fn parse_conf(path: &Path, text: &str) -> Result<Vec<String>, ConfigError> {
    let mut flags = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::ConfSyntax {
                path: path.into(),
                line: index + 1,
                text: line.to_string(),
            });
        };
        flags.push(format!("--{}={}", key.trim(), value.trim()));
    }
    Ok(flags)
}

/// Parses `argv` (program name first) with `<datadir>/<conf_file_name>` layered under it.
/// The datadir is the one `datadir_flag` finds in the flags, else `$HOME/<default_dir_name>`.
/// Returns the layered arguments and the datadir.
pub fn parse_layered<A: clap::Parser>(
    argv: &[String],
    datadir_flag: impl FnOnce(A) -> Option<PathBuf>,
    default_dir_name: &str,
    conf_file_name: &str,
) -> Result<(A, PathBuf), ConfigError> {
    let flags_only = A::try_parse_from(argv)?;
    let datadir = match datadir_flag(flags_only) {
        Some(dir) => dir,
        None => home()?.join(default_dir_name),
    };
    let conf_flags = read_conf_flags(&datadir.join(conf_file_name))?;
    let args = A::try_parse_from(layer(argv, &conf_flags))?;
    Ok((args, datadir))
}

/// Program name, then the conf file's flags, then the real flags (which win).
pub fn layer(argv: &[String], conf_flags: &[String]) -> Vec<String> {
    let mut merged = Vec::with_capacity(argv.len() + conf_flags.len());
    merged.extend(argv.first().cloned());
    merged.extend(conf_flags.iter().cloned());
    merged.extend(argv.iter().skip(1).cloned());
    merged
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(args_override_self = true)]
    struct TestArgs {
        #[arg(long)]
        datadir: Option<PathBuf>,
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        bitcoind: BitcoindArgs,
    }

    fn argv(items: &[&str]) -> Vec<String> {
        std::iter::once("daemon")
            .chain(items.iter().copied())
            .map(String::from)
            .collect()
    }

    fn parse(dir: &Path, flags: &[&str]) -> Result<(TestArgs, PathBuf), ConfigError> {
        let mut items = vec!["--datadir", dir.to_str().unwrap()];
        items.extend(flags);
        parse_layered(
            &argv(&items),
            |a: TestArgs| a.datadir,
            ".unused",
            "test.conf",
        )
    }

    #[test]
    fn conf_lines_become_flags_comments_and_blanks_skipped() {
        let flags = parse_conf(Path::new("c"), "# top\n\n port = 7 # trailing\nx=a=b\n").unwrap();
        assert_eq!(flags, ["--port=7", "--x=a=b"]);
    }

    #[test]
    fn a_line_without_equals_names_its_line() {
        let err = parse_conf(Path::new("c"), "port=1\nport\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::ConfSyntax { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_conf_is_empty_and_oversized_conf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.conf");
        assert!(read_conf_flags(&path).unwrap().is_empty());
        std::fs::write(&path, vec![b'#'; MAX_CONF_BYTES as usize + 1]).unwrap();
        let err = read_conf_flags(&path).unwrap_err();
        assert!(matches!(err, ConfigError::ConfTooLarge { .. }), "{err}");
    }

    #[test]
    fn flags_win_over_the_conf_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("test.conf"),
            "port=1\nbitcoind-rpc-user=u\n",
        )
        .unwrap();
        let (args, datadir) = parse(dir.path(), &["--port", "2"]).unwrap();
        assert_eq!(datadir, dir.path());
        assert_eq!(args.port, Some(2));
        assert_eq!(args.bitcoind.bitcoind_rpc_user.as_deref(), Some("u"));
        assert_eq!(
            layer(&argv(&["--a"]), &["--b".into()]),
            ["daemon", "--b", "--a"]
        );
    }

    #[test]
    fn unknown_conf_keys_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test.conf"), "no-such-flag=1\n").unwrap();
        let err = parse(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    }

    #[test]
    fn bitcoind_args_resolve_with_network_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let (args, _) = parse(dir.path(), &["--bitcoind-cookie", "/c"]).unwrap();
        let (url, auth) = args.bitcoind.resolve(Network::Signet).unwrap();
        assert_eq!(url, "http://127.0.0.1:38332");
        assert_eq!(auth, BitcoindAuth::Cookie("/c".into()));
        let (args, _) = parse(
            dir.path(),
            &["--bitcoind-rpc-user", "u", "--bitcoind-rpc-password", "p"],
        )
        .unwrap();
        let (_, auth) = args.bitcoind.resolve(Network::Regtest).unwrap();
        assert_eq!(
            auth,
            BitcoindAuth::UserPass {
                user: "u".into(),
                password: "p".into()
            }
        );
    }

    #[test]
    fn half_a_user_password_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (args, _) = parse(dir.path(), &["--bitcoind-rpc-password", "p"]).unwrap();
        let err = args.bitcoind.resolve(Network::Regtest).unwrap_err();
        assert!(matches!(err, ConfigError::HalfUserPass), "{err}");
    }
}
