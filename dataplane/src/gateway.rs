//! The client-facing HTTP application: endpoint routing, authentication,
//! request validation, the upstream call and the response relay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde_json::json;

use crate::audit_sink::AuditSink;
use crate::auth::{ApiKeys, AuthMethod, Caller, TokenAuth};
use crate::call_record::CallRecord;
use crate::config::{Config, Limits};
use crate::error::GatewayError;
use crate::events::{usage_from_body, Usage};
use crate::metrics::Metrics;
use crate::pipeline::{GuardStream, Guardrails, Pipeline, StreamReport};
use crate::providers::{BreakerState, Router};
use crate::relay::{RelayLimits, StreamHook, StreamRelay, StripInjectedUsage};
use crate::upstream::{self, OutboundCall, UpstreamResponse};
use crate::wire::{is_json_content_type, Call, Endpoint, ErrorStyle};

/// Everything a call needs from configuration, swapped as one unit.
pub struct GatewayState {
    /// Providers and routes; shared across swaps so that breakers and DNS
    /// caches keep their state.
    pub router: Arc<Router>,
    pub keys: ApiKeys,
    pub tokens: Option<TokenAuth>,
    pub limits: Limits,
    /// Compiled policies pushed by the control plane, by agent.
    pub policies: std::collections::BTreeMap<String, crate::control::PushedPolicy>,
    /// Guardrails per agent, built with the state (never per call).
    pub pipeline: Arc<Pipeline>,
    /// Budget rules (config plus pushed agent budgets), built with the state.
    pub budgets: Option<Arc<crate::budget::BudgetPolicy>>,
}

impl GatewayState {
    pub fn from_config(
        config: &Config,
        mock_socket: Option<&std::path::PathBuf>,
    ) -> Result<GatewayState, String> {
        let router = Arc::new(Router::from_config(config, mock_socket)?);
        GatewayState::compose(config, router, &crate::control::Pushed::default())
    }

    /// The state for `config` plus what the control plane pushed.
    pub fn compose(
        config: &Config,
        router: Arc<Router>,
        pushed: &crate::control::Pushed,
    ) -> Result<GatewayState, String> {
        let keys = ApiKeys::from_config(&config.api_keys)
            .with_pushed(pushed.api_keys.as_deref().unwrap_or_default());
        let tokens = match (&config.tokens, &pushed.jwks) {
            (Some(t), jwks) => Some(TokenAuth::from_config(
                t,
                jwks.as_ref(),
                pushed.revocations.as_ref(),
            )?),
            (None, Some(jwks)) => Some(TokenAuth::from_config(
                &crate::config::TokenConfig::from_control_plane(),
                Some(jwks),
                pushed.revocations.as_ref(),
            )?),
            (None, None) => None,
        };
        let pipeline = Arc::new(Pipeline::build(
            config.guardrails.as_ref(),
            &pushed.policies,
        )?);
        let budgets =
            crate::budget::BudgetPolicy::build(config.budgets.as_ref(), &pushed.policies)?;
        Ok(GatewayState {
            pipeline,
            budgets,
            router,
            keys,
            tokens,
            limits: config.limits.clone(),
            policies: pushed.policies.clone(),
        })
    }
}

/// The gateway application served by Pingora.
pub struct Gateway {
    state: Arc<ArcSwap<GatewayState>>,
    link: Option<Arc<crate::control::LinkHealth>>,
    connector: Connector,
    metrics: Arc<Metrics>,
    lifecycle: Arc<crate::server::Lifecycle>,
    audit: Option<Arc<AuditSink>>,
    /// Budget counters; they outlive state swaps.
    ledger: Arc<tappass_budget::Ledger>,
    /// Leases of limits shared with the fleet.
    fleet: Option<Arc<crate::budget_fleet::FleetLeases>>,
    server_options: HttpServerOptions,
    seq: AtomicU64,
    epoch: u64,
}

/// Upstream response headers that are not passed to clients.
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "server",
    "date",
    "set-cookie",
    "alt-svc",
    "strict-transport-security",
];

