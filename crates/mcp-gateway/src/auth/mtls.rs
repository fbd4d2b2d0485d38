//! Client certificates: rustls has already verified the chain against
//! `tls.client_ca` during the handshake; here the leaf's names (subject CN,
//! DNS and URI SANs, e.g. a SPIFFE id) are read once per connection and
//! mapped to a principal by the `[[auth.mtls]]` rules.

use mcp_core::{AuthMethod, Principal};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Which name of the certificate a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    SanUri,
    SanDns,
    Cn,
}

/// One `[[auth.mtls]]` rule.
#[derive(Debug, Clone)]
pub struct CertRule {
    pub kind: NameKind,
    /// Exact name, or a prefix followed by `*`.
    pub pattern: String,
    pub id: Option<String>,
    pub tenant: String,
    pub roles: Vec<String>,
}

impl CertRule {
    fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.pattern,
        }
    }
}

/// The names of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub cn: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
}

impl ClientCert {
    /// Reads the names of a DER certificate; `None` when it does not parse
    /// (rustls accepted it, so this is not expected).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let mut out = Self {
            cn,
            ..Self::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => out.dns.push((*d).to_owned()),
                    GeneralName::URI(u) => out.uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        Some(out)
    }

    /// The principal of the first rule that matches one of the names.
    pub fn principal(&self, rules: &[CertRule]) -> Option<Principal> {
        for rule in rules {
            let names: &[String] = match rule.kind {
                NameKind::SanUri => &self.uris,
                NameKind::SanDns => &self.dns,
                NameKind::Cn => self.cn.as_slice(),
            };
            if let Some(name) = names.iter().find(|n| rule.matches(n)) {
                return Some(Principal {
                    id: rule.id.clone().unwrap_or_else(|| name.clone()),
                    tenant: rule.tenant.clone(),
                    roles: rule.roles.clone(),
                    auth: AuthMethod::Mtls,
                });
            }
        }
        None
    }
}
