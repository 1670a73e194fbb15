//! Gateway errors and the one place that maps them to HTTP statuses and to
//! each caller's wire format.

use bytes::Bytes;
use serde_json::json;

use crate::wire::{Endpoint, ErrorStyle};

/// Every way a call can fail before or while it is proxied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{message}")]
    TokenRejected { code: &'static str, message: String },
    #[error("model `{0}` is outside this caller's scope")]
    ModelNotAllowed(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("content type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("missing required field `model`")]
    MissingModel,
    #[error("model `{0}` is not configured on this gateway")]
    UnknownModel(String),
    #[error("{0}")]
    FormatNotSupported(String),
    #[error("all providers for model `{model}` are unavailable: {detail}")]
    UpstreamUnavailable { model: String, detail: String },
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
    #[error("upstream failed mid-stream: {0}")]
    UpstreamBroken(String),
    #[error("upstream response is not valid: {0}")]
    BadUpstreamResponse(String),
    #[error("{0}")]
    ConfigurationStale(String),
    #[error("the audit trail cannot record this call: {0}")]
    AuditUnavailable(String),
    #[error("{reason}")]
    GuardrailDenied {
        /// `secret_blocked`, `pii_blocked`, `prompt_injection`, `tool_denied`,
        /// `loop_guard`, `exfil_blocked` (`detect_exfil`,
        /// `detect_exfil_in_response`), `tool_result_blocked`
        /// (`tool_result_scan`), `policy_denied` (`apply_compiled_policy`),
        /// `upstream_not_allowed` (`upstream_allowed`). All are 403.
        code: &'static str,
        reason: String,
    },
    #[error("guardrail step `{step}` could not run: {reason}")]
    GuardrailFailed { step: &'static str, reason: String },
    /// A scope's budget or rate limit cannot cover the call.
    #[error("{0}")]
    BudgetExceeded(Box<tappass_budget::Exceeded>),
    /// A stream's output reached what the call had reserved.
    #[error("the response reached the {reserved} output tokens reserved for this call ({counted} counted); the stream was ended")]
    OutputBudgetReached { reserved: u64, counted: u64 },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the tool call is allowed, but this gateway has no tool executor configured; run the tool yourself after `POST /v1/tools/check`")]
    ToolExecutorUnavailable,
    /// A stream held back for inspection (a tool call being assembled, text
    /// that may still be part of a finding) grew past the hold limit before
    /// it could be checked; nothing of it was released.
    #[error("the response held back for inspection grew past {limit} bytes (limits.max_stream_hold_bytes) before it could be checked, and was not released")]
    StreamHoldExceeded { limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

/// An error rendered for one caller: status, content type and body.
#[derive(Debug, Clone)]
pub struct RenderedError {
    pub status: u16,
    pub body: Bytes,
}

impl GatewayError {
    /// The HTTP status for this error. This is the only mapping of errors to
    /// statuses in the gateway.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::NotFound { .. } | GatewayError::UnknownModel(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::Unauthorized(_) | GatewayError::TokenRejected { .. } => 401,
            GatewayError::ModelNotAllowed(_) | GatewayError::GuardrailDenied { .. } => 403,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::UnsupportedMediaType(_) => 415,
            GatewayError::InvalidRequest(_)
            | GatewayError::MissingModel
            | GatewayError::FormatNotSupported(_) => 400,
            GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamBroken(_)
            | GatewayError::BadUpstreamResponse(_)
            | GatewayError::StreamHoldExceeded { .. } => 502,
            GatewayError::UpstreamTimeout(_) => 504,
            GatewayError::ShuttingDown
            | GatewayError::AuditUnavailable(_)
            | GatewayError::ConfigurationStale(_) => 503,
            GatewayError::Internal(_) | GatewayError::GuardrailFailed { .. } => 500,
            GatewayError::ToolExecutorUnavailable => 501,
            GatewayError::BudgetExceeded(_) | GatewayError::OutputBudgetReached { .. } => 429,
        }
    }

    /// Machine-readable code (OpenAI `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NotFound { .. } => "not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::Unauthorized(_) => "invalid_api_key",
            GatewayError::TokenRejected { code, .. } => code,
            GatewayError::ModelNotAllowed(_) => "model_not_allowed",
            GatewayError::PayloadTooLarge { .. } => "request_too_large",
            GatewayError::UnsupportedMediaType(_) => "unsupported_media_type",
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::MissingModel => "missing_model",
            GatewayError::UnknownModel(_) => "model_not_found",
            GatewayError::FormatNotSupported(_) => "format_not_supported",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::UpstreamBroken(_) => "upstream_stream_broken",
            GatewayError::BadUpstreamResponse(_) => "bad_upstream_response",
            GatewayError::StreamHoldExceeded { .. } => "response_too_large_to_inspect",
            GatewayError::AuditUnavailable(_) => "audit_unavailable",
            GatewayError::ConfigurationStale(_) => "configuration_stale",
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::ToolExecutorUnavailable => "tool_executor_unavailable",
            GatewayError::GuardrailDenied { code, .. } => code,
            GatewayError::GuardrailFailed { .. } => "guardrail_failed",
            GatewayError::Internal(_) => "internal_error",
            GatewayError::BudgetExceeded(e) => match e.metric {
                tappass_budget::Metric::Tokens => "token_budget_exceeded",
                tappass_budget::Metric::MicroDollars => "dollar_budget_exceeded",
                tappass_budget::Metric::Requests | tappass_budget::Metric::ToolCalls => {
                    "rate_limited"
                }
            },
            GatewayError::OutputBudgetReached { .. } => "token_budget_exceeded",
        }
    }

    /// Seconds a refused caller should wait (`retry-after`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::BudgetExceeded(e) => Some(e.retry_after),
            _ => None,
        }
    }

    /// OpenAI `error.type`.
    fn openai_type(&self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400 | 405 | 413 | 415 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// Anthropic `error.type`.
    fn anthropic_type(&self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            400 | 405 | 415 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The JSON error object in the given style (without SSE framing).
    pub fn json_body(&self, style: ErrorStyle) -> serde_json::Value {
        let message = self.to_string();
        match style {
            ErrorStyle::OpenAi => json!({
                "error": {
                    "message": message,
                    "type": self.openai_type(),
                    "param": if matches!(self, GatewayError::MissingModel | GatewayError::UnknownModel(_) | GatewayError::ModelNotAllowed(_)) { json!("model") } else { json!(null) },
                    "code": self.code(),
                }
            }),
            ErrorStyle::Anthropic => json!({
                "type": "error",
                "error": { "type": self.anthropic_type(), "message": message },
            }),
        }
    }

    /// Render a complete (non-streaming) error response for the caller.
    pub fn render(&self, style: ErrorStyle) -> RenderedError {
        RenderedError {
            status: self.status(),
            body: Bytes::from(self.json_body(style).to_string()),
        }
    }

    /// Render the event that ends a stream with this error, in the wire
    /// format of the stream's endpoint.
    pub fn stream_event(&self, endpoint: Endpoint, response_id: &str) -> Bytes {
        match endpoint {
            Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens => {
                crate::sse::encode_event(
                    Some("error"),
                    &self.json_body(ErrorStyle::Anthropic).to_string(),
                )
            }
            Endpoint::Responses => {
                let body = json!({
                    "type": "response.failed",
                    "response": {
                        "id": response_id,
                        "object": "response",
                        "status": "failed",
                        "error": { "code": self.code(), "message": self.to_string() },
                        "output": [],
                    }
                });
                crate::sse::encode_event(Some("response.failed"), &body.to_string())
            }
            _ => crate::sse::encode_event(None, &self.json_body(ErrorStyle::OpenAi).to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(GatewayError::MissingModel.status(), 400);
        assert_eq!(GatewayError::UnknownModel("x".into()).status(), 404);
        assert_eq!(GatewayError::PayloadTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::UnsupportedMediaType("t".into()).status(), 415);
        assert_eq!(GatewayError::Unauthorized("no".into()).status(), 401);
        assert_eq!(GatewayError::UpstreamTimeout("t".into()).status(), 504);
        let denied = GatewayError::GuardrailDenied {
            code: "secret_blocked",
            reason: "a secret".into(),
        };
        assert_eq!(denied.status(), 403);
        assert_eq!(denied.code(), "secret_blocked");
        assert_eq!(
            denied.json_body(ErrorStyle::Anthropic)["error"]["type"],
            "permission_error"
        );
        for code in [
            "exfil_blocked",
            "tool_result_blocked",
            "policy_denied",
            "upstream_not_allowed",
        ] {
            let e = GatewayError::GuardrailDenied {
                code,
                reason: "r".into(),
            };
            assert_eq!((e.status(), e.code()), (403, code));
            assert_eq!(e.json_body(ErrorStyle::OpenAi)["error"]["code"], code);
        }
        let failed = GatewayError::GuardrailFailed {
            step: "detect_pii",
            reason: "scan failed".into(),
        };
        assert_eq!(failed.status(), 500);
        assert_eq!(failed.code(), "guardrail_failed");
    }

    #[test]
    fn openai_and_anthropic_shapes() {
        let e = GatewayError::UnknownModel("gpt-x".into());
        let o = e.json_body(ErrorStyle::OpenAi);
        assert_eq!(o["error"]["code"], "model_not_found");
        assert_eq!(o["error"]["param"], "model");
        let a = e.json_body(ErrorStyle::Anthropic);
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
    }

    #[test]
    fn stream_events_per_format() {
        let e = GatewayError::UpstreamBroken("reset".into());
        let a = e.stream_event(Endpoint::AnthropicMessages, "r");
        assert!(a.starts_with(b"event: error\ndata: {"));
        let r = e.stream_event(Endpoint::Responses, "resp_1");
        assert!(r.starts_with(b"event: response.failed\n"));
        let o = e.stream_event(Endpoint::ChatCompletions, "c");
        assert!(o.starts_with(b"data: {\"error\":"));
    }
}
