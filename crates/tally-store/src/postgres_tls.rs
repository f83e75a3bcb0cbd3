//! TLS to PostgreSQL, chosen by the connection URL's `sslmode` and `sslrootcert` as libpq reads
//! them, with rustls (ring) doing the work:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | – |
//! | `prefer` (the default, as libpq) | when the server offers TLS | no |
//! | `require` | yes, or the connection fails | no |
//! | `verify-ca` | yes | chain up to `sslrootcert` |
//! | `verify-full` | yes | chain, and the host name the URL names |
//!
//! `sslrootcert` is a PEM file of trusted roots, or `system` for the Mozilla roots compiled in
//! (webpki-roots). tokio-postgres itself knows only `disable`, `prefer` and `require`, and no
//! `sslrootcert`: the URL it is given has the two verifying modes rewritten to `require` and
//! `sslrootcert` removed, the checks being done by the rustls configuration built here.

use crate::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// What `sslmode` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// How to connect: the URL to hand to tokio-postgres, and the TLS configuration, if any.
pub struct Connector {
    pub url: String,
    pub mode: SslMode,
    pub tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Connector {
    /// A new connection, with TLS as `sslmode` asked.
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            Some(tls) => postgres::Client::connect(&self.url, tls.clone()),
            None => postgres::Client::connect(&self.url, postgres::NoTls),
        }
    }
}

/// Reads `sslmode` and `sslrootcert` from a `postgres://` URL and builds the connector.
pub fn connector(url: &str) -> Result<Connector, StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = SslMode::Prefer;
    let mut root_cert: Option<String> = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "sslmode" => mode = parse_mode(&value)?,
            "sslrootcert" => root_cert = Some(value.into_owned()),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    let passed_mode = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(kept.iter().map(|(key, value)| (key.as_str(), value.as_str())));
    query.append_pair("sslmode", passed_mode);
    let url = format!("{base}?{}", query.finish());
    let tls = match mode {
        SslMode::Disable => None,
        SslMode::Prefer | SslMode::Require => Some(unverified()),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = roots(root_cert.as_deref())?;
            Some(verified(roots, mode == SslMode::VerifyFull)?)
        }
    }
    .map(tokio_postgres_rustls::MakeRustlsConnect::new);
    Ok(Connector { url, mode, tls })
}

fn parse_mode(value: &str) -> Result<SslMode, StoreError> {
    Ok(match value {
        "disable" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(StoreError::Database(format!(
                "sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"
            )))
        }
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(root_cert: Option<&str>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None => {
            return Err(StoreError::Database(
                "sslmode=verify-ca and verify-full need sslrootcert=<PEM file> (or sslrootcert=system)".into(),
            ))
        }
        Some("system") => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                .map_err(|error| StoreError::Database(format!("cannot read sslrootcert {path}: {error}")))?;
            let (added, _ignored) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(StoreError::Database(format!("sslrootcert {path} holds no usable certificate")));
            }
        }
    }
    Ok(roots)
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
}

fn verified(roots: RootCertStore, check_host: bool) -> Result<ClientConfig, StoreError> {
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|error| StoreError::Database(format!("cannot use sslrootcert: {error}")))?;
    let config = if check_host {
        builder().with_webpki_verifier(webpki).with_no_client_auth()
    } else {
        builder().dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(webpki))).with_no_client_auth()
    };
    Ok(config)
}

fn unverified() -> ClientConfig {
    builder().dangerous().with_custom_certificate_verifier(Arc::new(Unverified(provider()))).with_no_client_auth()
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate may differ
/// from the host connected to (libpq's meaning).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
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

/// `prefer` and `require`: encrypted, the certificate not checked (libpq's meaning: protects
/// against eavesdropping, not against an impostor). The handshake's signatures are still
/// checked, so the session is bound to the key the certificate names.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifying_modes_reach_tokio_postgres_as_require_without_sslrootcert() {
        let connector =
            connector("postgres://u@localhost/db?sslmode=verify-ca&sslrootcert=system&application_name=t").unwrap();
        assert_eq!(connector.mode, SslMode::VerifyCa);
        assert_eq!(connector.url, "postgres://u@localhost/db?application_name=t&sslmode=require");
        assert!(connector.tls.is_some());
    }

    #[test]
    fn no_sslmode_means_prefer_and_disable_means_no_tls() {
        let preferred = connector("postgres://u@localhost/db").unwrap();
        assert_eq!(
            (preferred.mode, preferred.url.as_str()),
            (SslMode::Prefer, "postgres://u@localhost/db?sslmode=prefer")
        );
        assert!(preferred.tls.is_some());
        let disabled = connector("postgres://u@localhost/db?sslmode=disable").unwrap();
        assert!(disabled.tls.is_none());
    }

    #[test]
    fn unknown_modes_and_verification_without_roots_are_refused() {
        for url in ["postgres://h/db?sslmode=allow", "postgres://h/db?sslmode=verify-full"] {
            let Err(StoreError::Database(message)) = connector(url) else { panic!("{url} accepted") };
            assert!(message.contains("sslmode") || message.contains("sslrootcert"), "{message}");
        }
    }
}
