//! `[api]`: where the HTTP API listens and who may read it.

use serde::{Deserialize, Serialize};

use crate::settings::{invalid, ConfigError};

/// The HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where `run` serves the API (off when unset); `serve` defaults to 127.0.0.1:8080.
    pub listen: Option<String>,
    /// Bearer token that may read every tenant.
    pub admin_token: Option<String>,
    /// tenant → bearer token that reads only that tenant.
    pub tenant_tokens: std::collections::BTreeMap<String, String>,
    /// PEM certificate chain and private key: the API serves HTTPS (rustls).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Allows plain HTTP on a non-loopback address, for a TLS-terminating proxy or mesh
    /// in front. Without it, such an address needs the TLS files.
    pub insecure_plaintext: bool,
    /// Requests per second each token may make (a burst of as many); more get 429.
    /// 0 turns the limit off.
    pub rate_limit_per_token: u32,
    /// Whether `/graphql` answers introspection queries (`__schema`, `__type`).
    /// Default true; the schema is published in `schemas/schema.graphql` either way.
    pub graphql_introspection: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            admin_token: None,
            tenant_tokens: Default::default(),
            tls_cert_file: None,
            tls_key_file: None,
            insecure_plaintext: false,
            rate_limit_per_token: 100,
            graphql_introspection: true,
        }
    }
}

impl ApiConfig {
    pub fn has_tokens(&self) -> bool {
        self.admin_token.is_some() || !self.tenant_tokens.is_empty()
    }

    /// The certificate and key files when the API serves TLS.
    pub fn tls_files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        self.tls_cert_file
            .as_deref()
            .zip(self.tls_key_file.as_deref())
    }
}

/// Checks an API listen address: without tokens, only loopback is allowed.
pub fn check_listen(api: &ApiConfig, listen: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "api.listen",
            format!("{listen:?} is not an address"),
            "use host:port, e.g. \"127.0.0.1:8080\"",
        )
    })?;
    if !api.has_tokens() && !addr.ip().is_loopback() {
        return Err(invalid(
            "api.listen",
            format!("{addr} is reachable from other hosts and no tokens are configured"),
            "set api.admin_token and/or api.tenant_tokens, or listen on 127.0.0.1",
        ));
    }
    if api.tls_files().is_none() && !api.insecure_plaintext && !addr.ip().is_loopback() {
        return Err(invalid(
            "api.listen",
            format!("{addr} is reachable from other hosts over plain HTTP, bearer tokens included"),
            "set api.tls_cert_file and api.tls_key_file, or api.insecure_plaintext = true \
             when a proxy or mesh in front terminates TLS",
        ));
    }
    Ok(addr)
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let (missing, set) = match self.tls_cert_file {
                Some(_) => ("api.tls_key_file", "api.tls_cert_file"),
                None => ("api.tls_cert_file", "api.tls_key_file"),
            };
            return Err(invalid(
                missing,
                format!("is missing while {set} is set"),
                "set both, or neither",
            ));
        }
        if let Some(listen) = &self.listen {
            check_listen(self, listen)?;
        }
        for (tenant, token) in &self.tenant_tokens {
            crate::flow::validate_identifier("tenant", tenant)
                .map_err(|e| invalid("api.tenant_tokens", e, "key the map by tenant id"))?;
            if token.len() < 16 {
                return Err(invalid(
                    "api.tenant_tokens",
                    format!("the token of {tenant} is shorter than 16 characters"),
                    "use a long random token, e.g. `openssl rand -hex 32`",
                ));
            }
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "api.admin_token",
                "shorter than 16 characters",
                "use a long random token, e.g. `openssl rand -hex 32`",
            ));
        }
        // A token names one caller: shared, it would read with whichever scope the
        // lookup met first.
        let mut owners: std::collections::BTreeMap<&str, String> = Default::default();
        let named = self
            .admin_token
            .iter()
            .map(|t| (t.as_str(), "api.admin_token".to_string()))
            .chain(
                self.tenant_tokens
                    .iter()
                    .map(|(tenant, t)| (t.as_str(), format!("api.tenant_tokens.{tenant}"))),
            );
        for (token, key) in named {
            if let Some(first) = owners.insert(token, key.clone()) {
                return Err(invalid(
                    "api.tenant_tokens",
                    format!("{first} and {key} have the same token"),
                    "give every caller a token of its own",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(admin: Option<&str>, tenants: &[(&str, &str)]) -> ApiConfig {
        ApiConfig {
            admin_token: admin.map(str::to_string),
            tenant_tokens: tenants
                .iter()
                .map(|(t, k)| (t.to_string(), k.to_string()))
                .collect(),
            ..ApiConfig::default()
        }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb";

    /// Every refusal of `[api]`, each naming its key.
    #[test]
    fn every_refusal_names_its_key() {
        let refused = |c: ApiConfig, key: &str, says: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{e}");
        };
        refused(api(Some("short"), &[]), "api.admin_token", "16");
        refused(api(None, &[("acme", "short")]), "api.tenant_tokens", "16");
        refused(api(None, &[("../x", A)]), "api.tenant_tokens", "..");
        refused(
            api(None, &[("acme", A), ("beta", A)]),
            "api.tenant_tokens",
            "same token",
        );
        refused(
            api(Some(A), &[("acme", A)]),
            "api.admin_token",
            "same token",
        );
        let mut open = api(None, &[]);
        open.listen = Some("0.0.0.0:8080".into());
        refused(open.clone(), "api.listen", "no tokens");
        open.listen = Some("localhost:8080".into());
        refused(open.clone(), "api.listen", "not an address");
        // Loopback needs no token; any address does once tokens exist.
        open.listen = Some("127.0.0.1:8080".into());
        open.validate().unwrap();
        // Beyond loopback, tokens travel only over TLS, unless a proxy in front says so.
        let mut guarded = api(Some(A), &[("acme", B)]);
        guarded.listen = Some("0.0.0.0:8080".into());
        refused(guarded.clone(), "api.listen", "plain HTTP");
        guarded.tls_cert_file = Some("cert.pem".into());
        refused(guarded.clone(), "api.tls_key_file", "both");
        guarded.tls_key_file = Some("key.pem".into());
        guarded.validate().unwrap();
        guarded.tls_cert_file = None;
        refused(guarded.clone(), "api.tls_cert_file", "both");
        guarded.tls_key_file = None;
        guarded.insecure_plaintext = true;
        guarded.validate().unwrap();
    }
}
