//! Calling providers: one attempt per target, fallback across targets on
//! connect errors, timeouts, 429 and 5xx before any byte reaches the client,
//! circuit breakers, and the body reads with idle and total timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::time::Instant;

use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::providers::{Provider, Target, UpstreamAddr};
use crate::wire::Endpoint;

/// Client request headers passed on to providers (never credentials).
const FORWARDED_HEADERS: &[&str] = &[
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "user-agent",
    "idempotency-key",
];

/// Anthropic API version sent when the client did not name one.
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// What to send upstream.
pub struct OutboundCall<'a> {
    pub endpoint: Endpoint,
    pub stream: bool,
    /// Request body per target (the upstream model name may differ).
    pub body_for: &'a (dyn Fn(&Target) -> Bytes + Send + Sync),
    /// Client headers worth forwarding (name, value).
    pub client_headers: Vec<(&'static str, Vec<u8>)>,
    /// The requested model, for errors.
    pub model: &'a str,
    pub request_id: &'a str,
}

/// An upstream response whose headers have arrived.
pub struct UpstreamResponse {
    pub session: HttpSession,
    pub peer: HttpPeer,
    pub header: ResponseHeader,
    pub provider: Arc<Provider>,
    pub upstream_model: String,
    /// Deadline of the whole call.
    pub deadline: Instant,
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// Retryable on the same target with a fresh connection (a pooled
    /// connection the peer had already closed).
    Stale(String),
    Failed(String),
    Timeout(String),
}

/// Pick the client headers to forward.
pub fn forwarded_headers(req: &RequestHeader) -> Vec<(&'static str, Vec<u8>)> {
    FORWARDED_HEADERS
        .iter()
        .filter_map(|name| {
            req.headers
                .get(*name)
                .map(|v| (*name, v.as_bytes().to_vec()))
        })
        .collect()
}

/// Try each target in order until one answers with a status that is not a
/// fallback trigger (or the last target answers at all).
pub async fn call_with_fallback(
    connector: &Connector,
    metrics: &Metrics,
    targets: &[Target],
    call: &OutboundCall<'_>,
) -> Result<UpstreamResponse, GatewayError> {
    let mut failures: Vec<String> = Vec::new();
    let mut last_timeout = false;
    let eligible: Vec<&Target> = targets
        .iter()
        .filter(|t| t.provider.speaks(call.endpoint))
        .collect();
    for (i, target) in eligible.iter().enumerate() {
        let provider = &target.provider;
        let is_last = i + 1 == eligible.len();
        if !provider.breaker.try_acquire() {
            metrics
                .upstream_attempts
                .with_label_values(&[&provider.name, "circuit_open"])
                .inc();
            failures.push(format!("{}: circuit open", provider.name));
            continue;
        }
        let deadline = Instant::now() + provider.timeouts.total();
        let body = (call.body_for)(target);
        let upstream_model = target
            .upstream_model
            .clone()
            .unwrap_or_else(|| call.model.to_string());
        let mut outcome = attempt(
            connector,
            provider,
            call,
            &upstream_model,
            body.clone(),
            deadline,
        )
        .await;
        if let Err(AttemptError::Stale(_)) = outcome {
            outcome = attempt(connector, provider, call, &upstream_model, body, deadline).await;
        }
        match outcome {
            Ok((session, peer, header)) => {
                let status = header.status.as_u16();
                let fallback_status = status == 429 || status >= 500;
                if fallback_status {
                    provider.breaker.on_failure();
                    metrics
                        .upstream_attempts
                        .with_label_values(&[&provider.name, &status.to_string()])
                        .inc();
                    if !is_last {
                        tracing::warn!(
                            request_id = call.request_id,
                            provider = %provider.name,
                            status,
                            "upstream answered with a fallback status; trying the next provider"
                        );
                        failures.push(format!("{}: HTTP {status}", provider.name));
                        continue;
                    }
                } else {
                    provider.breaker.on_success();
                    metrics
                        .upstream_attempts
                        .with_label_values(&[&provider.name, "ok"])
                        .inc();
                }
                return Ok(UpstreamResponse {
                    session,
                    peer,
                    header,
                    provider: provider.clone(),
                    upstream_model,
                    deadline,
                });
            }
            Err(e) => {
                provider.breaker.on_failure();
                let (outcome, detail) = match e {
                    AttemptError::Timeout(d) => {
                        last_timeout = true;
                        ("timeout", d)
                    }
                    AttemptError::Stale(d) | AttemptError::Failed(d) => {
                        last_timeout = false;
                        ("error", d)
                    }
                };
                metrics
                    .upstream_attempts
                    .with_label_values(&[&provider.name, outcome])
                    .inc();
                tracing::warn!(
                    request_id = call.request_id,
                    provider = %provider.name,
                    error = %detail,
                    "upstream attempt failed"
                );
                failures.push(format!("{}: {detail}", provider.name));
            }
        }
    }
    let detail = failures.join("; ");
    if last_timeout {
        Err(GatewayError::UpstreamTimeout(detail))
    } else {
        Err(GatewayError::UpstreamUnavailable {
            model: call.model.to_string(),
            detail,
        })
    }
}

