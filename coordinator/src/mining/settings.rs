//! The mining node's settings, resolved once from their sources: command-line flags, then `CPC_*`
//! environment variables, then the config file ([`super::config`]), then defaults. Everything is checked
//! here, with a message that names the setting and what it should be, so that [`super::run`] starts from
//! typed, valid [`Settings`].
//!
//! Each source is a [`Layer`] (or the [`ConfigFile`]): what it says, `None` or empty where it says
//! nothing. For the L1 nodes, `nodes` (a list) comes before `node` (one URL) within a source, and a source
//! before the next: `--node` beats `CPC_NODES`, and either beats the file's `nodes`.

use super::{
    config::{ConfigError, ConfigFile, ValidatorEntry},
    priority::SchedulingPolicy,
};
use crate::validator::{self, ValidatorError, protocol::DEFAULT_MAX_MATRIX_SIZE};
use cpc_common::{
    keystore::Keystore,
    synthetic::{DEFAULT_MATRIX_SIZE, MAX_MATRIX_SIZE},
    tx::MIN_GAS_PRICE,
};
use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

/// Default head polling interval, milliseconds.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 500;
/// Shortest head polling interval, milliseconds (a shorter one is raised to it).
pub const MIN_POLL_INTERVAL_MS: u64 = 10;
/// Default days settled journal rows are kept.
pub const DEFAULT_JOURNAL_RETENTION_DAYS: u64 = 7;
/// Default seconds a bounded run waits for its last submissions to settle.
pub const DEFAULT_SETTLE_TIMEOUT_SECS: u64 = 60;

/// Where block tasks and validator jobs run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ComputeMode {
    /// On the farm's agents, over QUIC.
    #[default]
    Farm,
    /// On this process's CPU (a one-box miner; the farm then only serves metrics).
    Local,
}

impl FromStr for ComputeMode {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "farm" => Ok(Self::Farm),
            "local" => Ok(Self::Local),
            other => Err(SettingsError::InvalidCompute(other.to_owned())),
        }
    }
}

impl fmt::Display for ComputeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Farm => "farm",
            Self::Local => "local",
        })
    }
}

/// An invalid setting, or a config file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file cannot be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No data dir was given and there is no home directory to put the default one in.
    #[error("no --data-dir and no HOME: pass --data-dir")]
    NoDataDir,
    /// An L1 node URL is not `http(s)://HOST[:PORT]`.
    #[error("invalid node URL `{url}`: {reason} (expected e.g. http://127.0.0.1:8000)")]
    InvalidNodeUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No source names a worker identity.
    #[error(
        "no worker identity: pass --identity NAME (a key in the keystore) or list `identities` in --config"
    )]
    NoIdentity,
    /// An identity is listed twice.
    #[error(
        "identity `{0}` is listed twice: each identity submits once per block, so list it once"
    )]
    DuplicateIdentity(String),
    /// A listen address is not `IP:PORT`.
    #[error("invalid `{setting}` in config: {text}: {reason} (expected IP:PORT)")]
    InvalidAddress {
        /// `listen` or `metrics`.
        setting: &'static str,
        /// The text as given.
        text: String,
        /// Why it does not parse.
        reason: String,
    },
    /// `compute` is neither `farm` nor `local`.
    #[error("invalid compute `{0}`: expected `farm` or `local`")]
    InvalidCompute(String),
    /// `matrix_size` is 0 or over the synthetic-v1 maximum.
    #[error("invalid matrix_size {0}: expected 1 to {MAX_MATRIX_SIZE}")]
    InvalidMatrixSize(u32),
    /// `gas_price` is under the L1's minimum.
    #[error("invalid gas_price {0}: the L1 drops transactions under {MIN_GAS_PRICE} (its minimum)")]
    GasPriceTooLow(u64),
    /// A `--validator` value is not `URL=IDENTITY`.
    #[error("invalid --validator `{0}`: expected URL=IDENTITY")]
    InvalidValidatorFlag(String),
    /// A validator URL is not `ws(s)://HOST[:PORT]/PATH`.
    #[error("{0}")]
    InvalidValidatorUrl(ValidatorError),
    /// A validator submits to the L1 for an identity that does not mine.
    #[error(
        "validator {url} has submit_to_l1 for `{identity}`, which is not a mining identity: add it to `identities`"
    )]
    SubmitToL1NotMining {
        /// The validator's URL.
        url: String,
        /// The identity it names.
        identity: String,
    },
    /// `scheduling` is neither `block_first` nor `fifo`.
    #[error("{0}")]
    InvalidScheduling(String),
    /// `io_threads` is over [`crate::farm::MAX_IO_THREADS`].
    #[error(
        "invalid io_threads {0}: expected 0 (the farm's I/O on its scheduler's thread) to {max}",
        max = crate::farm::MAX_IO_THREADS
    )]
    InvalidIoThreads(u32),
}

