//! Cluster trust: the CA derived from the passphrase (or an operator's CA),
//! this node's certificate, and the rustls configurations that make every
//! QUIC connection mutually authenticated.
//!
//! The passphrase is stretched with HKDF-SHA256 (fixed salt) into a 32-byte
//! Ed25519 seed; that key is the cluster CA. Every agent derives the same CA
//! key, so any agent can verify any other agent's certificate, and an agent
//! with another passphrase fails the handshake.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use hkdf::Hkdf;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ED25519,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Sha256;

use crate::config::TrustSource;

/// Salt for stretching the passphrase; changing it splits every cluster.
const CA_SALT: &[u8] = b"gossamer-cluster-ca-v1";
/// Name every agent's certificate carries and every dialler asks for.
pub const CLUSTER_SERVER_NAME: &str = "gossamer.mesh";
/// ALPN protocol of agent-to-agent QUIC.
pub const ALPN: &[u8] = b"gossamer/1";
/// Fixed PKCS#8 v1 prefix of an Ed25519 private key: the seed follows it.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What an agent presents and trusts.
#[derive(Debug)]
pub struct ClusterTrust {
    /// The CA every peer's chain must lead to.
    pub ca: CertificateDer<'static>,
    /// This node's certificate chain (leaf first).
    pub chain: Vec<CertificateDer<'static>>,
    /// This node's private key.
    pub key: PrivateKeyDer<'static>,
    /// Secret behind this endpoint's connection ids and stateless-reset
    /// tokens: derived, never sent, and the same on every restart of this
    /// node, so a restarted node recognises (and resets) its old connections.
    pub endpoint_secret: [u8; 32],
    /// The cluster's key for SWIM packets sent as plain UDP (sealed with
    /// ChaCha20-Poly1305), derived from the passphrase: every member of the
    /// cluster, and only they, hold it. None with an operator's CA, where no
    /// shared secret exists; SWIM then rides QUIC datagrams.
    pub gossip_key: Option<[u8; 32]>,
}

impl ClusterTrust {
    /// Builds the trust material for `node_id` from the configured source.
    ///
    /// An operator certificate that names a node (a
    /// `spiffe://gossamer/node/ID` URI SAN) is this node's only if ID is
    /// `node_id`: a node cannot run under another node's id with that
    /// node's certificate, and peers hold every node to its certificate.
    pub fn load(source: &TrustSource, node_id: &str) -> anyhow::Result<Self> {
        match source {
            TrustSource::Passphrase(psk) => Self::from_passphrase(psk, node_id),
            TrustSource::OperatorCa { ca, cert, key } => {
                let trust = Self::from_files(ca, cert, key)?;
                let leaf = trust
                    .chain
                    .first()
                    .context("--tls-cert holds no certificate")?;
                match certified_node_id(leaf) {
                    Err(e) => anyhow::bail!("--tls-cert {}: {e}", cert.display()),
                    Ok(Some(certified)) if certified != node_id => anyhow::bail!(
                        "--tls-cert {} is issued to node {certified:?}, but this node is {node_id:?}; \
                         pass --node-id {certified} or this node's own certificate",
                        cert.display()
                    ),
                    Ok(_) => Ok(trust),
                }
            }
        }
    }