impl Gateway {
    pub fn new(
        state: Arc<ArcSwap<GatewayState>>,
        link: Option<Arc<crate::control::LinkHealth>>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<crate::server::Lifecycle>,
        audit: Option<Arc<AuditSink>>,
        h2c: bool,
    ) -> Gateway {
        let mut server_options = HttpServerOptions::default();
        server_options.h2c = h2c;
        Gateway {
            state,
            link,
            connector: Connector::new(None),
            metrics,
            lifecycle,
            audit,
            ledger: tappass_budget::Ledger::in_memory(
                tappass_budget::Clock::new("UTC").expect("UTC is always known"),
            ),
            fleet: None,
            server_options,
            seq: AtomicU64::new(0),
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Keep budget counters in `ledger` (persisted, in the configured time
    /// zone) instead of the default in-memory UTC ledger.
    pub fn with_ledger(mut self, ledger: Arc<tappass_budget::Ledger>) -> Gateway {
        self.ledger = ledger;
        self
    }

    /// Spend shared limits within leases renewed by `fleet`.
    pub fn with_fleet(mut self, fleet: Arc<crate::budget_fleet::FleetLeases>) -> Gateway {
        self.fleet = Some(fleet);
        self
    }

    fn next_request_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("tp-{:x}-{n:x}", self.epoch)
    }

    fn update_breaker_gauges(&self, state: &GatewayState) {
        for p in state.router.providers() {
            let v = match p.breaker.state() {
                BreakerState::Closed => 0,
                BreakerState::Open => 1,
                BreakerState::HalfOpen => 2,
            };
            self.metrics
                .breaker_state
                .with_label_values(&[&p.name])
                .set(v);
        }
    }

    /// Handle one request. Returns whether the connection may be reused.
    async fn handle(&self, session: &mut ServerSession, rec: &mut CallRecord) -> bool {
        let state = self.state.load_full();
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let trimmed = path.trim_end_matches('/');

        if trimmed == "/v1/models" {
            rec.endpoint = "models";
            let style = if session.get_header("anthropic-version").is_some() {
                ErrorStyle::Anthropic
            } else {
                ErrorStyle::OpenAi
            };
            if method != Method::GET {
                let e = GatewayError::MethodNotAllowed {
                    method: method.to_string(),
                    path,
                };
                return self.respond_error(session, rec, &e, style, false).await;
            }
            if let Err(e) = authenticate(&state, session) {
                return self.respond_error(session, rec, &e, style, false).await;
            }
            let body = models_body(&state.router, style);
            return self.respond_json(session, rec, 200, body, &[]).await;
        }

        if trimmed == "/v1/tools/check" || trimmed == "/v1/tools/execute" {
            let execute = trimmed.ends_with("execute");
            return self.tools_api(session, rec, &state, execute).await;
        }

        let Some(endpoint) = Endpoint::from_path(&path) else {
            let e = GatewayError::NotFound {
                method: method.to_string(),
                path,
            };
            return self
                .respond_error(session, rec, &e, ErrorStyle::OpenAi, false)
                .await;
        };
        rec.endpoint = endpoint.name();
        let style = endpoint.error_style();
        rec.style = style;
        rec.governed = true;
        if let Some(why) = self.link.as_ref().and_then(|l| l.refuses_calls()) {
            let e = GatewayError::ConfigurationStale(why);
            let at = ("check_configuration", "identity", "control_plane");
            return self.deny(session, rec, at, &e, style, false).await;
        }
        if method != Method::POST {
            let e = GatewayError::MethodNotAllowed {
                method: method.to_string(),
                path,
            };
            return self.respond_error(session, rec, &e, style, false).await;
        }
        let caller = match crate::auth::identify(
            &state.keys,
            state.tokens.as_ref(),
            session.get_header("authorization").map(|v| v.as_bytes()),
            session.get_header("x-api-key").map(|v| v.as_bytes()),
        ) {
            Ok(c) => c,
            Err(e) => {
                let at = ("verify_identity", "identity", "config:api_keys,tokens");
                return self.deny(session, rec, at, &e, style, false).await;
            }
        };
        let (method, provenance) = match &caller.method {
            AuthMethod::ApiKey => (
                json!({"method": "api_key", "key": caller.agent}),
                "config:api_keys",
            ),
            AuthMethod::Token { jti } => (
                json!({"method": "capability_token", "sub": caller.agent, "jti": jti, "sandbox": caller.sandbox}),
                "config:tokens",
            ),
        };
        rec.step("verify_identity", "allow", "identity", provenance, method);
        if let (Some(t), Some(sb)) = (state.tokens.as_ref(), caller.sandbox.as_deref()) {
            let evidence =
                json!({"sandbox": sb, "revoked_sandboxes": t.revocations.sandboxes.len()});
            if let Err(e) = t.check_sandbox(&caller) {
                let at = ("check_sandbox_active", "identity", "tokens:revocations");
                rec.agent = Some(caller.agent.clone());
                rec.sandbox = caller.sandbox.clone();
                return self.deny(session, rec, at, &e, style, false).await;
            }
            rec.step(
                "check_sandbox_active",
                "allow",
                "identity",
                "tokens:revocations",
                evidence,
            );
        }
        rec.agent = Some(caller.agent.clone());
        rec.org = caller.org.clone();
        rec.project = caller.project.clone();
        rec.sandbox = caller.sandbox.clone();
        rec.policy_version = state.policies.get(&caller.agent).map(|p| p.version);
        let content_type = session
            .get_header("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json_content_type(content_type) {
            let e = GatewayError::UnsupportedMediaType(content_type.to_string());
            let at = ("validate_request", "request", "gateway");
            return self.deny(session, rec, at, &e, style, false).await;
        }
        let body = match read_request_body(session, state.limits.max_request_body_bytes).await {
            Ok(b) => b,
            Err((e, keepalive)) => {
                rec.step(
                    "validate_request",
                    "deny",
                    "request",
                    "config:limits",
                    json!({"error": e.code()}),
                );
                return self.respond_error(session, rec, &e, style, keepalive).await;
            }
        };
        let mut call = match Call::parse(endpoint, &body) {
            Ok(c) => c,
            Err(e) => {
                let at = ("validate_request", "request", "gateway");
                return self.deny(session, rec, at, &e, style, true).await;
            }
        };
        rec.step(
            "validate_request",
            "allow",
            "request",
            "gateway",
            json!({"bytes": body.len(), "stream": call.stream}),
        );
        rec.stream = call.stream;
        let guard = match state.pipeline.for_agent(&caller.agent) {
            None => None,
            Some(Ok(g)) => Some(g),
            Some(Err(reason)) => {
                let e = GatewayError::GuardrailFailed {
                    step: "apply_compiled_policy",
                    reason,
                };
                rec.step(
                    "apply_compiled_policy",
                    "error",
                    "policy",
                    "control_plane",
                    json!({"error": e.code()}),
                );
                return self.respond_error(session, rec, &e, style, true).await;
            }
        };
        // A token that scopes tools is enforced even for a caller without
        // guardrails of its own.
        let guard = match (guard, caller.tool_scope.as_deref()) {
            (None, Some(_)) => match crate::pipeline::scope_only_guardrails() {
                Ok(g) => Some(g),
                Err(reason) => {
                    let e = GatewayError::GuardrailFailed {
                        step: "enforce_session_scope",
                        reason,
                    };
                    let at = ("enforce_session_scope", "tools", "token:scope");
                    return self.deny(session, rec, at, &e, style, true).await;
                }
            },
            (g, _) => g,
        };
        if let Some(scope) = caller.tool_scope.as_deref() {
            let catalog = guard.as_ref().map(|g| &g.tools);
            crate::steps::enforce_session_scope(scope, catalog, &mut call, rec);
        }
        let mut redactions = crate::pipeline::Redactions::default();
        if let Some(g) = &guard {
            match crate::pipeline::run_request(g, &mut call, rec) {
                Ok(r) => redactions = r,
                Err(e) => return self.respond_error(session, rec, &e, style, true).await,
            }
        }
        let session_header = session
            .get_header(crate::tool_governance::SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        let tool_gate = match crate::tool_governance::gate_for_call(
            guard.as_ref(),
            &call,
            &caller,
            session_header,
            rec,
        ) {
            Ok(t) => t,
            Err(e) => return self.respond_error(session, rec, &e, style, true).await,
        };
        if self.audit.as_ref().is_some_and(|a| a.store_content) {
            rec.prompt = Some(if call.is_rewritten() {
                serde_json::Value::Object(call.body().clone()).to_string()
            } else {
                String::from_utf8_lossy(&body).into_owned()
            });
        }
        let Some(targets) = state.router.resolve(&call.model) else {
            let e = GatewayError::UnknownModel(call.model.clone());
            rec.step(
                "route_model",
                "deny",
                "network",
                "config:models",
                json!({"model": call.model, "error": e.code()}),
            );
            return self.respond_error(session, rec, &e, style, true).await;
        };
        // Only configured models become metric labels.
        rec.model = call.model.clone();
        if !caller.may_use_model(&call.model) {
            let e = GatewayError::ModelNotAllowed(call.model.clone());
            rec.step(
                "model_allowed",
                "deny",
                "identity",
                "token:scope.models",
                json!({"model": call.model, "scope": caller.models}),
            );
            return self.respond_error(session, rec, &e, style, true).await;
        }
        if !caller.models.is_empty() {
            rec.step(
                "model_allowed",
                "allow",
                "identity",
                "token:scope.models",
                json!({"model": call.model, "scope": caller.models}),
            );
        }
        let allowed = match crate::steps::upstream_allowed(guard.as_deref(), targets, rec) {
            Ok(a) => a,
            Err(e) => return self.respond_error(session, rec, &e, style, true).await,
        };
        let targets: &[crate::providers::Target] = allowed.as_deref().unwrap_or(targets);
        if !targets.iter().any(|t| t.provider.speaks(endpoint)) {
            let p = &targets[0].provider;
            let e = GatewayError::FormatNotSupported(format!(
                "model `{}` is served by provider `{}`, which speaks {}; call it on that API's endpoint",
                call.model,
                p.name,
                p.api_name()
            ));
            rec.step(
                "route_model",
                "deny",
                "network",
                "config:models",
                json!({"model": call.model, "error": e.code()}),
            );
            return self.respond_error(session, rec, &e, style, true).await;
        }
        let route: Vec<&str> = targets.iter().map(|t| t.provider.name.as_str()).collect();
        rec.step(
            "route_model",
            "allow",
            "network",
            "config:models",
            json!({"model": call.model, "targets": route}),
        );
        if let Some(policy) = &state.budgets {
            let upstream_model = targets[0].upstream_model.as_deref();
            let fleet = self.fleet.as_deref();
            match crate::budget::reserve(
                &self.ledger,
                fleet,
                policy,
                &caller,
                &mut call,
                upstream_model,
                rec,
            )
            .await
            {
                Ok(b) => rec.budget = Some(b),
                Err(e) => return self.respond_error(session, rec, &e, style, true).await,
            }
        }
        tracing::debug!(request_id = %rec.request_id, agent = %caller.agent, model = %call.model, "call accepted");

        let added_usage = std::sync::atomic::AtomicBool::new(false);
        let body_for = |t: &crate::providers::Target| {
            let (b, added) = call.upstream_body(t.upstream_model.as_deref(), &body);
            added_usage.store(added, Ordering::Relaxed);
            b
        };
        let outbound = OutboundCall {
            endpoint,
            stream: call.stream,
            body_for: &body_for,
            client_headers: upstream::forwarded_headers(session.req_header()),
            model: &call.model,
            request_id: &rec.request_id,
        };
        rec.upstream_started = Some(Instant::now());
        let result =
            upstream::call_with_fallback(&self.connector, &self.metrics, targets, &outbound).await;
        self.update_breaker_gauges(&state);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                rec.upstream_ended = Some(Instant::now());
                rec.step(
                    "call_upstream",
                    "error",
                    "network",
                    "config:providers",
                    json!({"error": e.code()}),
                );
                return self.respond_error(session, rec, &e, style, true).await;
            }
        };
        rec.provider = resp.provider.name.clone();
        if let Some(b) = rec.budget.as_mut() {
            b.upstream_status = Some(resp.header.status.as_u16());
        }
        rec.step("call_upstream", "allow", "network", "config:providers", json!({"provider": resp.provider.name, "upstream_model": resp.upstream_model, "status": resp.header.status.as_u16()}));
        let is_sse = resp
            .header
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let ok = resp.header.status.is_success();
        if ok && is_sse {
            let mut hooks: Vec<Box<dyn StreamHook>> = Vec::new();
            if let Some(b) = &rec.budget {
                hooks.push(Box::new(b.meter()));
            }
            let strip_usage = added_usage.load(Ordering::Relaxed);
            let mut stream_guard = None;
            match guard.as_ref().filter(|g| g.checks_responses()) {
                Some(g) => {
                    match GuardStream::new(
                        g.clone(),
                        endpoint,
                        strip_usage,
                        state.limits.max_stream_hold_bytes,
                        rec.prompt.is_some(),
                    ) {
                        Ok((hook, report)) => {
                            hooks.push(Box::new(hook));
                            stream_guard = Some((g.clone(), report));
                        }
                        Err(e) => {
                            rec.step(
                                "detect_secrets_in_response",
                                "error",
                                "content",
                                "detectors",
                                json!({"error": e.code()}),
                            );
                            return self.respond_error(session, rec, &e, style, false).await;
                        }
                    }
                }
                None if strip_usage => hooks.push(Box::new(StripInjectedUsage)),
                None => {}
            }
            let tool_report = tool_gate.as_ref().map(|t| {
                let (hook, report) = t.stream_hook(endpoint);
                hooks.insert(0, Box::new(hook));
                report
            });
            let limits = RelayLimits {
                max_hold_bytes: state.limits.max_stream_hold_bytes,
                ..RelayLimits::default()
            };
            let relay = StreamRelay::new(endpoint, rec.request_id.clone(), hooks, limits);
            self.relay_stream(session, rec, resp, relay, stream_guard, tool_report)
                .await
        } else {
            let max = state.limits.max_response_body_bytes;
            let body = match upstream::read_body(&mut resp, max).await {
                Ok(b) => b,
                Err(e) => return self.respond_error(session, rec, &e, style, true).await,
            };
            rec.upstream_ended = Some(Instant::now());
            let response_guard = guard.as_ref().filter(|g| g.checks_responses());
            // The body is parsed once for every step that reads it.
            let mut parsed = None;
            if ok {
                rec.usage = usage_from_body(endpoint, &body);
                if rec.budget.is_some() || response_guard.is_some() || tool_gate.is_some() {
                    parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
                }
                if let Some(b) = &rec.budget {
                    b.count_tool_calls(endpoint, parsed.as_ref());
                }
            }
            let mut body = body;
            if let (true, Some(g)) = (ok, response_guard) {
                match crate::pipeline::run_response_body(g, &body, parsed.as_mut(), rec) {
                    Ok((b, r)) => {
                        body = b;
                        for (k, v) in r.0 {
                            *redactions.0.entry(k).or_insert(0) += v;
                        }
                    }
                    Err(e) => {
                        upstream::release(&self.connector, resp).await;
                        return self.respond_error(session, rec, &e, style, true).await;
                    }
                }
            }
            if let (true, Some(t)) = (ok, tool_gate.as_ref()) {
                if let Err(e) = t.check_body(endpoint, parsed.as_ref(), rec) {
                    upstream::release(&self.connector, resp).await;
                    return self.respond_error(session, rec, &e, style, true).await;
                }
            }
            if rec.prompt.is_some() {
                rec.response = Some(String::from_utf8_lossy(&body).into_owned());
            }
            let status = resp.header.status.as_u16();
            let headers = passthrough_headers(&resp.header);
            let provider = resp.provider.name.clone();
            upstream::release(&self.connector, resp).await;
            let mut extra: Vec<(String, Vec<u8>)> = headers;
            extra.push(("x-tappass-provider".into(), provider.into_bytes()));
            if !redactions.is_empty() {
                extra.push((
                    "x-tappass-redactions".into(),
                    redactions.header_value().into_bytes(),
                ));
            }
            self.respond_bytes(session, rec, status, body, &extra).await
        }
    }

    async fn relay_stream(
        &self,
        session: &mut ServerSession,
        rec: &mut CallRecord,
        mut resp: UpstreamResponse,
        mut relay: StreamRelay,
        guard: Option<(Arc<Guardrails>, Arc<std::sync::Mutex<StreamReport>>)>,
        tool_report: Option<Arc<std::sync::Mutex<crate::tool_governance::ToolReport>>>,
    ) -> bool {
        let status = resp.header.status.as_u16();
        rec.status = status;
        let mut header = match ResponseHeader::build(status, Some(8)) {
            Ok(h) => h,
            Err(_) => return false,
        };
        for (k, v) in passthrough_headers(&resp.header) {
            let _ = header.insert_header(k, v);
        }
        let _ = header.insert_header("content-type", "text/event-stream");
        let _ = header.insert_header("cache-control", "no-cache");
        let _ = header.insert_header("x-tappass-request-id", rec.request_id.as_str());
        let _ = header.insert_header("x-tappass-provider", resp.provider.name.as_str());
        if !session.is_http2() {
            let _ = header.insert_header("transfer-encoding", "chunked");
        }
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            return false;
        }
        let _streams = StreamGauge::new(&self.metrics);
        // A guarded stream keeps the text it released (redacted), not the
        // upstream's.
        if rec.prompt.is_some() && guard.is_none() {
            relay.capture_text();
        }
        let idle = resp.provider.timeouts.idle_ms;
        let mut client_gone = false;
        loop {
            let mut out = match upstream::read_chunk(&mut resp.session, resp.deadline, idle).await {
                Ok(Some(chunk)) => relay.push(&chunk),
                Ok(None) => relay.finish(),
                Err(e) => relay.fail(e),
            };
            if let Some(e) = &out.ended_with {
                rec.error = Some(e.to_string());
                if matches!(e, GatewayError::GuardrailDenied { .. }) {
                    rec.error_code = Some(e.code());
                }
                rec.bytes_released_before_block = Some(released_before(&relay, &out));
                rec.step(
                    "relay_stream",
                    "error",
                    "response",
                    "gateway",
                    json!({"error": e.code(), "bytes_released": rec.bytes_released_before_block}),
                );
            }
            if relay.is_done() {
                if let Some((g, report)) = &guard {
                    let report = report.lock().unwrap_or_else(|e| e.into_inner());
                    report.record(g, rec);
                }
                if let Some(t) = &tool_report {
                    t.lock().unwrap_or_else(|e| e.into_inner()).record(rec);
                }
                // The stream's last bytes wait until its audit row is durable.
                rec.upstream_ended = Some(Instant::now());
                let usage = relay.usage();
                if usage != Usage::default() {
                    rec.usage = Some(usage);
                }
                if let Some(text) = relay.captured_text() {
                    rec.response = Some(text.to_string());
                }
                if let Some((_, report)) = &guard {
                    let report = report.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(text) = &report.released_text {
                        rec.response = Some(text.clone());
                    }
                }
                if let Err(e) = self.seal_audit(rec).await {
                    rec.error = Some(e.to_string());
                    out.write = relay_error_after_seal_failure(&mut relay, e);
                }
            }
            for b in out.write {
                if rec.first_byte.is_none() {
                    rec.first_byte = Some(Instant::now());
                }
                if session.write_response_body(b, false).await.is_err() {
                    client_gone = true;
                    break;
                }
            }
            if client_gone || relay.is_done() {
                break;
            }
        }
        if client_gone {
            // The client left before the end: its row says so.
            let usage = relay.usage();
            if usage != Usage::default() {
                rec.usage = Some(usage);
            }
            rec.bytes_released_before_block
                .get_or_insert(relay.released_bytes());
            rec.error
                .get_or_insert_with(|| "client disconnected".into());
            let _ = self.seal_audit(rec).await;
            return false;
        }
        let clean = rec.error.is_none();
        if clean {
            upstream::release(&self.connector, resp).await;
        }
        session.finish_body().await.is_ok() && clean
    }

