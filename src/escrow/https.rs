//! Talking to the escrow server: HTTPS with ureq and rustls (ring), trusting only the
//! configured CA — no system roots — with bounded response sizes and a timeout. Blocking; the
//! client links no async runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::api;
use crate::secret::{Credential, UseToken};
use crate::unlock::SourceError;

/// Largest response read from the server.
const MAX_RESPONSE: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The server could not be reached: connection refused, no route, no such host.
    Unreachable(String),
    /// The server's certificate was refused.
    Certificate(CertProblem),
    /// No whole answer within the time allowed (connecting, TLS, or a slow answer).
    TimedOut(Duration),
    /// The server answered with an error status and its reason.
    Refused { status: u16, reason: String },
    /// Not found: no such packet, request or machine.
    NotFound(String),
    /// The answer was not what the protocol says: not HTTP, a redirect, too large, not JSON,
    /// not a packet.
    Bad(String),
    /// Nothing was asked: the URL or the CA file given here is not usable.
    Setup(String),
}

/// Why the server's certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    /// Not signed by the configured CA.
    UnknownIssuer,
    Expired,
    NotYetValid,
    /// Valid, but for another name than the one in the URL.
    WrongName,
    Other(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(why) => write!(f, "cannot reach the escrow server: {why}"),
            FetchError::Certificate(p) => {
                f.write_str("the escrow server's certificate was refused: ")?;
                match p {
                    CertProblem::UnknownIssuer => {
                        f.write_str("it is not signed by the configured CA")
                    }
                    CertProblem::Expired => f.write_str("it has expired"),
                    CertProblem::NotYetValid => f.write_str("it is not valid yet"),
                    CertProblem::WrongName => {
                        f.write_str("it is for another name than the one in the server URL")
                    }
                    CertProblem::Other(why) => f.write_str(why),
                }
            }
            FetchError::TimedOut(t) => write!(
                f,
                "the escrow server did not answer within {} s",
                t.as_secs().max(1)
            ),
            FetchError::Refused { status, reason } => {
                write!(f, "the escrow server refused ({status}): {reason}")
            }
            FetchError::NotFound(why) => write!(f, "{why}"),
            FetchError::Bad(why) => write!(f, "unexpected answer from the escrow server: {why}"),
            FetchError::Setup(why) => f.write_str(why),
        }
    }
}