    /// Derives the cluster CA from `psk` and issues a fresh certificate for `node_id`.
    pub fn from_passphrase(psk: &str, node_id: &str) -> anyhow::Result<Self> {
        let ca_key = derive_ca_key(psk)?;
        let ca_params = ca_params();
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("cannot sign the cluster CA certificate")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let node_key =
            KeyPair::generate_for(&PKCS_ED25519).context("cannot generate a node key")?;
        let mut params = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_owned()])
            .context("cannot build node certificate parameters")?;
        let uri = format!("{NODE_URI_PREFIX}{node_id}");
        params.subject_alt_names.push(SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|_| anyhow!("node id {node_id:?} cannot be put in a certificate"))?,
        ));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        let cert = params
            .signed_by(&node_key, &issuer)
            .context("cannot sign this node's certificate")?;
        Ok(Self {
            ca: ca_cert.der().clone(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node_key.serialize_der())),
            endpoint_secret: derive_endpoint_secret(psk.as_bytes(), node_id)?,
            gossip_key: Some(derive_gossip_key(psk.as_bytes())?),
        })
    }

    /// Loads an operator's CA, certificate chain and key from PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let read = |path: &Path, what: &str| {
            std::fs::read(path).with_context(|| {
                format!(
                    "cannot read {what} {}; check the path and its permissions",
                    path.display()
                )
            })
        };
        let ca_pem = read(ca, "--tls-ca")?;
        let ca = CertificateDer::pem_slice_iter(&ca_pem)
            .next()
            .ok_or_else(|| anyhow!("--tls-ca {} holds no PEM certificate", ca.display()))?
            .map_err(|e| anyhow!("--tls-ca {} is not valid PEM: {e}", ca.display()))?;
        let cert_pem = read(cert, "--tls-cert")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("--tls-cert {} is not valid PEM: {e}", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("--tls-cert {} holds no PEM certificate", cert.display());
        }
        let key_pem = read(key, "--tls-key")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow!(
                "--tls-key {} holds no usable private key: {e}",
                key.display()
            )
        })?;
        // The operator's node key is stable and private to this node.
        let endpoint_secret = derive_endpoint_secret(key.secret_der(), "operator-key")?;
        Ok(Self {
            ca,
            chain,
            key,
            endpoint_secret,
            gossip_key: None,
        })
    }

    fn roots(&self) -> anyhow::Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| anyhow!("the cluster CA certificate is not usable: {e}"))?;
        Ok(Arc::new(roots))
    }

    /// rustls server config: requires and verifies a client certificate.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let verifier = WebPkiClientVerifier::builder(self.roots()?)
            .build()
            .map_err(|e| anyhow!("cannot build the client certificate verifier: {e}"))?;
        let mut config =
            rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .with_client_cert_verifier(verifier)
                .with_single_cert(self.chain.clone(), self.key.clone_key())
                .map_err(|e| anyhow!("this node's certificate and key do not match: {e}"))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// rustls client config: presents our certificate, verifies the server's chain.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let inner = rustls::client::WebPkiServerVerifier::builder(self.roots()?)
            .build()
            .map_err(|e| anyhow!("cannot build the server certificate verifier: {e}"))?;
        let mut config =
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier { inner }))
                .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
                .map_err(|e| anyhow!("this node's certificate and key do not match: {e}"))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// URI SAN prefix that binds a certificate to a node id.
pub const NODE_URI_PREFIX: &str = "spiffe://gossamer/node/";

/// The node id `cert` is issued to: its `spiffe://gossamer/node/ID` URI
/// SAN. `None` when it names no node (an operator certificate may bind no
/// id); an error when it cannot be read or names two nodes.
pub fn certified_node_id(cert: &CertificateDer<'_>) -> Result<Option<String>, String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let mut ids = parsed
        .valid_uri_names()
        .filter_map(|uri| uri.strip_prefix(NODE_URI_PREFIX));
    match (ids.next(), ids.next()) {
        (Some(a), Some(b)) => Err(format!(
            "the certificate names two nodes ({a:?} and {b:?}); issue one per node"
        )),
        (id, _) => Ok(id.map(str::to_owned)),
    }
}

/// The node id the peer of `connection` proved with its certificate (None
/// when its certificate binds no id, or the binding cannot be read).
pub fn peer_node_id(connection: &quinn::Connection) -> Option<String> {
    peer_binding(connection).ok().flatten()
}

/// The node id the peer of `connection` proved with its certificate: None
/// when its certificate binds no id; an error when the binding cannot be
/// read (it names two nodes) or the connection holds no certificate.
pub fn peer_binding(connection: &quinn::Connection) -> Result<Option<String>, String> {
    let chain = connection
        .peer_identity()
        .ok_or("the connection holds no peer certificate")?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the peer's identity is not a certificate chain")?;
    certified_node_id(chain.first().ok_or("the peer sent an empty chain")?)
}

/// Refuses a peer that says it is `claimed` while its certificate is
/// another node's. A certificate that binds no id (an operator's without
/// the URI SAN) refuses nothing.
pub fn check_claimed_id(certified: Option<&str>, claimed: &str) -> anyhow::Result<()> {
    match certified {
        Some(certified) if certified != claimed => Err(anyhow!(
            "a peer whose certificate is issued to node {certified:?} says it is {claimed:?}; refused"
        )),
        _ => Ok(()),
    }
}

