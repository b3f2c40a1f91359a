//! The agent's side of TLS: no certificate authority, only the coordinator's certificate fingerprint given on
//! the command line. The verifier accepts exactly that certificate (constant-time compare of its SHA-256) and
//! still checks the handshake signatures with the crypto provider's algorithms, so only the holder of the
//! pinned certificate's key can complete the handshake.

use cpc_common::{hashing::sha256, wire::ALPN};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use std::sync::{Arc, Mutex};

/// Parses a fingerprint: 64 hex digits, colons and case ignored.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let clean: String = s.trim().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(clean.to_ascii_lowercase(), &mut out).ok()?;
    Some(out)
}

/// Accepts only the pinned certificate.
#[derive(Debug)]
pub struct PinnedVerifier {
    pinned: [u8; 32],
    provider: Arc<CryptoProvider>,
    mismatch: Mutex<Option<String>>,
}

impl PinnedVerifier {
    /// A verifier for `pinned` (the SHA-256 of the certificate's DER).
    pub fn new(pinned: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self { pinned, provider, mismatch: Mutex::new(None) }
    }

    /// The fingerprint of the last certificate refused, if any.
    pub fn last_mismatch(&self) -> Option<String> {
        self.mismatch.lock().ok().and_then(|m| m.clone())
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use subtle::ConstantTimeEq as _;
        let got = sha256(end_entity.as_ref());
        if bool::from(got.ct_eq(&self.pinned)) {
            return Ok(ServerCertVerified::assertion());
        }
        if let Ok(mut m) = self.mismatch.lock() {
            *m = Some(hex::encode(got));
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A QUIC client configuration that trusts only `pinned`, and the verifier (to tell a mismatch apart).
pub fn client_config(
    pinned: [u8; 32],
    transport: quinn::TransportConfig,
) -> Result<(quinn::ClientConfig, Arc<PinnedVerifier>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedVerifier::new(pinned, provider.clone()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok((config, verifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse() {
        let hex64 = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&hex64), Some([0xab; 32]));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(parse_fingerprint("abc"), None);
    }
}