impl FetchError {
    /// What the person should do about it, for the messages formed at the edge (a "not found"
    /// says it all itself).
    pub fn what_to_do(&self) -> Option<&'static str> {
        Some(match self {
            FetchError::Unreachable(_) => "check the server URL and the network",
            FetchError::Certificate(CertProblem::UnknownIssuer) => {
                "check that the CA file (--ca, or server-ca.pem from lifeline join) is the escrow server's CA"
            }
            FetchError::Certificate(CertProblem::Expired | CertProblem::NotYetValid) => {
                "check this machine's clock; if it is right, the server's certificate must be renewed"
            }
            FetchError::Certificate(CertProblem::WrongName) => {
                "use the server's name as its certificate gives it (the name given at lifeline-server init --tls-name)"
            }
            FetchError::Certificate(CertProblem::Other(_)) => {
                "check the server's TLS certificate and the CA file"
            }
            FetchError::TimedOut(_) => "try again; if it persists, check the server and the network",
            FetchError::Refused { status: 429, .. } => "wait a minute and try again",
            FetchError::Refused { status: 500.., .. } => {
                "the server is busy or failing: try again in a minute, or tell its administrator"
            }
            FetchError::Refused { status: 401 | 403, .. } => {
                "check the credential (lifeline join) and that this request is allowed from here"
            }
            FetchError::Refused { .. } => "check the command's arguments",
            FetchError::NotFound(_) => return None,
            FetchError::Bad(_) => {
                "check that the URL is the escrow server's (https://host:port, no path)"
            }
            FetchError::Setup(_) => {
                "give the server as https://host:port and its CA certificate as a PEM file (--ca, or server-ca.pem from lifeline join)"
            }
        })
    }

    /// Reads a ureq failure: a certificate problem, a timeout, or no connection.
    fn from_ureq(e: ureq::Error, timeout: Duration) -> FetchError {
        use rustls::CertificateError as C;
        // rustls's verdict comes either as it is or inside the I/O error of the handshake.
        let tls = match &e {
            ureq::Error::Rustls(r) => Some(r.clone()),
            ureq::Error::Io(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned(),
            _ => None,
        };
        match (tls, e) {
            (Some(rustls::Error::InvalidCertificate(c)), _) => FetchError::Certificate(match c {
                C::UnknownIssuer | C::BadSignature => CertProblem::UnknownIssuer,
                C::Expired | C::ExpiredContext { .. } => CertProblem::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => CertProblem::NotYetValid,
                C::NotValidForName | C::NotValidForNameContext { .. } => CertProblem::WrongName,
                other => CertProblem::Other(other.to_string()),
            }),
            (Some(other), _) => {
                FetchError::Bad(format!("TLS failed ({other}): is this the escrow server?"))
            }
            (None, ureq::Error::Timeout(_)) => FetchError::TimedOut(timeout),
            (None, ureq::Error::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut => {
                FetchError::TimedOut(timeout)
            }
            (None, ureq::Error::Protocol(p)) => FetchError::Bad(format!(
                "the answer is not HTTP ({p}): is this the escrow server?"
            )),
            (None, ureq::Error::HostNotFound) => FetchError::Unreachable("no such host".into()),
            (None, other) => FetchError::Unreachable(other.to_string()),
        }
    }
}

impl std::error::Error for FetchError {}

/// A server connection: base URL, pinned CA, optional bearer credential. Paths, bodies and
/// answers are `api`'s.
pub struct Https {
    agent: ureq::Agent,
    base: String,
    credential: Option<Credential>,
    /// How long one call may take at most.
    timeout: Duration,
    /// At boot: when the current call must be over, whatever `timeout` says.
    until: std::cell::Cell<Option<Instant>>,
    backoff: Backoff,
}

/// At boot, after a call failed (the server unreachable, an error status, an answer that is
/// not what it should be), calls wait before trying again: 1 s, doubling up to 30 s, so a
/// network that is still coming up, or a server that answers nonsense, is not hammered and
/// each poll of the prompt stays quick. Until then the last failure is repeated. "Not found"
/// is an answer (no packet yet), not a failure.
#[derive(Default)]
struct Backoff {
    delay: Duration,
    waiting: Option<(Instant, FetchError)>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MOST: Duration = Duration::from_secs(30);

    fn call<T>(
        &mut self,
        now: Instant,
        call: impl FnOnce() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        if let Some((until, why)) = &self.waiting {
            if now < *until {
                return Err(why.clone());
            }
        }
        match call() {
            Ok(v) => {
                *self = Backoff::default();
                Ok(v)
            }
            Err(e @ FetchError::NotFound(_)) => {
                *self = Backoff::default();
                Err(e)
            }
            Err(e) => {
                self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MOST);
                self.waiting = Some((now + self.delay, e.clone()));
                Err(e)
            }
        }
    }
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Https({})", self.base)
    }
}

/// A recovery packet starts like this (a minisign signature): anything else is not one.
const PACKET_START: &[u8] = b"untrusted comment:";

impl Https {
    /// `ca_pem` holds the CA certificate(s) the server's certificate must chain to.
    pub fn new(base_url: &str, ca_pem: &[u8], timeout: Duration) -> Result<Https, FetchError> {
        if !base_url.starts_with("https://") {
            return Err(FetchError::Setup(format!(
                "'{base_url}' is not an https:// URL"
            )));
        }
        let certs = ureq::tls::parse_pem(ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<Certificate<'static>>, _>>()
            .map_err(|e| FetchError::Setup(format!("the CA file is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(FetchError::Setup("the CA file holds no certificate".into()));
        }
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(certs)))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        Ok(Https {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
            credential: None,
            timeout,
            until: std::cell::Cell::new(None),
            backoff: Backoff::default(),
        })
    }

    /// The server's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `credential` as a bearer token with every request.
    pub fn with_credential(mut self, credential: Credential) -> Https {
        self.credential = Some(credential);
        self
    }

    /// The time this call may take: `timeout`, or less when a deadline is nearer.
    fn call_timeout(&self) -> Result<Duration, FetchError> {
        match self.until.get() {
            None => Ok(self.timeout),
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(left.min(self.timeout)),
                _ => Err(FetchError::TimedOut(Duration::ZERO)),
            },
        }
    }

