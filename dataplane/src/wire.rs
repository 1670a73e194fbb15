//! Wire formats: which endpoint a call is, the normalized view of its
//! request body, and the rewrite of that body for the upstream.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// The LLM API endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    AnthropicCountTokens,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
}

/// Which family of error bodies a caller expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    OpenAi,
    Anthropic,
}

/// The API family a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFamily {
    OpenAi,
    Anthropic,
}

impl Endpoint {
    /// Map a request path (without query) to an endpoint.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/messages" => Some(Endpoint::AnthropicMessages),
            "/v1/messages/count_tokens" => Some(Endpoint::AnthropicCountTokens),
            "/v1/responses" => Some(Endpoint::Responses),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    /// The upstream path suffix (after the provider's base path).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::AnthropicMessages => "/messages",
            Endpoint::AnthropicCountTokens => "/messages/count_tokens",
            Endpoint::Responses => "/responses",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    pub fn error_style(self) -> ErrorStyle {
        match self.family() {
            ApiFamily::Anthropic => ErrorStyle::Anthropic,
            ApiFamily::OpenAi => ErrorStyle::OpenAi,
        }
    }

    pub fn family(self) -> ApiFamily {
        match self {
            Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens => ApiFamily::Anthropic,
            _ => ApiFamily::OpenAi,
        }
    }

    /// Whether the endpoint can answer with an SSE stream.
    pub fn streams(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions | Endpoint::AnthropicMessages | Endpoint::Responses
        )
    }

    /// Name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::AnthropicMessages => "messages",
            Endpoint::AnthropicCountTokens => "count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// The normalized view of a request body that the gateway needs to route
/// and account for a call.
#[derive(Debug, Clone)]
pub struct Call {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// The caller asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`.
    pub max_tokens: Option<u64>,
    body: Map<String, Value>,
    /// The body was rewritten by a guardrail and must be re-serialized.
    rewritten: bool,
}

impl Call {
    /// Parse and validate a request body for `endpoint`.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Call, GatewayError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::InvalidRequest(
                "request body is empty; a JSON object is required".into(),
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            GatewayError::InvalidRequest(format!("request body is not valid JSON: {e}"))
        })?;
        let Value::Object(map) = value else {
            return Err(GatewayError::InvalidRequest(
                "request body must be a JSON object".into(),
            ));
        };
        let model = match map.get("model") {
            None | Some(Value::Null) => return Err(GatewayError::MissingModel),
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(GatewayError::MissingModel)
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(GatewayError::InvalidRequest(
                    "`model` must be a string".into(),
                ))
            }
        };
        let stream = match map.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(GatewayError::InvalidRequest(
                    "`stream` must be a boolean".into(),
                ))
            }
        };
        if stream && !endpoint.streams() {
            return Err(GatewayError::InvalidRequest(format!(
                "streaming is not supported on the {} endpoint",
                endpoint.name()
            )));
        }
        let include_usage = map
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let max_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_u64));
        Ok(Call {
            endpoint,
            model,
            stream,
            include_usage,
            max_tokens,
            body: map,
            rewritten: false,
        })
    }

    /// The parsed request body.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// The request body for a rewrite (redaction, removed tools): the
    /// upstream then receives the re-serialized body.
    pub fn body_mut(&mut self) -> &mut Map<String, Value> {
        self.rewritten = true;
        &mut self.body
    }

    /// The body for a walk that reads only (it is not marked rewritten).
    pub(crate) fn body_for_walk(&mut self) -> &mut Map<String, Value> {
        &mut self.body
    }

    /// Whether the body was rewritten.
    pub fn is_rewritten(&self) -> bool {
        self.rewritten
    }

    /// The body to send upstream: the upstream model name, and for OpenAI
    /// chat streams the usage chunk requested (the caller's own choice is
    /// restored on the way back by stripping that chunk). Returns the bytes
    /// and whether the gateway added `include_usage`.
    pub fn upstream_body(&self, upstream_model: Option<&str>, original: &Bytes) -> (Bytes, bool) {
        let add_usage =
            self.endpoint == Endpoint::ChatCompletions && self.stream && !self.include_usage;
        let rename = upstream_model.filter(|m| *m != self.model);
        if !add_usage && rename.is_none() && !self.rewritten {
            return (original.clone(), false);
        }
        let mut body = self.body.clone();
        if let Some(m) = rename {
            body.insert("model".into(), Value::String(m.to_owned()));
        }
        if add_usage {
            let opts = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !opts.is_object() {
                *opts = Value::Object(Map::new());
            }
            if let Value::Object(o) = opts {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        // Serializing a map of JSON values cannot fail.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        (Bytes::from(bytes), add_usage)
    }
}

/// Whether a `Content-Type` header value is JSON.
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_paths() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/messages/count_tokens"),
            Some(Endpoint::AnthropicCountTokens)
        );
        assert_eq!(
            Endpoint::from_path("/v1/responses/"),
            Some(Endpoint::Responses)
        );
        assert_eq!(Endpoint::from_path("/v2/chat"), None);
    }

    #[test]
    fn parse_rejects_bad_bodies() {
        let e = Endpoint::ChatCompletions;
        assert!(matches!(
            Call::parse(e, b""),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            Call::parse(e, b"{\"model\":"),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            Call::parse(e, b"[1,2]"),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            Call::parse(e, b"{}"),
            Err(GatewayError::MissingModel)
        ));
        assert!(matches!(
            Call::parse(e, b"{\"model\":\"  \"}"),
            Err(GatewayError::MissingModel)
        ));
        assert!(matches!(
            Call::parse(e, b"{\"model\":5}"),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            Call::parse(e, b"{\"model\":\"m\",\"stream\":\"yes\"}"),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            Call::parse(Endpoint::Embeddings, b"{\"model\":\"m\",\"stream\":true}"),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            Call::parse(e, b"\xff\xfe"),
            Err(GatewayError::InvalidRequest(_))
        ));
    }

    #[test]
    fn parse_reads_fields() {
        let c = Call::parse(
            Endpoint::ChatCompletions,
            br#"{"model":"gpt","stream":true,"max_completion_tokens":77,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(c.model, "gpt");
        assert!(c.stream && c.include_usage);
        assert_eq!(c.max_tokens, Some(77));
    }

    #[test]
    fn upstream_body_untouched_when_nothing_changes() {
        let raw = Bytes::from_static(br#"{"model":"gpt",  "messages":[]}"#);
        let c = Call::parse(Endpoint::ChatCompletions, &raw).unwrap();
        let (b, added) = c.upstream_body(Some("gpt"), &raw);
        assert_eq!(b, raw);
        assert!(!added);
    }

    #[test]
    fn upstream_body_renames_and_requests_usage() {
        let raw = Bytes::from_static(br#"{"model":"alias","stream":true,"stream_options":5}"#);
        let c = Call::parse(Endpoint::ChatCompletions, &raw).unwrap();
        let (b, added) = c.upstream_body(Some("real"), &raw);
        assert!(added);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "real");
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/vnd.api+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/x-www-form-urlencoded"));
        assert!(!is_json_content_type(""));
    }
}
