//! Talking to the escrow server: HTTPS with ureq and rustls (ring), trusting only the
//! configured CA — no system roots — with bounded response sizes and a timeout. Blocking; the
//! client links no async runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// Largest response read from the server.
const MAX_RESPONSE: u64 = 256 * 1024;

#[derive(Debug)]
pub enum FetchError {
    /// The server could not be reached or the connection failed (TLS included).
    Unreachable(String),
    /// The server answered with an error status and its reason.
    Refused { status: u16, reason: String },
    /// Not found: no such packet, request or machine.
    NotFound(String),
    /// The answer was not what the protocol says.
    Bad(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(why) => write!(f, "cannot reach the escrow server: {why}"),
            FetchError::Refused { status, reason } => {
                write!(f, "the escrow server refused ({status}): {reason}")
            }
            FetchError::NotFound(why) => write!(f, "{why}"),
            FetchError::Bad(why) => write!(f, "unexpected answer from the escrow server: {why}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// A server connection: base URL, pinned CA, optional bearer credential.
pub struct Https {
    agent: ureq::Agent,
    base: String,
    credential: Option<zeroize::Zeroizing<String>>,
    backoff: Backoff,
}

/// At boot, after the server could not be reached (or failed with a 5xx), calls wait before
/// trying again: 1 s, doubling up to 30 s, so a network that is still coming up is not
/// hammered and each poll of the prompt stays quick. Until then the last failure is repeated.
#[derive(Default)]
struct Backoff {
    delay: Duration,
    waiting: Option<(Instant, String)>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MOST: Duration = Duration::from_secs(30);

    fn call<T>(
        &mut self,
        now: Instant,
        call: impl FnOnce() -> Result<T, FetchError>,
    ) -> Result<T, String> {
        if let Some((until, why)) = &self.waiting {
            if now < *until {
                return Err(why.clone());
            }
        }
        match call() {
            Err(e @ (FetchError::Unreachable(_) | FetchError::Refused { status: 500.., .. })) => {
                self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MOST);
                let why = e.to_string();
                self.waiting = Some((now + self.delay, why.clone()));
                Err(why)
            }
            other => {
                *self = Backoff::default();
                other.map_err(|e| e.to_string())
            }
        }
    }
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Https({})", self.base)
    }
}

impl Https {
    /// `ca_pem` holds the CA certificate(s) the server's certificate must chain to.
    pub fn new(base_url: &str, ca_pem: &[u8], timeout: Duration) -> Result<Https, FetchError> {
        if !base_url.starts_with("https://") {
            return Err(FetchError::Bad(format!(
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
            .map_err(|e| FetchError::Bad(format!("the CA file is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(FetchError::Bad("the CA file holds no certificate".into()));
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
            backoff: Backoff::default(),
        })
    }

    /// Sends `credential` as a bearer token with every request.
    pub fn with_credential(mut self, credential: &str) -> Https {
        self.credential = Some(zeroize::Zeroizing::new(credential.to_string()));
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), FetchError> {
        let mut response = result.map_err(|e| FetchError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| FetchError::Bad(e.to_string()))?;
        if status >= 400 {
            let reason = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(if status == 404 {
                FetchError::NotFound(reason)
            } else {
                FetchError::Refused { status, reason }
            });
        }
        Ok((status, body))
    }

    fn auth(&self) -> Option<String> {
        // expose: the credential goes into the Authorization header of this one request.
        self.credential
            .as_ref()
            .map(|c| format!("Bearer {}", c.as_str()))
    }

    pub fn get(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        let mut req = self.agent.get(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        self.finish(req.call()).map(|(_, body)| body)
    }

    pub fn get_json(&self, path: &str) -> Result<Value, FetchError> {
        let body = self.get(path)?;
        serde_json::from_slice(&body).map_err(|e| FetchError::Bad(e.to_string()))
    }

    /// POSTs raw bytes; returns the status and the JSON answer.
    pub fn post_bytes(&self, path: &str, body: &[u8]) -> Result<(u16, Value), FetchError> {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("content-type", "text/plain");
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        let (status, body) = self.finish(req.send(body))?;
        let json = serde_json::from_slice(&body).map_err(|e| FetchError::Bad(e.to_string()))?;
        Ok((status, json))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, FetchError> {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("content-type", "application/json");
        if let Some(a) = self.auth() {
            req = req.header("authorization", a);
        }
        let (_, body) = self.finish(req.send(body.to_string().as_bytes()))?;
        serde_json::from_slice(&body).map_err(|e| FetchError::Bad(e.to_string()))
    }
}

impl Https {
    /// A boot-time call, under the backoff.
    fn at_boot<T>(
        &mut self,
        call: impl FnOnce(&Https) -> Result<T, FetchError>,
    ) -> Result<T, String> {
        let mut backoff = std::mem::take(&mut self.backoff);
        let result = backoff.call(Instant::now(), || call(self));
        self.backoff = backoff;
        result
    }
}

/// The escrow server as a source of recovery packets and DRSK restores at boot. Needs no
/// credential: a booting machine has none (it is on the encrypted disk).
impl crate::unlock::EscrowSource for Https {
    fn describe(&self) -> String {
        format!("the escrow server {}", self.base)
    }

    fn request_recovery(&mut self, who: &str, volume_uuid: &str) -> Result<bool, String> {
        let body = serde_json::json!({ "machine": who, "volume_uuid": volume_uuid });
        self.at_boot(|h| h.post_json("/v1/recovery-requests", &body).map(|_| true))
    }

    fn recovery_packet(
        &mut self,
        who: &[String],
        volume_uuid: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        self.at_boot(|h| {
            for name in who {
                match h.get(&format!("/v1/recovery/{name}/{volume_uuid}")) {
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
    ) -> Result<(), String> {
        // expose_secret: the use token goes to the server once, over TLS, to retire the packet.
        let token = crate::secret::hex_secret(use_token.expose_secret());
        let body = serde_json::json!({ "use_token": token.as_str() });
        // Once, not subject to the backoff: the volume is open and the boot goes on.
        self.post_json(&format!("/v1/recovery/{packet_id}/used"), &body)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn restore_file(&mut self, client_id: &str, srk_name: &str) -> Result<Option<Vec<u8>>, String> {
        self.at_boot(
            |h| match h.get(&format!("/v1/drsk/restores/{client_id}/{srk_name}")) {
                Ok(body) => Ok(Some(body)),
                Err(FetchError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
        )
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
        assert!(b.call(t0, down).unwrap_err().contains("connection refused"));
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
        assert_eq!(missing.unwrap_err(), "no packet");
        assert!(b.waiting.is_none());
        assert_eq!(b.call(until, || Ok(7)), Ok(7));
    }
}