impl SettingsError {
    /// Whether the operator gave a setting that is not valid (the CLI exits 2), rather than a config file
    /// or home directory that cannot be read (it exits 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Config(_) | Self::NoDataDir)
    }
}

/// What one source (the command line, the environment) says; `None` or empty where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    /// The config file (`--config`, `CPC_CONFIG`).
    pub config: Option<PathBuf>,
    /// L1 node URLs in failover order (`--nodes`, `CPC_NODES`).
    pub nodes: Vec<String>,
    /// One L1 node URL (`--node`, `CPC_NODE`), after `nodes`.
    pub node: Option<String>,
    /// Worker identities: key names (`--identity`, `CPC_IDENTITIES`).
    pub identities: Vec<String>,
    /// Keystore directory (`--keystore`, `CPC_KEYSTORE`).
    pub keystore: Option<PathBuf>,
    /// Data directory (`--data-dir`, `CPC_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// Matrix size of block tasks.
    pub matrix_size: Option<u32>,
    /// Gas price of submissions.
    pub gas_price: Option<u64>,
    /// Head polling interval, milliseconds.
    pub poll_interval_ms: Option<u64>,
    /// `farm` or `local`.
    pub compute: Option<String>,
    /// QUIC address agents dial.
    pub listen: Option<SocketAddr>,
    /// Address agents should dial, for the printed command line.
    pub public_addr: Option<String>,
    /// Directory holding the farm's certificate, key and join token (e.g. a Kubernetes Secret).
    pub identity_dir: Option<PathBuf>,
    /// Metrics address.
    pub metrics: Option<SocketAddr>,
    /// Days settled journal rows are kept (0: forever).
    pub journal_retention_days: Option<u64>,
    /// PoC validators as `URL=IDENTITY`; replace the file's `[[validators]]`.
    pub validators: Vec<String>,
    /// Largest `matrix_size` a validator job may ask for.
    pub max_validator_matrix_size: Option<u32>,
    /// `block_first` or `fifo`.
    pub scheduling: Option<String>,
    /// Worker threads for the farm's QUIC I/O (0: on the scheduler's thread).
    pub io_threads: Option<u32>,
    /// Agents to wait for before mining (farm mode).
    pub min_agents: Option<usize>,
    /// Blocks to mine before stopping (0: until interrupted).
    pub stop_after_blocks: Option<u64>,
    /// Seconds to wait for the last submissions to settle when stopping.
    pub settle_timeout_secs: Option<u64>,
    /// Start a new journal where an earlier one was lost.
    pub new_journal: Option<bool>,
}

/// Every source of the settings, highest precedence first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// The command line.
    pub flags: Layer,
    /// The `CPC_*` environment variables.
    pub env: Layer,
    /// The config file.
    pub file: ConfigFile,
}