async fn build_peer(provider: &Provider) -> Result<HttpPeer, AttemptError> {
    let mut peer = match &provider.addr {
        UpstreamAddr::Url(url) => {
            let addr = provider.resolve().await.map_err(AttemptError::Failed)?;
            HttpPeer::new(addr, url.tls, url.host.clone())
        }
        UpstreamAddr::Unix(path) => {
            let path = path
                .to_str()
                .ok_or_else(|| AttemptError::Failed("the mock socket path is not UTF-8".into()))?;
            HttpPeer::new_uds(path, false, "localhost".into())
                .map_err(|e| AttemptError::Failed(e.to_string()))?
        }
    };
    let t = provider.timeouts;
    peer.options.connection_timeout = Some(t.connect());
    peer.options.total_connection_timeout = Some(t.connect());
    peer.options.read_timeout = Some(t.first_byte());
    peer.options.write_timeout = Some(t.idle());
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer.options.verify_cert = provider.tls_verify;
    peer.options.verify_hostname = provider.tls_verify;
    peer.options.alpn = ALPN::H1;
    Ok(peer)
}

fn host_header(provider: &Provider) -> String {
    match &provider.addr {
        UpstreamAddr::Url(u) => {
            let default = if u.tls { 443 } else { 80 };
            let host = if u.host.contains(':') {
                format!("[{}]", u.host)
            } else {
                u.host.clone()
            };
            if u.port == default {
                host
            } else {
                format!("{host}:{}", u.port)
            }
        }
        UpstreamAddr::Unix(_) => "localhost".into(),
    }
}

