//! EK certificates: is this TPM's endorsement key certified by a CA the administrator trusts?
//!
//! Every certificate in the configured PEM file (`ek-ca.pem` in the server directory: the TPM
//! vendors' or swtpm-localca's CA and intermediate certificates) is trusted as an issuer. The
//! EK certificate must carry a valid signature by one of them. Validity dates are not checked:
//! TPM EK certificates often carry dates that mean nothing (they outlive the CA's idea of time).

use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// How many CA certificates a PEM file holds (an error if it holds something else or none).
pub fn ca_count(ca_pem: &[u8]) -> Result<usize, String> {
    parse_cas(ca_pem, |cas| cas.len())
}

fn parse_cas<T>(
    ca_pem: &[u8],
    with: impl FnOnce(&[X509Certificate<'_>]) -> T,
) -> Result<T, String> {
    let pems = Pem::iter_from_buffer(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "the CA file is not PEM".to_string())?;
    let cas = pems
        .iter()
        .map(|p| p.parse_x509())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "the CA file holds something that is not a certificate".to_string())?;
    if cas.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    Ok(with(&cas))
}

/// Checks `cert_der` against the CA certificates in `ca_pem`; returns the certified key: an RSA
/// modulus without leading zero bytes, or an ECC P-256 point as x || y (`tpm::ek_key`).
pub fn verify(cert_der: &[u8], ca_pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| "the EK certificate is not an X.509 certificate".to_string())?;
    let signed = parse_cas(ca_pem, |cas| {
        cas.iter().any(|ca| {
            ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    })?;
    if !signed {
        return Err(format!(
            "the EK certificate (issuer {}) is not signed by a configured CA",
            cert.issuer()
        ));
    }
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => Ok(crate::tpm::strip_zeros(rsa.modulus).to_vec()),
        // An uncompressed point: 0x04, x, y.
        Ok(PublicKey::EC(point)) if point.data().len() == 65 && point.data()[0] == 4 => {
            Ok(point.data()[1..].to_vec())
        }
        _ => Err("the EK certificate certifies neither an RSA key nor an ECC P-256 key".into()),
    }
}
