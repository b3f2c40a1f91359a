//! The coordinator's TOML configuration file (`--config farm.toml`). Every field is optional; command-line
//! flags and `CPC_*` environment variables override the file, and the file overrides the defaults.
//! `deploy/farm.example.toml` is a commented example.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (line, field).
        reason: String,
    },
}

/// The configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// L1 node URLs in failover order.
    pub nodes: Vec<String>,
    /// Worker identities: key names in the keystore.
    pub identities: Vec<String>,
    /// Keystore directory (cpc-cli layout).
    pub keystore: Option<PathBuf>,
    /// Data directory (journal, certificate, join token).
    pub data_dir: Option<PathBuf>,
    /// Matrix size of block tasks.
    pub matrix_size: Option<u32>,
    /// Gas price of submissions.
    pub gas_price: Option<u64>,
    /// Head polling interval in milliseconds.
    pub poll_interval_ms: Option<u64>,
    /// QUIC listen address for agents.
    pub listen: Option<String>,
    /// Metrics listen address (`/metrics`, `/healthz`, `/readyz`).
    pub metrics: Option<String>,
    /// Where tasks run: `farm` (agents over QUIC) or `local` (the CPU backend of this process).
    pub compute: Option<String>,
    /// PoC validators to take jobs from over WebSocket (`[[validators]]` tables).
    pub validators: Vec<ValidatorEntry>,
    /// Largest `matrix_size` a validator job may ask for (default 8192).
    pub max_validator_matrix_size: Option<u32>,
    /// Order of block tasks and validator jobs: `block_first` (default) or `fifo`.
    pub scheduling: Option<String>,
    /// Worker threads for the farm's QUIC I/O, 0 to run it on the scheduler's thread (default: half the
    /// cores beyond two, at most 8).
    pub io_threads: Option<u32>,
    /// Days to keep settled tasks and answered validator jobs in the journal (0: keep forever).
    pub journal_retention_days: Option<u64>,
}

/// One PoC validator connection: a URL and the identity whose key signs the results.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Key name in the keystore of the identity the jobs are worked for.
    pub identity: String,
    /// Also submit each job's result to the L1 as a SUBMIT_RESULT of the identity.
    #[serde(default)]
    pub submit_to_l1: bool,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_unknown_keys_are_refused() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/farm.example.toml");
        let cfg = ConfigFile::load(&example).expect("example parses");
        assert!(!cfg.nodes.is_empty() && !cfg.identities.is_empty());
        let bad: Result<ConfigFile, _> = toml::from_str("nodez = []");
        assert!(bad.is_err());
        let v: ConfigFile = toml::from_str(
            "scheduling = \"fifo\"\n[[validators]]\nurl = \"wss://v.example:9000/ws\"\nidentity = \"w1\"\n\n[[validators]]\nurl = \"ws://127.0.0.1:9001\"\nidentity = \"w2\"\nsubmit_to_l1 = true\n",
        )
        .expect("validators parse");
        assert_eq!(v.validators.len(), 2);
        assert!(!v.validators[0].submit_to_l1 && v.validators[1].submit_to_l1);
        assert_eq!(v.scheduling.as_deref(), Some("fifo"));
    }
}
