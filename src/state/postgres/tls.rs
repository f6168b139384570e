//! The connection's TLS, from the URL's `sslmode` as libpq reads it: `disable`,
//! `prefer` (TLS when the server offers it), `require` (TLS, certificate not checked),
//! `verify-ca` (certificate signed by a trusted CA) and `verify-full` (and issued for
//! the host). rustls with the process's `ring` provider (`crate::tls`); the trusted CAs
//! are `state.tls_ca_file`, else the system's.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The driver's configuration and TLS connector for `url`.
pub(super) fn client_config(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), String> {
    let (url, mode) = split_sslmode(url)?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("state.url is not a PostgreSQL URL: {e}"))?;
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    if config.get_application_name().is_none() {
        config.application_name("flow-archiver");
    }
    config.connect_timeout(std::time::Duration::from_secs(10));
    crate::tls::install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .ok_or("no TLS provider")?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let tls = match mode {
        Mode::Disable | Mode::Prefer | Mode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
        Mode::VerifyCa | Mode::VerifyFull => {
            let roots = Arc::new(trusted_roots(ca_file)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
            let verifier: Arc<dyn ServerCertVerifier> = match mode {
                Mode::VerifyFull => webpki,
                _ => Arc::new(AnyHostName(webpki)),
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// Takes `sslmode` out of the URL (the driver knows only disable/prefer/require).
fn split_sslmode(url: &str) -> Result<(String, Mode), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("state.url is not a URL: {e}"))?;
    let mut mode = Mode::Prefer;
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        if k == "sslmode" {
            mode = match v.as_ref() {
                "disable" => Mode::Disable,
                "allow" | "prefer" => Mode::Prefer,
                "require" => Mode::Require,
                "verify-ca" => Mode::VerifyCa,
                "verify-full" => Mode::VerifyFull,
                other => {
                    return Err(format!(
                        "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                    ))
                }
            };
        } else {
            rest.push((k.into_owned(), v.into_owned()));
        }
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((parsed.to_string(), mode))
}

fn trusted_roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("state.tls_ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("state.tls_ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("state.tls_ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(
            "no trusted CA for sslmode=verify-ca/verify-full: set state.tls_ca_file".into(),
        );
    }
    Ok(roots)
}

/// `require` as libpq means it: encrypted, the certificate not checked. The handshake's
/// signatures are still verified.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url_and_read_as_libpq_does() {
        let (url, mode) =
            split_sslmode("postgres://u:p@db:5432/x?sslmode=verify-full&application_name=a")
                .unwrap();
        assert_eq!(mode, Mode::VerifyFull);
        assert_eq!(url, "postgres://u:p@db:5432/x?application_name=a");
        let (url, mode) = split_sslmode("postgres://u@db/x").unwrap();
        assert_eq!((url.as_str(), mode), ("postgres://u@db/x", Mode::Prefer));
        let err = split_sslmode("postgres://u@db/x?sslmode=sometimes").unwrap_err();
        assert!(err.contains("sslmode=sometimes"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = client_config(
            "postgres://u@127.0.0.1/x?sslmode=verify-full",
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .err()
        .unwrap();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
