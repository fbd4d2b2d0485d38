//! The listener: plain TCP, or TLS (rustls, ring provider) with an optional
//! client-certificate verifier. Handshakes run in their own tasks, bounded
//! in number and time, so a slow or silent client never stalls `accept`.
//! The server certificate sits behind an [`ArcSwap`] and is reloaded when
//! its files change (a notify watcher); a broken new pair is refused with a
//! warning and the previous one keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use notify::{RecursiveMode, Watcher};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use super::config::TlsSettings;
use super::mtls::ClientCert;

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 256;
/// Changes to the certificate files are gathered this long before a reload,
/// so a key and a certificate written one after the other load together.
const RELOAD_SETTLE: Duration = Duration::from_millis(200);

/// TLS set-up failures (at start-up only).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("tls.key {key} does not fit tls.cert {cert}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("tls.client_ca {path} is unusable")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("rustls refused the configuration")]
    Rustls(#[from] rustls::Error),
    #[error("cannot watch the certificate files")]
    Watch(#[from] notify::Error),
}

/// Who is at the other end of a connection: its address and, over mTLS,
/// the names of its verified certificate. The connect info of every request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert: Option<Arc<ClientCert>>,
}

impl Connected<IncomingStream<'_, PlainListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Plain TCP (HTTP/1.1 and cleartext HTTP/2).
#[derive(Debug)]
pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        // Small gRPC and SSE frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        (tcp, Peer { addr, cert: None })
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.0.local_addr()?,
            cert: None,
        })
    }
}

/// TLS over TCP; finished handshakes arrive through a channel.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    acceptor_task: tokio::task::JoinHandle<()>,
    _reload: Option<CertWatcher>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl TlsListener {
    /// Wraps `tcp` with TLS as `settings` say: loads the certificate, key
    /// and client CA bundle now (failing start-up if they are unusable) and
    /// starts the reload watcher.
    pub fn new(tcp: TcpListener, settings: &TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(ReloadingCert {
            current: ArcSwap::from_pointee(load_certified_key(
                &provider,
                &settings.cert,
                &settings.key,
            )?),
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca, "tls.client_ca")? {
                    roots.add(cert).map_err(|e| TlsError::ClientCa {
                        path: ca.clone(),
                        source: Box::new(e),
                    })?;
                }
                let mut v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if !settings.require_client_cert {
                    v = v.allow_unauthenticated();
                }
                builder.with_client_cert_verifier(v.build().map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    source: Box::new(e),
                })?)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        // gRPC clients insist on h2 by ALPN; REST clients may use either.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let reload = if settings.watch {
            Some(CertWatcher::start(
                resolver,
                provider,
                settings.cert.clone(),
                settings.key.clone(),
            )?)
        } else {
            None
        };
        let local = tcp
            .local_addr()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor_task = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(Arc::new(config)), tx));
        Ok(Self {
            local,
            ready,
            acceptor_task,
            _reload: reload,
        })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ended (it only does when aborted): serve no more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            cert: None,
        })
    }
}

async fn accept_loop(
    mut tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, addr) = Listener::accept(&mut tcp).await;
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| ClientCert::from_der(der))
                        .map(Arc::new);
                    let _ = ready.send((tls, Peer { addr, cert })).await;
                }
                // Failed handshakes (unknown CA, plain HTTP on a TLS port)
                // are the client's problem; debug keeps scanners out of the log.
                Ok(Err(e)) => debug!(peer = %addr, error = %e, "TLS handshake failed"),
                Err(_) => debug!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}

/// The served certificate, swapped whole on reload.
#[derive(Debug)]
struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Every certificate of a PEM file (none when it holds none); the server's
/// chain, the client CA bundle and the policy bundle server's CA file.
pub(crate) fn pem_certs(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, rustls_pki_types::pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = pem_certs(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn load_certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert, "tls.cert")?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "tls.key",
            path: key.to_path_buf(),
            expected: "PRIVATE KEY",
        },
        source => TlsError::Read {
            what: "tls.key",
            path: key.to_path_buf(),
            source,
        },
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|source| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    Ok(certified)
}

/// Watches the directories of the certificate and key (a Kubernetes secret
/// mount replaces a symlink, so the files themselves are not enough).
#[derive(Debug)]
struct CertWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CertWatcher {
    fn start(
        resolver: Arc<ReloadingCert>,
        provider: Arc<CryptoProvider>,
        cert: PathBuf,
        key: PathBuf,
    ) -> Result<Self, TlsError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !ev.kind.is_access()
            {
                let _ = tx.send(());
            }
        })?;
        let mut dirs: Vec<PathBuf> = [&cert, &key]
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.dedup();
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(RELOAD_SETTLE).await;
                while rx.try_recv().is_ok() {}
                match load_certified_key(&provider, &cert, &key) {
                    Ok(new) => {
                        let changed = new.cert != resolver.current.load().cert;
                        if changed {
                            resolver.current.store(Arc::new(new));
                            info!(cert = %cert.display(), "TLS certificate reloaded");
                        }
                    }
                    Err(e) => warn!(
                        error = %e,
                        cert = %cert.display(),
                        "TLS certificate reload refused; the previous certificate keeps serving"
                    ),
                }
            }
        });
        Ok(Self {
            _watcher: watcher,
            task,
        })
    }
}