    /// `POST /v1/tools/check` and `/v1/tools/execute`: tool governance for
    /// callers that run tools themselves (answers in the OpenAI format).
    async fn tools_api(
        &self,
        session: &mut ServerSession,
        rec: &mut CallRecord,
        state: &GatewayState,
        execute: bool,
    ) -> bool {
        rec.endpoint = if execute {
            "tools_execute"
        } else {
            "tools_check"
        };
        rec.governed = true;
        let style = ErrorStyle::OpenAi;
        if let Some(why) = self.link.as_ref().and_then(|l| l.refuses_calls()) {
            let e = GatewayError::ConfigurationStale(why);
            let at = ("check_configuration", "identity", "control_plane");
            return self.deny(session, rec, at, &e, style, false).await;
        }
        if session.req_header().method != Method::POST {
            let e = GatewayError::MethodNotAllowed {
                method: session.req_header().method.to_string(),
                path: session.req_header().uri.path().to_string(),
            };
            return self.respond_error(session, rec, &e, style, false).await;
        }
        let caller = match authenticate(state, session) {
            Ok(c) => c,
            Err(e) => {
                let at = ("verify_identity", "identity", "config:api_keys,tokens");
                return self.deny(session, rec, at, &e, style, false).await;
            }
        };
        rec.agent = Some(caller.agent.clone());
        rec.sandbox = caller.sandbox.clone();
        rec.policy_version = state.policies.get(&caller.agent).map(|p| p.version);
        let body = match read_request_body(session, state.limits.max_request_body_bytes).await {
            Ok(b) => b,
            Err((e, keepalive)) => {
                return self.respond_error(session, rec, &e, style, keepalive).await
            }
        };
        let header = session
            .get_header(crate::tool_governance::SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        let guard = match state.pipeline.for_agent(&caller.agent) {
            // The token's tool scope governs even without guardrails.
            None if caller.tool_scope.is_some() => Some(crate::pipeline::scope_only_guardrails()),
            g => g,
        };
        match crate::tool_governance::tools_api(guard, &caller, header, &body, execute, rec) {
            Ok(v) => {
                let body = Bytes::from(v.to_string());
                self.respond_json(session, rec, 200, body, &[]).await
            }
            Err(e) => self.respond_error(session, rec, &e, style, true).await,
        }
    }

    /// Record `step`'s deny (aspect, provenance) with the error's code and
    /// answer with the error.
    async fn deny(
        &self,
        session: &mut ServerSession,
        rec: &mut CallRecord,
        (step, aspect, provenance): (&str, &str, &str),
        err: &GatewayError,
        style: ErrorStyle,
        keepalive: bool,
    ) -> bool {
        rec.step(
            step,
            "deny",
            aspect,
            provenance,
            json!({"error": err.code()}),
        );
        self.respond_error(session, rec, err, style, keepalive)
            .await
    }

    async fn respond_error(
        &self,
        session: &mut ServerSession,
        rec: &mut CallRecord,
        err: &GatewayError,
        style: ErrorStyle,
        keepalive: bool,
    ) -> bool {
        rec.error = Some(err.to_string());
        rec.error_code = Some(err.code());
        if !keepalive {
            session.set_keepalive(None);
        }
        let r = err.render(style);
        let mut headers = vec![(
            "x-tappass-error-code".to_string(),
            err.code().as_bytes().to_vec(),
        )];
        if let Some(secs) = err.retry_after() {
            headers.push(("retry-after".to_string(), secs.to_string().into_bytes()));
        }
        self.respond_bytes(session, rec, r.status, r.body, &headers)
            .await
            && keepalive
    }

    async fn respond_json(
        &self,
        session: &mut ServerSession,
        rec: &mut CallRecord,
        status: u16,
        body: Bytes,
        extra: &[(String, Vec<u8>)],
    ) -> bool {
        self.respond_bytes(session, rec, status, body, extra).await
    }

    /// Write a whole response. The call's audit row is made durable first;
    /// when it cannot be, the response is replaced by an error (fail closed).
    async fn respond_bytes(
        &self,
        session: &mut ServerSession,
        rec: &mut CallRecord,
        status: u16,
        body: Bytes,
        extra: &[(String, Vec<u8>)],
    ) -> bool {
        rec.status = status;
        let (status, body, extra) = match self.seal_audit(rec).await {
            Ok(()) => (status, body, extra.to_vec()),
            Err(e) => {
                rec.status = e.status();
                rec.error = Some(e.to_string());
                let r = e.render(rec.style);
                let code = e.code().as_bytes().to_vec();
                (
                    r.status,
                    r.body,
                    vec![("x-tappass-error-code".to_string(), code)],
                )
            }
        };
        let Ok(mut h) = ResponseHeader::build(status, Some(4 + extra.len())) else {
            return false;
        };
        for (k, v) in &extra {
            let _ = h.insert_header(k.clone(), v.as_slice());
        }
        if h.headers.get("content-type").is_none() {
            let _ = h.insert_header("content-type", "application/json");
        }
        let _ = h.insert_header("content-length", body.len().to_string());
        let _ = h.insert_header("x-tappass-request-id", rec.request_id.as_str());
        if session.write_response_header(Box::new(h)).await.is_err() {
            return false;
        }
        if !body.is_empty() && session.write_response_body(body, true).await.is_err() {
            return false;
        }
        session.finish_body().await.is_ok()
    }

    /// Write the call's audit row; with `durability: before_response`, wait
    /// until it is on disk.
    async fn seal_audit(&self, rec: &mut CallRecord) -> Result<(), GatewayError> {
        // The call's budget settles first, so that its cost is in the row.
        if let Some(b) = rec.budget.take() {
            rec.cost_micro_dollars = b.settle(rec.usage, rec.stream, rec.error.is_none());
        }
        let Some(sink) = &self.audit else {
            return Ok(());
        };
        if rec.audited {
            return Ok(());
        }
        rec.audited = true;
        sink.write(rec.to_audit_record(&sink.gateway_id, sink.store_content))
            .await
    }

    fn finish_record(&self, rec: &CallRecord) {
        let started = rec.started;
        let elapsed = started.elapsed();
        let m = &self.metrics;
        m.requests
            .with_label_values(&[
                rec.endpoint,
                &rec.model,
                &rec.provider,
                &rec.status.to_string(),
            ])
            .inc();
        m.latency
            .with_label_values(&[rec.endpoint, &rec.provider])
            .observe(elapsed.as_secs_f64());
        if let (true, Some(fb)) = (rec.stream, rec.first_byte) {
            m.ttfb
                .with_label_values(&[rec.endpoint, &rec.provider])
                .observe(fb.duration_since(started).as_secs_f64());
        }
        if let Some(u) = rec.usage {
            m.tokens
                .with_label_values(&[&rec.provider, &rec.model, "input"])
                .inc_by(u.input_tokens);
            m.tokens
                .with_label_values(&[&rec.provider, &rec.model, "output"])
                .inc_by(u.output_tokens);
        }
        tracing::info!(
            request_id = %rec.request_id,
            endpoint = rec.endpoint,
            model = %rec.model,
            provider = %rec.provider,
            status = rec.status,
            stream = rec.stream,
            input_tokens = rec.usage.map(|u| u.input_tokens),
            output_tokens = rec.usage.map(|u| u.output_tokens),
            ttfb_ms = rec.first_byte.map(|f| f.duration_since(started).as_millis() as u64),
            latency_ms = elapsed.as_millis() as u64,
            error = rec.error.as_deref(),
            "call"
        );
    }
}

/// Bytes released before this output's error event.
fn released_before(relay: &StreamRelay, out: &crate::relay::RelayOutput) -> u64 {
    let error_event = out.write.last().map_or(0, |b| b.len() as u64);
    relay.released_bytes().saturating_sub(error_event)
}

/// When the audit row of a finished stream cannot be written, the stream
/// ends with an error event instead of its last bytes.
fn relay_error_after_seal_failure(relay: &mut StreamRelay, e: GatewayError) -> Vec<Bytes> {
    relay.abort_with(e)
}

/// Counts an open client stream for as long as it lives.
struct StreamGauge<'a>(&'a Metrics);

