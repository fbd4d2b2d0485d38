//! Connection options: credentials sent with every call and TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_proto::mcp_service_client::McpServiceClient;
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{Client, ClientError};

/// A credential the gateway accepts.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Sent as `x-api-key`.
    ApiKey(String),
    /// A JWT, sent as `authorization: Bearer …`.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ApiKey(_) => f.write_str("ApiKey([redacted])"),
            Credential::Token(_) => f.write_str("Token([redacted])"),
        }
    }
}

/// TLS towards the gateway: the CA that signed its certificate and,
/// for mTLS, this client's certificate and key (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to verify in the server certificate; default: the
    /// endpoint's host.
    pub domain: Option<String>,
}

/// How [`Client::connect_with`] connects.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub credential: Option<Credential>,
    /// `None` = plain HTTP/2 unless the endpoint is `https://` (which then
    /// needs a CA here).
    pub tls: Option<TlsOptions>,
}

/// Adds the credential to every call's metadata.
#[derive(Clone, Default)]
pub struct Credentials {
    header: Option<(MetadataKey<tonic::metadata::Ascii>, AsciiMetadataValue)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("header", &self.header.as_ref().map(|(k, _)| k.as_str()))
            .finish()
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some((k, v)) = &self.header {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Tls {
        what: format!("cannot read {}", path.display()),
        source: Some(source),
    })
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`, `https://host:port`; a
    /// bare `host:port` gets `http://`, or `https://` when TLS options are
    /// given) with a credential and TLS.
    pub async fn connect_with(endpoint: &str, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let uri = match endpoint.split_once("://") {
            Some(("http", rest)) if opts.tls.is_some() => format!("https://{rest}"),
            Some(_) => endpoint.to_owned(),
            None => format!("{scheme}://{endpoint}"),
        };
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(|source| ClientError::BadEndpoint {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if uri.starts_with("https://") {
            let Some(t) = &opts.tls else {
                return Err(ClientError::Tls {
                    what: format!("{uri} needs a CA certificate (--ca)"),
                    source: None,
                });
            };
            let Some(ca) = &t.ca else {
                return Err(ClientError::Tls {
                    what: "TLS needs the CA certificate that signed the gateway's (--ca)"
                        .to_owned(),
                    source: None,
                });
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            match (&t.cert, &t.key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
                }
                (None, None) => {}
                _ => {
                    return Err(ClientError::Tls {
                        what: "a client certificate needs its key (--cert with --key)".to_owned(),
                        source: None,
                    });
                }
            }
            if let Some(d) = &t.domain {
                tls = tls.domain_name(d.clone());
            }
            ep = ep
                .tls_config(tls)
                .map_err(|source| ClientError::BadEndpoint {
                    endpoint: endpoint.to_owned(),
                    source,
                })?;
        }
        let header = match &opts.credential {
            None => None,
            Some(c) => {
                let (name, value) = match c {
                    Credential::ApiKey(k) => ("x-api-key", k.clone()),
                    Credential::Token(t) => ("authorization", format!("Bearer {t}")),
                };
                let mut v: AsciiMetadataValue = value.parse().map_err(|_| ClientError::Tls {
                    what: "the credential is not valid header text".to_owned(),
                    source: None,
                })?;
                v.set_sensitive(true);
                Some((MetadataKey::from_static(name), v))
            }
        };
        let channel = ep.connect().await.map_err(|source| ClientError::Connect {
            endpoint: uri,
            source,
        })?;
        Ok(Self {
            inner: McpServiceClient::with_interceptor(channel, Credentials { header })
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
        })
    }
}