/// Stretches the passphrase into the cluster CA key.
fn derive_ca_key(psk: &str) -> anyhow::Result<KeyPair> {
    let hk = Hkdf::<Sha256>::new(Some(CA_SALT), psk.as_bytes());
    let mut seed = [0u8; 32];
    hk.expand(b"ed25519 cluster ca key", &mut seed)
        .map_err(|_| anyhow!("HKDF refused a 32-byte output"))?;
    let mut pkcs8 = Vec::with_capacity(48);
    pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
    pkcs8.extend_from_slice(&seed);
    let der = PrivatePkcs8KeyDer::from(pkcs8);
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519)
        .context("cannot build the cluster CA key from the passphrase")
}

/// Stretches a stable secret of this node into its endpoint secret.
fn derive_endpoint_secret(secret: &[u8], node_id: &str) -> anyhow::Result<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(CA_SALT), secret);
    let mut out = [0u8; 32];
    let info = [b"quic endpoint keys of ".as_slice(), node_id.as_bytes()].concat();
    hk.expand(&info, &mut out)
        .map_err(|_| anyhow!("HKDF refused a 32-byte output"))?;
    Ok(out)
}

/// Stretches the passphrase into the cluster's SWIM packet key.
fn derive_gossip_key(psk: &[u8]) -> anyhow::Result<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(CA_SALT), psk);
    let mut out = [0u8; 32];
    hk.expand(b"gossamer swim packets", &mut out)
        .map_err(|_| anyhow!("HKDF refused a 32-byte output"))?;
    Ok(out)
}

/// The CA parameters: identical on every agent, so every agent's copy of the
/// CA certificate names the same issuer the node certificates point to.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "gossamer cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Verifies the server's chain to the cluster CA but not its name: peers are
/// dialled by address, and membership, not DNS, says who they are. This keeps
/// operator certificates usable whatever names they carry.
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
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
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Installs the process-wide rustls crypto provider (ring); safe to call twice.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_passphrase_gives_the_same_ca_key_and_another_does_not() {
        let a = derive_ca_key("correct horse battery").expect("key");
        let b = derive_ca_key("correct horse battery").expect("key");
        let c = derive_ca_key("another passphrase").expect("key");
        assert_eq!(a.public_key_raw(), b.public_key_raw());
        assert_ne!(a.public_key_raw(), c.public_key_raw());
    }

    #[test]
    fn the_endpoint_secret_is_stable_per_node_and_differs_between_nodes() {
        install_crypto_provider();
        let a1 = ClusterTrust::from_passphrase("correct horse battery", "node-a").expect("trust");
        let a2 = ClusterTrust::from_passphrase("correct horse battery", "node-a").expect("trust");
        let b = ClusterTrust::from_passphrase("correct horse battery", "node-b").expect("trust");
        assert_eq!(a1.endpoint_secret, a2.endpoint_secret);
        assert_ne!(a1.endpoint_secret, b.endpoint_secret);
        // The node key is fresh on every start; the secret is not tied to it.
        assert_ne!(a1.key.secret_der(), a2.key.secret_der());
    }

    #[test]
    fn a_derived_certificate_binds_its_node_id_and_a_claim_is_checked_against_it() {
        let trust = ClusterTrust::from_passphrase("pass", "node-7").expect("trust");
        let certified = certified_node_id(&trust.chain[0]).expect("readable");
        assert_eq!(certified.as_deref(), Some("node-7"));
        assert!(check_claimed_id(certified.as_deref(), "node-7").is_ok());
        let refused = check_claimed_id(certified.as_deref(), "node-8").expect_err("impostor");
        assert!(refused.to_string().contains("\"node-7\""), "{refused}");
        // A certificate binding no id refuses nothing (operator certificates).
        assert!(check_claimed_id(None, "node-8").is_ok());
        assert!(certified_node_id(&CertificateDer::from(vec![0u8; 8])).is_err());
    }

    #[test]
    fn configs_build_for_a_derived_node_certificate() {
        install_crypto_provider();
        let trust =
            ClusterTrust::from_passphrase("correct horse battery", "node-a").expect("trust");
        trust.server_config().expect("server config");
        trust.client_config().expect("client config");
    }
}