impl Sources {
    /// The sources, with the config file that the flags (else the environment) name read from disk.
    pub fn read(flags: Layer, env: Layer) -> Result<Self, SettingsError> {
        let file = match flags.config.as_ref().or(env.config.as_ref()) {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Ok(Self { flags, env, file })
    }

    /// The first of the flags' and the environment's values for a setting.
    fn layered<T: Clone>(&self, field: impl Fn(&Layer) -> &Option<T>) -> Option<T> {
        field(&self.flags).clone().or_else(|| field(&self.env).clone())
    }

    /// The first non-empty list of the flags and the environment.
    fn layered_list(&self, field: impl Fn(&Layer) -> &Vec<String>) -> Option<Vec<String>> {
        [&self.flags, &self.env].into_iter().map(field).find(|list| !list.is_empty()).cloned()
    }
}

/// The mining node's resolved, checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// L1 node URLs in failover order.
    pub nodes: Vec<String>,
    /// Worker identities: key names in the keystore, each once.
    pub identities: Vec<String>,
    /// Keystore directory.
    pub keystore: PathBuf,
    /// Data directory (journal, certificate, join token).
    pub data_dir: PathBuf,
    /// Where tasks run.
    pub compute: ComputeMode,
    /// QUIC address agents dial.
    pub listen: SocketAddr,
    /// Address agents should dial, for the printed command line (default: the bound listen address).
    pub public_addr: Option<String>,
    /// Directory to read the farm's certificate, key and join token from instead of the data dir.
    pub identity_dir: Option<PathBuf>,
    /// Metrics address (`/metrics`, `/healthz`, `/readyz`), if any.
    pub metrics: Option<SocketAddr>,
    /// Matrix size of block tasks.
    pub matrix_size: u32,
    /// Gas price of submissions.
    pub gas_price: u64,
    /// Head polling interval.
    pub poll_interval: Duration,
    /// PoC validators to take jobs from.
    pub validators: Vec<ValidatorEntry>,
    /// Largest `matrix_size` a validator job may ask for.
    pub max_validator_matrix_size: u32,
    /// Order of block tasks and validator jobs.
    pub scheduling: SchedulingPolicy,
    /// Worker threads for the farm's QUIC I/O, 0 for none (`None`: the farm's default for this host).
    pub io_threads: Option<usize>,
    /// How long settled journal rows are kept (`None`: forever).
    pub journal_retention: Option<Duration>,
    /// Agents to wait for before mining (farm mode).
    pub min_agents: usize,
    /// Blocks to mine before stopping and reporting (0: until the shutdown signal).
    pub stop_after_blocks: u64,
    /// How long a bounded run waits for its last submissions to settle.
    pub settle_timeout: Duration,
    /// Start a new journal where an earlier one was lost.
    pub new_journal: bool,
}

