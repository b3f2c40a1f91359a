//! Key files compatible with cpc-cli: `~/.computechain/keys/NAME.json` holding
//! `{"name", "address", "public_key", "private_key", "created_at"}` in hex, plain text, mode 0600.
//!
//! The format is cpc-cli's, so an operator can move identities between the two tools. Because the
//! private key sits in plain text, files are created owner-only and loading re-derives the address and
//! public key from the private key and refuses a file where they disagree.

use crate::{address::Address, crypto::SecretKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

/// Errors from the keystore.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// No key file of that name.
    #[error(
        "no key named `{name}` in {dir} (list them with `keys list`, or add one with `keys add {name}`)"
    )]
    UnknownKey {
        /// The name asked for.
        name: String,
        /// The keystore directory.
        dir: PathBuf,
    },
    /// A key of that name exists already; we never overwrite key material.
    #[error(
        "a key named `{name}` already exists in {dir}; choose another name or remove the file by hand"
    )]
    AlreadyExists {
        /// The name asked for.
        name: String,
        /// The keystore directory.
        dir: PathBuf,
    },
    /// Names become file names: only letters, digits, `-`, `_` and `.` (not leading).
    #[error(
        "invalid key name `{0}`: use letters, digits, `-`, `_` and `.` (not first), at most 64 characters"
    )]
    InvalidName(String),
    /// The private key in the file or on the command line is not valid.
    #[error("{0}")]
    Crypto(#[from] crate::CryptoError),
    /// The file is not valid key JSON.
    #[error("key file {path} is not valid: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the directory failed.
    #[error("keystore I/O error at {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// One key file, as cpc-cli writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyFile {
    /// The key's name (also the file name).
    pub name: String,
    /// `cpc1...` address.
    pub address: String,
    /// Compressed public key, hex.
    pub public_key: String,
    /// Private key, hex.
    pub private_key: String,
    /// Creation time (cpc-cli writes an ISO-8601 string; kept as found).
    #[serde(default)]
    pub created_at: Value,
}

/// A loaded identity: the key file and its parsed private key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The name.
    pub name: String,
    /// The parsed secret key.
    pub secret: SecretKey,
    /// Its address.
    pub address: Address,
    /// The file as stored.
    pub file: KeyFile,
}

/// A keystore directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    /// cpc-cli's default location, `~/.computechain/keys`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".computechain")
            .join("keys")
    }

    /// A keystore in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, KeystoreError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(KeystoreError::InvalidName(name.to_owned()));
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// Generates a new key under `name`.
    pub fn add(&self, name: &str) -> Result<StoredKey, KeystoreError> {
        self.store(name, SecretKey::generate())
    }

    /// Imports a hex private key under `name`.
    pub fn import(&self, name: &str, private_key_hex: &str) -> Result<StoredKey, KeystoreError> {
        self.store(name, SecretKey::from_hex(private_key_hex)?)
    }

    fn store(&self, name: &str, secret: SecretKey) -> Result<StoredKey, KeystoreError> {
        let path = self.path_of(name)?;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeystoreError::Io { path, source }
        };
        create_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let file = KeyFile {
            name: name.to_owned(),
            address: secret.address().to_string(),
            public_key: secret.public_key().to_hex(),
            private_key: secret.to_hex(),
            created_at: Value::String(iso8601_now()),
        };
        let json = serde_json::to_string_pretty(&file)
            .map_err(|e| KeystoreError::Malformed { path: path.clone(), reason: e.to_string() })?;
        // `create_new` makes "exists already" atomic: two processes cannot both write the name.
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeystoreError::AlreadyExists { name: name.to_owned(), dir: self.dir.clone() }
            } else {
                KeystoreError::Io { path: path.clone(), source: e }
            }
        })?;
        f.write_all(json.as_bytes()).and_then(|()| f.sync_all()).map_err(io_err(&path))?;
        Ok(StoredKey { name: name.to_owned(), address: secret.address(), secret, file })
    }

    /// Loads the key `name`, checking that its address and public key match its private key.
    pub fn load(&self, name: &str) -> Result<StoredKey, KeystoreError> {
        let path = self.path_of(name)?;
        let text = fs::read_to_string(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                KeystoreError::UnknownKey { name: name.to_owned(), dir: self.dir.clone() }
            } else {
                KeystoreError::Io { path: path.clone(), source: e }
            }
        })?;
        Self::parse(&path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<StoredKey, KeystoreError> {
        let malformed =
            |reason: String| KeystoreError::Malformed { path: path.to_path_buf(), reason };
        let file: KeyFile = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let secret =
            SecretKey::from_hex(&file.private_key).map_err(|e| malformed(e.to_string()))?;
        let address = secret.address();
        if address.as_str() != file.address {
            return Err(malformed(format!(
                "address {} does not match the private key (which gives {address})",
                file.address
            )));
        }
        if !file.public_key.eq_ignore_ascii_case(&secret.public_key().to_hex()) {
            return Err(malformed("public_key does not match the private key".to_owned()));
        }
        Ok(StoredKey { name: file.name.clone(), secret, address, file })
    }

    /// Every key in the directory, sorted by name; unreadable files are reported, not skipped silently.
    pub fn list(&self) -> Result<Vec<Result<StoredKey, KeystoreError>>, KeystoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KeystoreError::Io { path: self.dir.clone(), source: e }),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|p| match fs::read_to_string(&p) {
                Ok(text) => Self::parse(&p, &text),
                Err(source) => Err(KeystoreError::Io { path: p, source }),
            })
            .collect())
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS`, like Python's `datetime.utcnow().isoformat()` to the second.
fn iso8601_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_import_load_list_and_refuse_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keystore::new(dir.path().join("keys"));
        let a = ks.add("alice").expect("add");
        let b = ks
            .import("faucet", "4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c")
            .expect("import");
        assert_eq!(ks.load("alice").expect("load").address, a.address);
        assert!(matches!(ks.add("alice"), Err(KeystoreError::AlreadyExists { .. })));
        assert!(matches!(ks.load("bob"), Err(KeystoreError::UnknownKey { .. })));
        assert!(matches!(ks.add("../evil"), Err(KeystoreError::InvalidName(_))));
        let names: Vec<String> =
            ks.list().expect("list").into_iter().map(|k| k.expect("key").name).collect();
        assert_eq!(names, vec!["alice", "faucet"]);
        assert_eq!(
            b.file.private_key,
            "4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("keys/alice.json"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn tampered_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keystore::new(dir.path());
        let k = ks.add("k").expect("add");
        let mut file = k.file.clone();
        file.address = "cpc1muep0ykx9jzhk6ndjut87p0a657napp53he03n".into();
        fs::write(dir.path().join("k.json"), serde_json::to_string(&file).expect("json"))
            .expect("write");
        assert!(matches!(ks.load("k"), Err(KeystoreError::Malformed { .. })));
    }

    #[test]
    fn iso_date_has_the_right_shape() {
        let s = iso8601_now();
        assert_eq!(s.len(), 19);
        assert!(s.starts_with("20"));
    }
}
