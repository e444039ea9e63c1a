//! Servers that misbehave, on 127.0.0.1: the escrow server as an attacker (or a broken proxy)
//! would play it. TLS with certificates made here (rcgen) — good ones, expired, for another
//! name, or from another CA — then each connection gets the same answer: raw bytes, sent at
//! once or a byte at a time. Or no TLS at all: a byte every few seconds from the first moment,
//! so the handshake never finishes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// The certificate the server shows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// Signed by the CA clients are given, for 127.0.0.1, valid now.
    Good,
    Expired,
    NotYetValid,
    /// For another name than 127.0.0.1.
    OtherName,
    /// Signed by a CA the clients are not given.
    OtherCa,
}

/// What each connection gets.
#[derive(Clone)]
pub enum Answer {
    /// After the TLS handshake and the request: these bytes, then the connection closes.
    Bytes(Vec<u8>),
    /// The same, one byte every `TRICKLE`.
    Slowly(Vec<u8>),
    /// No TLS: a byte every `TRICKLE`, for ever.
    Stall,
}

/// How long a trickling server waits between bytes.
pub const TRICKLE: Duration = Duration::from_secs(2);

pub struct Hostile {
    pub url: String,
    /// The CA certificate clients should trust (PEM).
    pub ca_pem: String,
    connections: Arc<AtomicUsize>,
}

impl Hostile {
    pub fn start(cert: Cert, answer: Answer) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let (ca_pem, config) = tls(cert);
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let (config, answer) = (config.clone(), answer.clone());
                std::thread::spawn(move || serve(stream, config, answer));
            }
        });
        Hostile {
            url,
            ca_pem,
            connections,
        }
    }

    /// An HTTP/1.1 answer with `status` and `body`, and extra header lines.
    pub fn http(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(mut tcp: TcpStream, config: Arc<rustls::ServerConfig>, answer: Answer) {
    let (bytes, slowly) = match answer {
        Answer::Stall => loop {
            if tcp.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(TRICKLE);
        },
        Answer::Bytes(b) => (b, false),
        Answer::Slowly(b) => (b, true),
    };
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The request's head; its body (if any) is not read.
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    if slowly {
        for b in bytes {
            if tls.write_all(&[b]).and_then(|()| tls.flush()).is_err() {
                return;
            }
            std::thread::sleep(TRICKLE);
        }
    } else {
        let _ = tls.write_all(&bytes);
        let _ = tls.flush();
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// The CA clients are given, and the server's TLS configuration for `cert`.
fn tls(cert: Cert) -> (String, Arc<rustls::ServerConfig>) {
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    };
    let (given_pem, given) = ca("the CA clients are given");
    let (_, other) = ca("another CA");
    let name = match cert {
        Cert::OtherName => "escrow.example.org",
        _ => "127.0.0.1",
    };
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    match cert {
        Cert::Expired => {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        Cert::NotYetValid => {
            params.not_before = rcgen::date_time_ymd(2090, 1, 1);
            params.not_after = rcgen::date_time_ymd(2091, 1, 1);
        }
        _ => {}
    }
    let key = KeyPair::generate().unwrap();
    let issuer = if cert == Cert::OtherCa {
        &other
    } else {
        &given
    };
    let leaf = params.signed_by(&key, issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (given_pem, Arc::new(config))
}