    /// One request: GET without a body, POST with `(content type, bytes)`. Returns the status
    /// and the body of a 2xx answer (wiped when dropped: answers carry secrets); everything
    /// else is an error that names what came.
    fn call(
        &self,
        path: &str,
        post: Option<(&str, &[u8])>,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), FetchError> {
        let timeout = self.call_timeout()?;
        let url = format!("{}{path}", self.base);
        // expose_secret: the credential goes into the Authorization header of this one
        // request (ureq's copy of the header is not ours to wipe).
        let auth = self
            .credential
            .as_ref()
            .map(|c| Zeroizing::new(format!("Bearer {}", c.expose_secret())));
        let result = match post {
            None => {
                let mut req = self
                    .agent
                    .get(url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build();
                if let Some(a) = &auth {
                    req = req.header("authorization", a.as_str());
                }
                req.call()
            }
            Some((content_type, body)) => {
                let mut req = self
                    .agent
                    .post(url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .header("content-type", content_type);
                if let Some(a) = &auth {
                    req = req.header("authorization", a.as_str());
                }
                req.send(body)
            }
        };
        let mut response = result.map_err(|e| FetchError::from_ureq(e, timeout))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map(Zeroizing::new)
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    FetchError::Bad(format!("the answer is larger than {MAX_RESPONSE} bytes"))
                }
                e => FetchError::from_ureq(e, timeout),
            })?;
        if (300..400).contains(&status) {
            let to = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("?");
            return Err(FetchError::Bad(format!(
                "a redirect ({status}) to {}; lifeline does not follow redirects",
                to.chars().take(200).collect::<String>()
            )));
        }
        if !(200..300).contains(&status) {
            let reason = error_of(&body)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(if status == 404 {
                FetchError::NotFound(reason)
            } else {
                FetchError::Refused { status, reason }
            });
        }
        Ok((status, body))
    }

    pub fn get(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, FetchError> {
        self.call(path, None).map(|(_, body)| body)
    }

    /// GETs a recovery packet: refuses an answer that is not one (an error object, a web page)
    /// with what it is, before anything tries to verify it.
    pub fn get_packet(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        let body = self.get(path)?;
        if body.starts_with(PACKET_START) {
            // A recovery packet is public (OTP-encrypted): no need to wipe it.
            return Ok(body.to_vec());
        }
        Err(FetchError::Bad(match error_of(&body) {
            Some(e) => format!("an error instead of a recovery packet: {e}"),
            None => "the answer is not a recovery packet".into(),
        }))
    }

    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, FetchError> {
        let body = self.get(path)?;
        json_of(&body)
    }

    /// POSTs text (a packet, a DRSK file); returns the status and the JSON answer.
    pub fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, T), FetchError> {
        let (status, body) = self.call(path, Some(("text/plain", body)))?;
        Ok((status, json_of(&body)?))
    }

    /// POSTs `body` as JSON (in a wiped buffer: bodies carry secrets).
    pub fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, FetchError> {
        let text = Zeroizing::new(
            serde_json::to_vec(body)
                .map_err(|e| FetchError::Bad(format!("cannot send this request: {e}")))?,
        );
        let (_, body) = self.call(path, Some(("application/json", &text)))?;
        json_of(&body)
    }
}

/// The `{"error": …}` the server answers failures with.
fn error_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<api::Failure>(body)
        .ok()
        .map(|f| f.error.chars().take(300).collect())
}

fn json_of<T: DeserializeOwned>(body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body)
        .map_err(|e| FetchError::Bad(format!("the answer is not the JSON expected ({e})")))
}

