use serde::{Deserialize, Serialize};

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// No authentication is configured; only allowed on loopback listeners.
    None,
    ApiKey,
    Jwt,
    Mtls,
}

/// Who is asking. Every task, decision and file operation carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub auth: AuthMethod,
}

impl Principal {
    /// The principal of a request on a gateway that has no authentication
    /// configured (loopback only).
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".to_owned(),
            tenant: "default".to_owned(),
            roles: Vec::new(),
            auth: AuthMethod::None,
        }
    }
}
