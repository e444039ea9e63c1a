//! What an operator watches: one log line per request (through `tracing`, to standard error),
//! `GET /v1/health`, and Prometheus metrics at `GET /metrics` for `metrics_networks`.
//!
//! The log line names the method, the route's template (never the path with its IDs filled
//! in), the status, who called (the extractors say: administrator, machine or anonymous) and
//! the time taken. Never a body, a header or a secret.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{with_custody, with_db, ApiError, Shared};
use crate::api;

/// Who called and which route matched, filled in while the request is handled.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Seen>>);

#[derive(Default)]
struct Seen {
    route: Option<String>,
    actor: Option<String>,
}

impl Slot {
    /// Records the caller, as `kind id` (`admin alice`, `machine 3f…`, `anonymous`).
    pub fn actor(parts: &axum::http::request::Parts, actor: impl Into<String>) {
        if let Some(slot) = parts.extensions.get::<Slot>() {
            slot.0.lock().unwrap_or_else(|p| p.into_inner()).actor = Some(actor.into());
        }
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The counters behind `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    storage_errors: AtomicU64,
}

impl Metrics {
    fn record(&self, route: &str, status: u16, took: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((route.to_string(), status)).or_default() += 1;
        drop(requests);
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = latency.entry(route.to_string()).or_default();
        let secs = took.as_secs_f64();
        for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// A storage operation failed (the client was answered 503, nothing stored).
    pub fn storage_error(&self) {
        self.storage_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The route template, for the log line and the metrics (the outer layer cannot see it).
pub async fn note_route(
    route: MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(slot) = request.extensions().get::<Slot>() {
        slot.0.lock().unwrap_or_else(|p| p.into_inner()).route = Some(route.as_str().to_string());
    }
    next.run(request).await
}

/// Logs and counts every request, once answered.
pub async fn observe(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let slot = Slot::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().clone();
    let response = next.run(request).await;
    let took = started.elapsed();
    let seen = slot.0.lock().unwrap_or_else(|p| p.into_inner());
    let route = seen.route.as_deref().unwrap_or("unmatched");
    let actor = seen.actor.as_deref().unwrap_or("none");
    let status = response.status().as_u16();
    tracing::info!(
        target: "lifeline_server::request",
        "{method} {route} {status} actor={actor} from={} ms={:.1}",
        from.ip(),
        took.as_secs_f64() * 1000.0
    );
    s.metrics.record(route, status, took);
    response
}

/// `GET HEALTH`: the storage answers, and the TPM does when the server keeps DRSKs.
pub async fn health(State(s): State<Shared>) -> Response {
    let storage = match with_db(&s, |db| db.counts().map_err(Into::into)).await {
        Ok(_) => "ok".to_string(),
        Err(e) => e.1,
    };
    let tpm = match crate::server::custody::Custody::open(&s.dir) {
        Err(_) => "not configured".to_string(),
        Ok(_) => match with_custody(&s, |_, _| Ok(())).await {
            Ok(()) => "ok".to_string(),
            Err(ApiError(_, why)) => why,
        },
    };
    let healthy = storage == "ok" && (tpm == "ok" || tpm == "not configured");
    let status = match healthy {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(api::Health { storage, tpm })).into_response()
}

/// `GET METRICS`, in Prometheus' text format, to `metrics_networks` only.
pub async fn metrics(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
) -> Result<Response, ApiError> {
    if !s.config.is_metrics_address(from.ip()) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{} is not in metrics_networks", from.ip()),
        ));
    }
    let counts = with_db(&s, |db| db.counts().map_err(Into::into)).await?;
    let mut body = String::from(
        "# HELP lifeline_requests_total Requests answered, by route template and status.\n\
         # TYPE lifeline_requests_total counter\n",
    );
    for ((route, status), n) in s
        .metrics
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            body,
            "lifeline_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        body,
        "# HELP lifeline_request_duration_seconds Time to answer, by route template.\n\
         # TYPE lifeline_request_duration_seconds histogram"
    );
    for (route, h) in s
        .metrics
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                body,
                "lifeline_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            body,
            "lifeline_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
             lifeline_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
             lifeline_request_duration_seconds_count{{route=\"{route}\"}} {}",
            h.count, h.sum, h.count
        );
    }
    for (name, kind, help, value) in [
        (
            "lifeline_pending_recovery_requests",
            "gauge",
            "Recovery requests waiting for approval.",
            counts.pending_recoveries,
        ),
        (
            "lifeline_pending_restore_requests",
            "gauge",
            "DRSK restore requests waiting for their proof or approval.",
            counts.pending_restores,
        ),
        (
            "lifeline_audit_entries",
            "gauge",
            "Entries in the audit log.",
            counts.audit_entries,
        ),
        (
            "lifeline_storage_errors_total",
            "counter",
            "Storage operations that failed (answered 503, nothing stored).",
            s.metrics.storage_errors.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