fn build_request(
    provider: &Provider,
    call: &OutboundCall<'_>,
    upstream_model: &str,
    body_len: usize,
) -> Result<RequestHeader, AttemptError> {
    let path = provider.request_path(call.endpoint, upstream_model);
    let fail = |e: Box<pingora_error::Error>| AttemptError::Failed(e.to_string());
    let mut req = RequestHeader::build("POST", path.as_bytes(), Some(12)).map_err(fail)?;
    req.insert_header("host", host_header(provider))
        .map_err(fail)?;
    req.insert_header("content-type", "application/json")
        .map_err(fail)?;
    req.insert_header("content-length", body_len.to_string())
        .map_err(fail)?;
    req.insert_header(
        "accept",
        if call.stream {
            "text/event-stream"
        } else {
            "application/json"
        },
    )
    .map_err(fail)?;
    req.insert_header("accept-encoding", "identity")
        .map_err(fail)?;
    req.insert_header("x-request-id", call.request_id)
        .map_err(fail)?;
    let mut has_version = false;
    for (name, value) in &call.client_headers {
        has_version |= *name == "anthropic-version";
        req.insert_header(*name, value.as_slice()).map_err(fail)?;
    }
    let anthropic = matches!(provider.kind, ProviderKind::Anthropic | ProviderKind::Mock);
    if anthropic && !has_version && call.endpoint.family() == crate::wire::ApiFamily::Anthropic {
        req.insert_header("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
            .map_err(fail)?;
    }
    for (name, value) in provider.auth_headers() {
        req.insert_header(name, value).map_err(fail)?;
    }
    Ok(req)
}

async fn attempt(
    connector: &Connector,
    provider: &Provider,
    call: &OutboundCall<'_>,
    upstream_model: &str,
    body: Bytes,
    deadline: Instant,
) -> Result<(HttpSession, HttpPeer, ResponseHeader), AttemptError> {
    let peer = build_peer(provider).await?;
    let req = build_request(provider, call, upstream_model, body.len())?;
    let t = provider.timeouts;
    let connect = tokio::time::timeout(t.connect(), connector.get_http_session(&peer));
    let (mut session, reused) = match connect.await {
        Err(_) => {
            return Err(AttemptError::Timeout(format!(
                "connect timed out after {} ms",
                t.connect_ms
            )))
        }
        Ok(Err(e)) => return Err(AttemptError::Failed(format!("connect failed: {e}"))),
        Ok(Ok(s)) => s,
    };
    let stale_or = |reused: bool, msg: String| {
        if reused {
            AttemptError::Stale(msg)
        } else {
            AttemptError::Failed(msg)
        }
    };
    let send = async {
        session.write_request_header(Box::new(req)).await?;
        session.write_request_body(body, true).await?;
        session.finish_request_body().await
    };
    match tokio::time::timeout_at(deadline, send).await {
        Err(_) => {
            return Err(AttemptError::Timeout(
                "sending the request timed out".into(),
            ))
        }
        Ok(Err(e)) => return Err(stale_or(reused, format!("sending the request failed: {e}"))),
        Ok(Ok(())) => {}
    }
    let first_byte = Instant::now() + t.first_byte();
    match tokio::time::timeout_at(first_byte.min(deadline), session.read_response_header()).await {
        Err(_) => {
            return Err(AttemptError::Timeout(format!(
                "no response within {} ms",
                t.first_byte_ms.min(t.total_ms)
            )))
        }
        Ok(Err(e)) => {
            let msg = format!("reading the response failed: {e}");
            if e.etype() == &pingora_error::ErrorType::ReadTimedout {
                return Err(AttemptError::Timeout(msg));
            }
            return Err(stale_or(reused, msg));
        }
        Ok(Ok(())) => {}
    }
    let Some(header) = session.response_header().cloned() else {
        return Err(AttemptError::Failed(
            "upstream sent no response header".into(),
        ));
    };
    session.set_read_timeout(Some(t.idle()));
    Ok((session, peer, header))
}

/// Read the next body chunk with the idle timeout (set on the session) and
/// the call's total deadline.
pub async fn read_chunk(
    session: &mut HttpSession,
    deadline: Instant,
    idle_ms: u64,
) -> Result<Option<Bytes>, GatewayError> {
    match tokio::time::timeout_at(deadline, session.read_response_body()).await {
        Err(_) => Err(GatewayError::UpstreamTimeout(
            "the call exceeded its total timeout".into(),
        )),
        Ok(Err(e)) if e.etype() == &pingora_error::ErrorType::ReadTimedout => Err(
            GatewayError::UpstreamTimeout(format!("no data from upstream for {idle_ms} ms")),
        ),
        Ok(Err(e)) => Err(GatewayError::UpstreamBroken(e.to_string())),
        Ok(Ok(chunk)) => Ok(chunk),
    }
}

/// Read a whole (non-streamed) body, bounded in size.
pub async fn read_body(resp: &mut UpstreamResponse, max: usize) -> Result<Bytes, GatewayError> {
    let mut buf = bytes::BytesMut::new();
    let idle = resp.provider.timeouts.idle_ms;
    while let Some(chunk) = read_chunk(&mut resp.session, resp.deadline, idle).await? {
        if buf.len() + chunk.len() > max {
            return Err(GatewayError::BadUpstreamResponse(format!(
                "response body larger than {max} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Return a finished upstream connection to the pool.
pub async fn release(connector: &Connector, resp: UpstreamResponse) {
    let UpstreamResponse {
        mut session, peer, ..
    } = resp;
    if session.response_done() {
        connector
            .release_http_session(session, &peer, Some(Duration::from_secs(60)))
            .await;
    }
}
