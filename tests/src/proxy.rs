//! A TCP proxy in front of a devnet, for the L1 failure and TLS tests: it forwards, or it "hangs"
//! (accepts connections and never answers, the failure a request deadline must catch), or it is slow
//! (holds every request for a while before passing it on, as a node busy with load does), and it can
//! terminate TLS with a certificate from a throw-away test CA ([`TestCa`]), so the coordinator's
//! `https://` support is exercised against a real TLS server.
//!
//! The proxy runs on its own thread and tokio runtime, so blocking tests can drive it.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Proxy set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Binding or starting the proxy's runtime failed.
    #[error("cannot start the proxy: {0}")]
    Io(#[from] std::io::Error),
    /// Making the test certificates failed.
    #[error("cannot make the test certificates: {0}")]
    Certificate(String),
}

/// A certificate authority made for one test, and a server certificate it signed for `localhost` and
/// `127.0.0.1`.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate, PEM (what a client must trust, e.g. through `SSL_CERT_FILE`).
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A fresh CA and server certificate.
    pub fn new() -> Result<Self, ProxyError> {
        let err = |e: rcgen::Error| ProxyError::Certificate(e.to_string());
        let ca_key = rcgen::KeyPair::generate().map_err(err)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "cpc-farm test CA");
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let server_key = rcgen::KeyPair::generate().map_err(err)?;
        let server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(err)?;
        let server_cert = server_params.signed_by(&server_key, &ca, &ca_key).map_err(err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ProxyError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(server_cert.der().to_vec())], key)
            .map_err(|e| ProxyError::Certificate(e.to_string()))?;
        Ok(Self { ca_pem: ca.pem(), server: Arc::new(server) })
    }
}

/// A running proxy (stopped when dropped).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    tls: bool,
    hung: watch::Sender<bool>,
    delay: watch::Sender<Duration>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// A plain TCP proxy on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Self, ProxyError> {
        Self::spawn(upstream, None)
    }

    /// A proxy that terminates TLS with `ca`'s server certificate and forwards plain HTTP to `upstream`.
    pub fn start_tls(upstream: SocketAddr, ca: &TestCa) -> Result<Self, ProxyError> {
        Self::spawn(upstream, Some(tokio_rustls::TlsAcceptor::from(Arc::clone(&ca.server))))
    }

    fn spawn(
        upstream: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Self, ProxyError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (hung, hung_rx) = watch::channel(false);
        let (delay, delay_rx) = watch::channel(Duration::ZERO);
        let held = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let is_tls = tls.is_some();
        let held_by_loop = Arc::clone(&held);
        let thread = thread::Builder::new().name("test-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                tokio::select! {
                    () = accept_loop(listener, upstream, tls, hung_rx, delay_rx, held_by_loop) => {}
                    _ = stop_rx => {}
                }
            });
        })?;
        Ok(Self { addr, tls: is_tls, hung, delay, held, stop: Some(stop), thread: Some(thread) })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `https://localhost:PORT` when it terminates TLS, else `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Hung: connections in progress are cut, new ones are accepted and never answered. Not hung:
    /// forwards again (held connections stay unanswered).
    pub fn set_hung(&self, hung: bool) {
        let _ = self.hung.send(hung);
    }

    /// Slow: every chunk a client sends (a request) waits `delay` before it is passed on; zero: no wait.
    pub fn set_delay(&self, delay: Duration) {
        let _ = self.delay.send(delay);
    }

    /// Connections accepted while hung and held open.
    pub fn held_connections(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies both ways between `client` and `server`; what the client sends waits the current `delay` first.
async fn relay<C>(
    client: C,
    server: TcpStream,
    delay: watch::Receiver<Duration>,
) -> std::io::Result<()>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            let wait = *delay.borrow();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let answers = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::try_join!(requests, answers).map(|_| ())
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    hung: watch::Receiver<bool>,
    delay: watch::Receiver<Duration>,
    held: Arc<Mutex<Vec<TcpStream>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if *hung.borrow() {
            if let Ok(mut held) = held.lock() {
                held.push(client);
            }
            continue;
        }
        let (tls, mut hung, delay) = (tls.clone(), hung.clone(), delay.clone());
        tokio::spawn(async move {
            let forward = async {
                let server = TcpStream::connect(upstream).await?;
                match tls {
                    Some(acceptor) => relay(acceptor.accept(client).await?, server, delay).await,
                    None => relay(client, server, delay).await,
                }
            };
            tokio::select! {
                _ = forward => {}
                _ = hung.wait_for(|&h| h) => {}
            }
        });
    }
}