impl Settings {
    /// Resolves and checks every setting: flags, then environment, then file, then defaults.
    pub fn resolve(sources: &Sources) -> Result<Self, SettingsError> {
        let file = &sources.file;
        let nodes = resolve_nodes(sources);
        for url in &nodes {
            check_node_url(url)?;
        }
        let identities =
            sources.layered_list(|l| &l.identities).unwrap_or_else(|| file.identities.clone());
        if identities.is_empty() {
            return Err(SettingsError::NoIdentity);
        }
        let mut names = std::collections::BTreeSet::new();
        if let Some(twice) = identities.iter().find(|name| !names.insert(name.as_str())) {
            return Err(SettingsError::DuplicateIdentity(twice.clone()));
        }
        let data_dir = match sources.layered(|l| &l.data_dir).or_else(|| file.data_dir.clone()) {
            Some(dir) => dir,
            None => crate::data_dir::default_dir().ok_or(SettingsError::NoDataDir)?,
        };
        let listen = match (sources.layered(|l| &l.listen), &file.listen) {
            (Some(l), _) => l,
            (None, Some(l)) => parse_addr("listen", l)?,
            (None, None) => parse_addr("listen", crate::farm::DEFAULT_LISTEN)?,
        };
        let metrics = match (sources.layered(|l| &l.metrics), &file.metrics) {
            (Some(m), _) => Some(m),
            (None, Some(m)) => Some(parse_addr("metrics", m)?),
            (None, None) => None,
        };
        let compute = match sources.layered(|l| &l.compute).or_else(|| file.compute.clone()) {
            Some(mode) => mode.parse()?,
            None => ComputeMode::default(),
        };
        let matrix_size =
            sources.layered(|l| &l.matrix_size).or(file.matrix_size).unwrap_or(DEFAULT_MATRIX_SIZE);
        if matrix_size == 0 || matrix_size > MAX_MATRIX_SIZE {
            return Err(SettingsError::InvalidMatrixSize(matrix_size));
        }
        let gas_price =
            sources.layered(|l| &l.gas_price).or(file.gas_price).unwrap_or(MIN_GAS_PRICE);
        if gas_price < MIN_GAS_PRICE {
            return Err(SettingsError::GasPriceTooLow(gas_price));
        }
        let validators = match sources.layered_list(|l| &l.validators) {
            Some(flags) => {
                flags.iter().map(|f| parse_validator_flag(f)).collect::<Result<_, _>>()?
            }
            None => file.validators.clone(),
        };
        check_validators(&validators, &identities)?;
        let scheduling =
            match sources.layered(|l| &l.scheduling).or_else(|| file.scheduling.clone()) {
                Some(s) => s.parse().map_err(SettingsError::InvalidScheduling)?,
                None => SchedulingPolicy::default(),
            };
        let io_threads = match sources.layered(|l| &l.io_threads).or(file.io_threads) {
            Some(n) if n > crate::farm::MAX_IO_THREADS => {
                return Err(SettingsError::InvalidIoThreads(n));
            }
            Some(n) => Some(n as usize),
            None => None,
        };
        let retention_days = sources
            .layered(|l| &l.journal_retention_days)
            .or(file.journal_retention_days)
            .unwrap_or(DEFAULT_JOURNAL_RETENTION_DAYS);
        let journal_retention = (retention_days > 0)
            .then(|| Duration::from_secs(retention_days.saturating_mul(86_400)));
        let max_validator_matrix_size = sources
            .layered(|l| &l.max_validator_matrix_size)
            .or(file.max_validator_matrix_size)
            .unwrap_or(DEFAULT_MAX_MATRIX_SIZE);
        let keystore = sources
            .layered(|l| &l.keystore)
            .or_else(|| file.keystore.clone())
            .unwrap_or_else(Keystore::default_dir);
        let poll_ms = sources
            .layered(|l| &l.poll_interval_ms)
            .or(file.poll_interval_ms)
            .unwrap_or(DEFAULT_POLL_INTERVAL_MS)
            .max(MIN_POLL_INTERVAL_MS);
        Ok(Self {
            nodes,
            identities,
            keystore,
            data_dir,
            compute,
            listen,
            public_addr: sources.layered(|l| &l.public_addr),
            identity_dir: sources.layered(|l| &l.identity_dir),
            metrics,
            matrix_size,
            gas_price,
            poll_interval: Duration::from_millis(poll_ms),
            validators,
            max_validator_matrix_size,
            scheduling,
            io_threads,
            journal_retention,
            min_agents: sources.layered(|l| &l.min_agents).unwrap_or(0),
            stop_after_blocks: sources.layered(|l| &l.stop_after_blocks).unwrap_or(0),
            settle_timeout: Duration::from_secs(
                sources.layered(|l| &l.settle_timeout_secs).unwrap_or(DEFAULT_SETTLE_TIMEOUT_SECS),
            ),
            new_journal: sources.layered(|l| &l.new_journal).unwrap_or(false),
        })
    }

    /// The keystore the identities' keys are read from.
    pub fn keystore(&self) -> Keystore {
        Keystore::new(&self.keystore)
    }
}