impl Https {
    /// A boot-time call, under the backoff, over by `until`.
    fn at_boot<T>(
        &mut self,
        until: Instant,
        call: impl FnOnce(&Https) -> Result<T, FetchError>,
    ) -> Result<T, SourceError> {
        let mut backoff = std::mem::take(&mut self.backoff);
        self.until.set(Some(until));
        let result = backoff.call(Instant::now(), || call(self));
        self.until.set(None);
        self.backoff = backoff;
        result.map_err(SourceError::Server)
    }
}

/// The escrow server as a source of recovery packets and DRSK restores at boot. Needs no
/// credential: a booting machine has none (it is on the encrypted disk).
impl crate::unlock::EscrowSource for Https {
    fn describe(&self) -> String {
        format!("the escrow server {}", self.base)
    }

    fn request_recovery(
        &mut self,
        who: &str,
        volume_uuid: &str,
        until: Instant,
    ) -> Result<bool, SourceError> {
        let body = api::RecoveryRequest {
            machine: who.to_string(),
            volume_uuid: volume_uuid.to_string(),
        };
        let path = api::RECOVERY_REQUESTS.path(&[]);
        self.at_boot(until, |h| {
            // What the answer says (the request's ID and recovery ID) is shown already.
            h.post_json::<serde::de::IgnoredAny>(&path, &body)
                .map(|_| true)
        })
    }

    fn recovery_packet(
        &mut self,
        who: &[String],
        volume_uuid: &str,
        until: Instant,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        self.at_boot(until, |h| {
            for name in who {
                match h.get_packet(&api::RECOVERY_PACKET.path(&[name, volume_uuid])) {
                    Ok(body) => return Ok(Some(body)),
                    Err(FetchError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        })
    }

    fn report_used(
        &mut self,
        packet_id: &str,
        use_token: &crate::secret::UseToken,
    ) -> Result<(), SourceError> {
        // expose_secret: the use token goes to the server once, over TLS, to retire the packet.
        let body = api::PacketUsed {
            use_token: UseToken::from_slice(use_token.expose_secret()),
        };
        // Once, not subject to the backoff: the volume is open and the boot goes on.
        self.post_json::<serde::de::IgnoredAny>(&api::RECOVERY_USED.path(&[packet_id]), &body)
            .map(|_| ())
            .map_err(SourceError::Server)
    }

    fn restore_file(
        &mut self,
        client_id: &str,
        srk_name: &str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let until = Instant::now() + self.timeout;
        self.at_boot(until, |h| {
            match h.get(&api::RESTORE_FILE.path(&[client_id, srk_name])) {
                Ok(body) => Ok(Some(body.to_vec())),
                Err(FetchError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_waits_longer_after_each_failure_and_forgets_on_success() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let calls = std::cell::Cell::new(0);
        let down = || {
            calls.set(calls.get() + 1);
            Err::<(), _>(FetchError::Unreachable("connection refused".into()))
        };
        assert!(b
            .call(t0, down)
            .unwrap_err()
            .to_string()
            .contains("connection refused"));
        // Within the first second the failure is repeated without a call.
        assert!(b.call(t0 + Duration::from_millis(900), down).is_err());
        assert_eq!(calls.get(), 1);
        assert!(b.call(t0 + Duration::from_secs(1), down).is_err());
        assert_eq!(calls.get(), 2);
        // Now 2 s from the second failure.
        assert!(b.call(t0 + Duration::from_millis(2900), down).is_err());
        assert_eq!(calls.get(), 2);
        for _ in 0..10 {
            let until = b.waiting.as_ref().unwrap().0;
            assert!(b.call(until, down).is_err());
        }
        assert_eq!(b.delay, Backoff::MOST);
        // A 404 is an answer: it ends the backoff.
        let until = b.waiting.as_ref().unwrap().0;
        let missing = b.call(until, || {
            Err::<(), _>(FetchError::NotFound("no packet".into()))
        });
        assert_eq!(missing.unwrap_err().to_string(), "no packet");
        assert!(b.waiting.is_none());
        assert_eq!(b.call(until, || Ok(7)), Ok(7));
    }
}
