//! The coordinator's identity on disk: a self-signed certificate (agents pin its SHA-256 fingerprint instead of
//! trusting a CA) and the join token agents must present. Both are made on first start in the data directory
//! and reused afterwards, so the agent command line printed once stays valid across restarts; or they come
//! from a directory the operator provides ([`Identity::load`], `--identity-dir`: a Kubernetes Secret).

use super::FarmError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
};

/// File name of the certificate (PEM) in the data directory.
pub const CERT_FILE: &str = "coordinator.crt";
/// File name of the private key (PEM, mode 0600) in the data directory.
pub const KEY_FILE: &str = "coordinator.key";
/// File name of the join token in the data directory.
pub const TOKEN_FILE: &str = "join-token";
/// DNS name in the certificate (agents pin the fingerprint, so the name is informative only).
pub const SERVER_NAME: &str = "cpc-coordinator";

/// Certificate, key and join token of a coordinator.
pub struct Identity {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The join token agents present.
    pub token: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { cert: self.cert.clone(), key: self.key.clone_key(), token: self.token.clone() }
    }
}

/// SHA-256 of a certificate's DER, lower-case hex: what `--coordinator-fingerprint` pins.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(cpc_common::sha256(cert_der))
}

impl Identity {
    /// The QUIC stateless-reset key material: derived from the private key, so it is the same after a
    /// restart. A restarted coordinator then answers an agent's next packet on the old connection with a
    /// stateless reset the agent recognises, and the agent reconnects at once instead of waiting for its
    /// idle timeout.
    pub fn stateless_reset_secret(&self) -> [u8; 32] {
        let mut material = b"cpcfarm stateless reset v1".to_vec();
        material.extend_from_slice(self.key.secret_der());
        cpc_common::sha256(&material)
    }

    /// A fresh identity held in memory only (tests, throw-away farms).
    pub fn generate() -> Result<Self, FarmError> {
        let ck = rcgen::generate_simple_self_signed(vec![
            SERVER_NAME.to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| FarmError::Identity(format!("could not generate a certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der())
            .map_err(|e| FarmError::Identity(format!("generated key is unusable: {e}")))?;
        Ok(Self { cert: ck.cert.der().clone(), key, token: random_token() })
    }

    /// Loads the identity from `dir`, creating it (and the directory) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, FarmError> {
        let (cert_path, key_path, token_path) =
            (dir.join(CERT_FILE), dir.join(KEY_FILE), dir.join(TOKEN_FILE));
        let io = |what: &str, path: &Path, e: std::io::Error| {
            FarmError::Identity(format!(
                "{what} {}: {e} (check --data-dir and its permissions)",
                path.display()
            ))
        };
        if !cert_path.exists() || !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
            let ck = rcgen::generate_simple_self_signed(vec![
                SERVER_NAME.to_owned(),
                "localhost".to_owned(),
            ])
            .map_err(|e| FarmError::Identity(format!("could not generate a certificate: {e}")))?;
            write_private(&key_path, ck.key_pair.serialize_pem().as_bytes())
                .map_err(|e| io("cannot write", &key_path, e))?;
            std::fs::write(&cert_path, ck.cert.pem())
                .map_err(|e| io("cannot write", &cert_path, e))?;
        }
        if !token_path.exists() {
            write_private(&token_path, format!("{}\n", random_token()).as_bytes())
                .map_err(|e| io("cannot write", &token_path, e))?;
        }
        refuse_if_shared(&key_path)?;
        refuse_if_shared(&token_path)?;
        Self::load(dir)
    }

    /// Loads the identity from `dir` and creates nothing: for a directory an operator provides (a
    /// Kubernetes Secret, a backup), so a lost data volume never changes the fingerprint agents pin. Secret
    /// files that others can read get a warning here, not a refusal: a mounted Secret's mode is the
    /// orchestrator's (`defaultMode`), and the data dir's own files are checked by [`Self::load_or_create`].
    pub fn load(dir: &Path) -> Result<Self, FarmError> {
        let (cert_path, key_path, token_path) =
            (dir.join(CERT_FILE), dir.join(KEY_FILE), dir.join(TOKEN_FILE));
        for secret in [&key_path, &token_path] {
            if let Err(e) = refuse_if_shared(secret) {
                tracing::warn!("{e}");
            }
        }
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| {
            FarmError::Identity(format!("cannot read {}: {e}", cert_path.display()))
        })?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| FarmError::Identity(format!("cannot read {}: {e}", key_path.display())))?;
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| FarmError::Identity(format!("cannot read {}: {e}", token_path.display())))?
            .trim()
            .to_owned();
        if token.len() < MIN_TOKEN_CHARS {
            return Err(FarmError::Identity(format!(
                "{} holds a join token of {} characters; at least {MIN_TOKEN_CHARS} are needed (128 bits \
                 of hex): delete the file to get a new random token",
                token_path.display(),
                token.len()
            )));
        }
        Ok(Self { cert, key, token })
    }

    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// Paths of the three files in `dir`.
    pub fn paths(dir: &Path) -> [PathBuf; 3] {
        [dir.join(CERT_FILE), dir.join(KEY_FILE), dir.join(TOKEN_FILE)]
    }
}

/// Shortest join token accepted: 32 hex characters carry 128 bits (tokens made here have 192).
pub const MIN_TOKEN_CHARS: usize = 32;

/// Refuses a secret file that others can read or write, as ssh refuses such a private key: the key and the
/// token let anyone impersonate this coordinator or join its farm.
pub(crate) fn refuse_if_shared(path: &Path) -> Result<(), FarmError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(|e| FarmError::Identity(format!("cannot read {}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(FarmError::Identity(format!(
                "{} is accessible by other users (mode {:o}): run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            )));
        }
    }
    Ok(())
}

pub(crate) fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents)
}

/// Constant-time comparison of a presented token with the expected one (hashing first hides the length).
pub fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let (a, b) = (cpc_common::sha256(presented), cpc_common::sha256(expected));
    bool::from(a.ct_eq(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Identity::load_or_create(dir.path()).expect("create");
        let b = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.token, b.token);
        assert_eq!(a.fingerprint().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode =
                std::fs::metadata(dir.path().join(KEY_FILE)).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn shared_key_files_and_short_tokens_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        Identity::load_or_create(dir.path()).expect("create");
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Identity::load_or_create(dir.path()).expect_err("0644 key refused").to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        write_private(&dir.path().join(TOKEN_FILE), b"x\n").expect("write");
        let e = Identity::load_or_create(dir.path()).expect_err("short token refused").to_string();
        assert!(e.contains("at least 32"), "{e}");
    }

    #[test]
    fn tokens_compare() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