/// The L1 nodes: per source, `nodes` before `node`; flags, then environment, then the file's `nodes`,
/// then [`crate::l1::DEFAULT_NODE_URL`].
fn resolve_nodes(sources: &Sources) -> Vec<String> {
    [&sources.flags, &sources.env]
        .into_iter()
        .find_map(|layer| {
            if !layer.nodes.is_empty() {
                Some(layer.nodes.clone())
            } else {
                layer.node.clone().map(|node| vec![node])
            }
        })
        .or_else(|| (!sources.file.nodes.is_empty()).then(|| sources.file.nodes.clone()))
        .unwrap_or_else(|| vec![crate::l1::DEFAULT_NODE_URL.to_owned()])
}

/// An L1 node URL must be `http://` or `https://` with a host.
fn check_node_url(url: &str) -> Result<(), SettingsError> {
    let invalid = |reason: String| SettingsError::InvalidNodeUrl { url: url.to_owned(), reason };
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(invalid(format!("scheme `{}` without a host or not http(s)", u.scheme()))),
        Err(e) => Err(invalid(e.to_string())),
    }
}

fn parse_addr(setting: &'static str, text: &str) -> Result<SocketAddr, SettingsError> {
    text.parse().map_err(|e: std::net::AddrParseError| SettingsError::InvalidAddress {
        setting,
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// `URL=IDENTITY` (split at the last `=`: a URL may hold `=` in its query).
fn parse_validator_flag(flag: &str) -> Result<ValidatorEntry, SettingsError> {
    match flag.rsplit_once('=').filter(|(u, i)| !u.is_empty() && !i.is_empty()) {
        Some((url, identity)) => Ok(ValidatorEntry {
            url: url.to_owned(),
            identity: identity.to_owned(),
            submit_to_l1: false,
        }),
        None => Err(SettingsError::InvalidValidatorFlag(flag.to_owned())),
    }
}

/// Every validator URL is a WebSocket URL, and a validator submits to the L1 only for a mining identity.
fn check_validators(
    validators: &[ValidatorEntry],
    identities: &[String],
) -> Result<(), SettingsError> {
    for entry in validators {
        validator::url_label(&entry.url).map_err(SettingsError::InvalidValidatorUrl)?;
        if entry.submit_to_l1 && !identities.contains(&entry.identity) {
            return Err(SettingsError::SubmitToL1NotMining {
                url: entry.url.clone(),
                identity: entry.identity.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Sources that name an identity and a data dir, so that everything else takes its default.
    fn minimal() -> Sources {
        let flags = Layer {
            identities: strings(&["w1"]),
            data_dir: Some("/var/lib/cpc".into()),
            ..Layer::default()
        };
        Sources { flags, ..Sources::default() }
    }

    fn resolve(sources: &Sources) -> Settings {
        Settings::resolve(sources).expect("valid settings")
    }

    fn refused(sources: &Sources) -> SettingsError {
        Settings::resolve(sources).expect_err("invalid settings")
    }

    #[test]
    fn defaults_fill_what_no_source_says() {
        let s = resolve(&minimal());
        assert_eq!(s.nodes, [crate::l1::DEFAULT_NODE_URL]);
        assert_eq!(s.identities, ["w1"]);
        assert_eq!(s.compute, ComputeMode::Farm);
        assert_eq!(s.listen, crate::farm::DEFAULT_LISTEN.parse().expect("addr"));
        assert_eq!(s.metrics, None);
        assert_eq!(s.matrix_size, DEFAULT_MATRIX_SIZE);
        assert_eq!(s.gas_price, MIN_GAS_PRICE);
        assert_eq!(s.poll_interval, Duration::from_millis(DEFAULT_POLL_INTERVAL_MS));
        assert_eq!(s.scheduling, SchedulingPolicy::BlockFirst);
        assert_eq!(s.max_validator_matrix_size, DEFAULT_MAX_MATRIX_SIZE);
        assert_eq!(s.journal_retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(s.keystore, Keystore::default_dir());
        assert_eq!(s.settle_timeout, Duration::from_secs(DEFAULT_SETTLE_TIMEOUT_SECS));
        assert_eq!((s.min_agents, s.stop_after_blocks, s.new_journal), (0, 0, false));
        assert!(s.validators.is_empty());
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let mut sources = minimal();
        sources.flags.matrix_size = Some(64);
        sources.env.matrix_size = Some(128);
        sources.file.matrix_size = Some(256);
        sources.env.identities = strings(&["env"]);
        sources.file.identities = strings(&["file"]);
        sources.env.compute = Some("local".into());
        sources.file.compute = Some("farm".into());
        sources.env.keystore = Some("/env/keys".into());
        sources.file.keystore = Some("/file/keys".into());
        sources.file.listen = Some("127.0.0.1:9".into());
        sources.env.io_threads = Some(0);
        sources.file.io_threads = Some(4);
        let s = resolve(&sources);
        assert_eq!(
            s.io_threads,
            Some(0),
            "0 is a setting (the scheduler's thread), not an absence"
        );
        assert_eq!((s.matrix_size, s.identities.as_slice()), (64, &["w1".to_owned()][..]));
        assert_eq!((s.compute, s.keystore.as_path()), (ComputeMode::Local, "/env/keys".as_ref()));
        assert_eq!(s.listen, "127.0.0.1:9".parse().expect("addr"));

        sources.flags.matrix_size = None;
        sources.flags.identities.clear();
        assert_eq!(resolve(&sources).matrix_size, 128);
        assert_eq!(resolve(&sources).identities, ["env"]);
        sources.env = Layer::default();
        let s = resolve(&sources);
        assert_eq!((s.matrix_size, s.identities.as_slice()), (256, &["file".to_owned()][..]));
        assert_eq!((s.compute, s.keystore.as_path()), (ComputeMode::Farm, "/file/keys".as_ref()));
        assert_eq!(s.io_threads, Some(4));
        sources.file.io_threads = None;
        assert_eq!(
            resolve(&sources).io_threads,
            None,
            "none given: the farm's default for the host"
        );
    }

    /// The reported case: `--node`/`CPC_NODE` lost to the config file's `nodes`.
    #[test]
    fn a_node_from_flags_or_environment_beats_the_file_and_nodes_beats_node_within_a_source() {
        let mut sources = minimal();
        sources.file.nodes = strings(&["http://file:1", "http://file:2"]);
        assert_eq!(resolve(&sources).nodes, sources.file.nodes);
        sources.env.node = Some("http://env-node:1".into());
        assert_eq!(resolve(&sources).nodes, ["http://env-node:1"]);
        sources.env.nodes = strings(&["http://env:1", "http://env:2"]);
        assert_eq!(resolve(&sources).nodes, ["http://env:1", "http://env:2"]);
        sources.flags.node = Some("http://flag-node:1".into());
        assert_eq!(resolve(&sources).nodes, ["http://flag-node:1"]);
        sources.flags.nodes = strings(&["http://flag:1"]);
        assert_eq!(resolve(&sources).nodes, ["http://flag:1"]);
    }

    #[test]
    fn validators_from_flags_replace_the_files_and_are_checked() {
        let mut sources = minimal();
        sources.file.validators = vec![ValidatorEntry {
            url: "ws://file:9000".into(),
            identity: "w1".into(),
            submit_to_l1: true,
        }];
        assert_eq!(resolve(&sources).validators, sources.file.validators);
        // Split at the last `=`: the URL keeps its query.
        sources.env.validators = strings(&["wss://v.example/ws?k=v=w2"]);
        assert_eq!(
            resolve(&sources).validators,
            [ValidatorEntry {
                url: "wss://v.example/ws?k=v".into(),
                identity: "w2".into(),
                submit_to_l1: false
            }]
        );
        sources.flags.validators = strings(&["ws://v:1"]);
        assert!(
            matches!(refused(&sources), SettingsError::InvalidValidatorFlag(f) if f == "ws://v:1")
        );
        sources.flags.validators = strings(&["http://v:1/ws=w1"]);
        assert!(matches!(refused(&sources), SettingsError::InvalidValidatorUrl(_)));
        sources.flags.validators.clear();
        sources.env.validators.clear();
        sources.file.validators[0].identity = "not-mining".into();
        let e = refused(&sources);
        assert_eq!(
            e.to_string(),
            "validator ws://file:9000 has submit_to_l1 for `not-mining`, which is not a mining identity: add it to `identities`"
        );
    }

    /// Makes minimal sources invalid in one way.
    type Breakage = fn(&mut Sources);

    #[test]
    fn invalid_settings_are_usage_errors_that_name_the_setting() {
        let cases: [(Breakage, &str); 11] = [
            (|s| s.flags.identities.clear(), "no worker identity: pass --identity NAME"),
            (|s| s.flags.identities = strings(&["a", "b", "a"]), "identity `a` is listed twice"),
            (
                |s| s.env.nodes = strings(&["ftp://x:1"]),
                "invalid node URL `ftp://x:1`: scheme `ftp`",
            ),
            (|s| s.file.nodes = strings(&["127.0.0.1:8000"]), "invalid node URL `127.0.0.1:8000`"),
            (|s| s.file.listen = Some("nowhere".into()), "invalid `listen` in config: nowhere: "),
            (|s| s.file.metrics = Some(":9".into()), "invalid `metrics` in config: :9: "),
            (
                |s| s.env.compute = Some("gpu".into()),
                "invalid compute `gpu`: expected `farm` or `local`",
            ),
            (|s| s.flags.matrix_size = Some(0), "invalid matrix_size 0: expected 1 to"),
            (
                |s| s.file.gas_price = Some(1),
                "invalid gas_price 1: the L1 drops transactions under",
            ),
            (|s| s.file.scheduling = Some("lifo".into()), "invalid scheduling `lifo`"),
            (
                |s| s.env.io_threads = Some(65),
                "invalid io_threads 65: expected 0 (the farm's I/O on its scheduler's thread) to 64",
            ),
        ];
        for (break_it, message) in cases {
            let mut sources = minimal();
            break_it(&mut sources);
            let e = refused(&sources);
            assert!(e.to_string().starts_with(message), "{e} (expected {message})");
            assert!(e.is_usage(), "{e}");
        }
    }

    #[test]
    fn an_unreadable_config_file_is_not_a_usage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = Layer { config: Some(dir.path().join("missing.toml")), ..Layer::default() };
        let e = Sources::read(missing, Layer::default()).expect_err("missing file");
        assert!(matches!(e, SettingsError::Config(ConfigError::Read { .. })) && !e.is_usage());

        let path = dir.path().join("farm.toml");
        std::fs::write(&path, "identities = [\"w9\"]\nmatrix_size = 32\n").expect("write");
        let env = Layer { config: Some(path), matrix_size: Some(16), ..Layer::default() };
        let sources = Sources::read(Layer::default(), env).expect("the environment names the file");
        assert_eq!(sources.file.identities, ["w9"]);
        let s = resolve(&Sources {
            flags: Layer { data_dir: Some("/d".into()), ..Layer::default() },
            ..sources
        });
        assert_eq!((s.identities.as_slice(), s.matrix_size), (&["w9".to_owned()][..], 16));
    }

    #[test]
    fn the_poll_interval_has_a_floor_and_zero_retention_keeps_everything() {
        let mut sources = minimal();
        sources.file.poll_interval_ms = Some(1);
        sources.env.journal_retention_days = Some(0);
        let s = resolve(&sources);
        assert_eq!(s.poll_interval, Duration::from_millis(MIN_POLL_INTERVAL_MS));
        assert_eq!(s.journal_retention, None);
    }
}
