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
    }
}