impl<'a> StreamGauge<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.active_streams.inc();
        StreamGauge(m)
    }
}

impl Drop for StreamGauge<'_> {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}

fn authenticate(state: &GatewayState, session: &ServerSession) -> Result<Caller, GatewayError> {
    crate::auth::authenticate(
        &state.keys,
        state.tokens.as_ref(),
        session.get_header("authorization").map(|v| v.as_bytes()),
        session.get_header("x-api-key").map(|v| v.as_bytes()),
    )
}

/// Read the request body up to `max` bytes. On error, says whether the
/// connection can still be reused (only if the body was fully read).
async fn read_request_body(
    session: &mut ServerSession,
    max: usize,
) -> Result<Bytes, (GatewayError, bool)> {
    let too_large = GatewayError::PayloadTooLarge { limit: max };
    let declared = session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err((too_large, false));
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > max {
                    return Err((too_large, false));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err((
                    GatewayError::InvalidRequest(format!("could not read the request body: {e}")),
                    false,
                ))
            }
        }
    }
}

fn passthrough_headers(h: &ResponseHeader) -> Vec<(String, Vec<u8>)> {
    h.headers
        .iter()
        .filter(|(k, _)| !DROPPED_RESPONSE_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn models_body(router: &Router, style: ErrorStyle) -> Bytes {
    let names = router.model_names();
    let body = match style {
        ErrorStyle::OpenAi => json!({
            "object": "list",
            "data": names.iter().map(|n| {
                let owner = router.resolve(n).and_then(|t| t.first()).map(|t| t.provider.name.clone()).unwrap_or_default();
                json!({"id": n, "object": "model", "created": 0, "owned_by": owner})
            }).collect::<Vec<_>>(),
        }),
        ErrorStyle::Anthropic => json!({
            "data": names.iter().map(|n| json!({
                "type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        }),
    };
    Bytes::from(body.to_string())
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "could not read a request");
                return None;
            }
        }
        let _in_flight = self.lifecycle.track();
        if *shutdown.borrow() || self.lifecycle.is_draining() {
            session.set_keepalive(None);
        }
        let mut rec = CallRecord::new(self.next_request_id());
        let reusable = self.handle(&mut session, &mut rec).await;
        self.finish_record(&rec);
        if !reusable {
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }
}
