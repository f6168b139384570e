//! TLS for the HTTP clients (S3 through object_store, OTLP over HTTP): rustls with the
//! `ring` provider, the one crypto stack in the build (async-nats uses it too).
//! reqwest is built without a bundled provider, so the provider is installed for the
//! process before the first client is made; [`install_crypto_provider`] is called by
//! everything that makes one. On the ground floor: imports nothing from the crate.

use std::sync::Once;

/// Makes `ring` the process's rustls provider (once; a provider installed earlier by
/// someone else is kept).
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means a provider is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_provider_is_installed_and_installing_again_is_harmless() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
