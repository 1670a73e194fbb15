//! A deterministic mock LLM provider speaking OpenAI chat completions,
//! Anthropic messages (and count_tokens), OpenAI Responses, embeddings and
//! models, streaming and not, including tool calls.
//!
//! By default it echoes the last user message. A call can be scripted by
//! starting the last user message with `MOCK:` followed by a JSON
//! [`Script`], and the mock can be scripted for the next calls through
//! `POST /__mock/script` (a JSON array of scripts, consumed in order). It
//! records what it received (`GET /__mock/requests`, cleared by
//! `POST /__mock/reset`). It is the offline provider of the gateway's
//! embedded default configuration (served in-process on a Unix socket) and
//! the upstream of tests and benchmarks (binary `tappass-mock-llm`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sse::encode_event;
use crate::wire::Endpoint;

/// How the mock answers one call.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Reply text (default: the last user message).
    #[serde(default)]
    pub reply: Option<String>,
    /// Answer with a tool call instead of text.
    #[serde(default)]
    pub tool_call: Option<ToolCallScript>,
    /// Answer with this HTTP error status.
    #[serde(default)]
    pub status: Option<u16>,
    /// Message of the scripted error.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Characters per streamed text or argument fragment (default 8).
    #[serde(default)]
    pub chunk_size: Option<usize>,
    /// Delay between streamed events.
    #[serde(default)]
    pub chunk_delay_ms: Option<u64>,
    /// Delay before the response headers.
    #[serde(default)]
    pub first_byte_delay_ms: Option<u64>,
    /// Drop the connection after this many streamed events.
    #[serde(default)]
    pub die_after_events: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolCallScript {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

/// Process-wide defaults of a mock instance.
#[derive(Debug, Clone, Default)]
pub struct MockOptions {
    /// Applied to every call that has no script of its own.
    pub default_script: Script,
}

/// One request the mock received.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

const MAX_RECORDED: usize = 1000;

/// The mock provider application.
pub struct MockLlm {
    options: MockOptions,
    queue: Mutex<VecDeque<Script>>,
    recorded: Mutex<VecDeque<Recorded>>,
    seq: AtomicU64,
    calls: AtomicU64,
}

impl MockLlm {
    pub fn new(options: MockOptions) -> MockLlm {
        MockLlm {
            options,
            queue: Mutex::new(VecDeque::new()),
            recorded: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Text of a content value: a string, or an array of text parts/blocks.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The last user message of a request, in any of the supported formats.
pub fn last_user_text(endpoint: Endpoint, body: &Value) -> String {
    match endpoint {
        Endpoint::Responses => match body.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .rev()
                .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
                .and_then(|i| i.get("content"))
                .map(content_text)
                .unwrap_or_default(),
            _ => String::new(),
        },
        Endpoint::Embeddings => match body.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        },
        _ => body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            })
            .and_then(|m| m.get("content"))
            .map(content_text)
            .unwrap_or_default(),
    }
}

/// Deterministic token estimate: one token per four characters, at least one.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

/// The planned answer to one call.
struct Answer {
    endpoint: Endpoint,
    model: String,
    id: u64,
    text: String,
    tool: Option<ToolCallScript>,
    input_tokens: u64,
    output_tokens: u64,
    chunk_size: usize,
    include_usage: bool,
}

impl Answer {
    fn output_text(&self) -> &str {
        self.tool.as_ref().map_or(&self.text, |t| &t.arguments)
    }

    fn json(&self) -> Value {
        let (i, o, m, n) = (self.input_tokens, self.output_tokens, &self.model, self.id);
        match (self.endpoint, &self.tool) {
            (Endpoint::ChatCompletions, tool) => {
                let message = match tool {
                    None => json!({"role": "assistant", "content": self.text, "refusal": null}),
                    Some(t) => json!({"role": "assistant", "content": null, "tool_calls": [{
                        "id": format!("call_mock_{n}"), "type": "function",
                        "function": {"name": t.name, "arguments": t.arguments}}]}),
                };
                json!({"id": format!("chatcmpl-mock-{n}"), "object": "chat.completion", "created": 0,
                    "model": m, "choices": [{"index": 0, "message": message, "logprobs": null,
                    "finish_reason": if tool.is_some() {"tool_calls"} else {"stop"}}],
                    "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}})
            }
            (Endpoint::AnthropicMessages, tool) => {
                let content = match tool {
                    None => json!([{"type": "text", "text": self.text}]),
                    Some(t) => json!([{"type": "tool_use", "id": format!("toolu_mock_{n}"),
                        "name": t.name, "input": serde_json::from_str::<Value>(&t.arguments).unwrap_or(json!({}))}]),
                };
                json!({"id": format!("msg_mock_{n}"), "type": "message", "role": "assistant",
                    "model": m, "content": content,
                    "stop_reason": if tool.is_some() {"tool_use"} else {"end_turn"},
                    "stop_sequence": null, "usage": {"input_tokens": i, "output_tokens": o}})
            }
            (Endpoint::Responses, _) => {
                json!({"id": format!("resp_mock_{n}"), "object": "response", "created_at": 0,
                    "status": "completed", "model": m, "output": [self.responses_item(true)],
                    "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
                    "usage": responses_usage(i, o)})
            }
            (Endpoint::AnthropicCountTokens, _) => json!({"input_tokens": i}),
            (Endpoint::Embeddings, _) => unreachable!("embeddings are answered separately"),
        }
    }

    fn responses_item(&self, done: bool) -> Value {
        let n = self.id;
        let status = if done { "completed" } else { "in_progress" };
        match &self.tool {
            None => json!({"type": "message", "id": format!("msg_mock_{n}"), "status": status,
                "role": "assistant", "content": if done {
                    json!([{"type": "output_text", "text": self.text, "annotations": []}])
                } else { json!([]) }}),
            Some(t) => json!({"type": "function_call", "id": format!("fc_mock_{n}"),
                "call_id": format!("call_mock_{n}"), "name": t.name,
                "arguments": if done { t.arguments.as_str() } else { "" }, "status": status}),
        }
    }

    /// The streamed events of this answer.
    fn events(&self) -> Vec<Bytes> {
        let (i, o, m, n) = (self.input_tokens, self.output_tokens, &self.model, self.id);
        let parts = chunks(self.output_text(), self.chunk_size);
        let mut ev = Vec::new();
        match self.endpoint {
            Endpoint::ChatCompletions => {
                let chunk = |delta: Value, finish: Value| {
                    let c = json!({"id": format!("chatcmpl-mock-{n}"), "object": "chat.completion.chunk",
                        "created": 0, "model": m, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                    encode_event(None, &c.to_string())
                };
                match &self.tool {
                    None => {
                        ev.push(chunk(
                            json!({"role": "assistant", "content": ""}),
                            Value::Null,
                        ));
                        for p in &parts {
                            ev.push(chunk(json!({"content": p}), Value::Null));
                        }
                        ev.push(chunk(json!({}), json!("stop")));
                    }
                    Some(t) => {
                        ev.push(chunk(
                            json!({"role": "assistant", "content": null, "tool_calls": [{
                            "index": 0, "id": format!("call_mock_{n}"), "type": "function",
                            "function": {"name": t.name, "arguments": ""}}]}),
                            Value::Null,
                        ));
                        for p in &parts {
                            ev.push(chunk(
                                json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
                                Value::Null,
                            ));
                        }
                        ev.push(chunk(json!({}), json!("tool_calls")));
                    }
                }
                if self.include_usage {
                    let c = json!({"id": format!("chatcmpl-mock-{n}"), "object": "chat.completion.chunk",
                        "created": 0, "model": m, "choices": [],
                        "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}});
                    ev.push(encode_event(None, &c.to_string()));
                }
                ev.push(encode_event(None, "[DONE]"));
            }
            Endpoint::AnthropicMessages => {
                let e = |name: &str, v: Value| encode_event(Some(name), &v.to_string());
                ev.push(e("message_start", json!({"type": "message_start", "message": {
                    "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": m,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": i, "output_tokens": 1}}})));
                let (block, delta_type, field) = match &self.tool {
                    None => (json!({"type": "text", "text": ""}), "text_delta", "text"),
                    Some(t) => (
                        json!({"type": "tool_use", "id": format!("toolu_mock_{n}"),
                        "name": t.name, "input": {}}),
                        "input_json_delta",
                        "partial_json",
                    ),
                };
                ev.push(e(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": block}),
                ));
                ev.push(e("ping", json!({"type": "ping"})));
                for p in &parts {
                    let mut delta = json!({"type": delta_type});
                    delta[field] = json!(p);
                    ev.push(e(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": delta}),
                    ));
                }
                ev.push(e(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                let stop = if self.tool.is_some() {
                    "tool_use"
                } else {
                    "end_turn"
                };
                ev.push(e("message_delta", json!({"type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": o}})));
                ev.push(e("message_stop", json!({"type": "message_stop"})));
            }
            Endpoint::Responses => {
                let mut seq = 0u64;
                let mut e = |name: &str, mut v: Value| {
                    v["type"] = json!(name);
                    v["sequence_number"] = json!(seq);
                    seq += 1;
                    encode_event(Some(name), &v.to_string())
                };
                let base = |status: &str| {
                    json!({"id": format!("resp_mock_{n}"), "object": "response",
                    "created_at": 0, "status": status, "model": m, "output": [],
                    "parallel_tool_calls": true, "tool_choice": "auto", "tools": []})
                };
                ev.push(e(
                    "response.created",
                    json!({"response": base("in_progress")}),
                ));
                ev.push(e(
                    "response.in_progress",
                    json!({"response": base("in_progress")}),
                ));
                ev.push(e(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": self.responses_item(false)}),
                ));
                let item_id = match &self.tool {
                    None => format!("msg_mock_{n}"),
                    Some(_) => format!("fc_mock_{n}"),
                };
                match &self.tool {
                    None => {
                        ev.push(e("response.content_part.added", json!({"item_id": item_id, "output_index": 0,
                            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})));
                        for p in &parts {
                            ev.push(e(
                                "response.output_text.delta",
                                json!({"item_id": item_id, "output_index": 0,
                                "content_index": 0, "delta": p, "logprobs": []}),
                            ));
                        }
                        ev.push(e(
                            "response.output_text.done",
                            json!({"item_id": item_id, "output_index": 0,
                            "content_index": 0, "text": self.text, "logprobs": []}),
                        ));
                        ev.push(e("response.content_part.done", json!({"item_id": item_id, "output_index": 0,
                            "content_index": 0, "part": {"type": "output_text", "text": self.text, "annotations": []}})));
                    }
                    Some(t) => {
                        for p in &parts {
                            ev.push(e(
                                "response.function_call_arguments.delta",
                                json!({"item_id": item_id,
                                "output_index": 0, "delta": p}),
                            ));
                        }
                        ev.push(e(
                            "response.function_call_arguments.done",
                            json!({"item_id": item_id,
                            "output_index": 0, "arguments": t.arguments}),
                        ));
                    }
                }
                ev.push(e(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": self.responses_item(true)}),
                ));
                let mut done = base("completed");
                done["output"] = json!([self.responses_item(true)]);
                done["usage"] = responses_usage(i, o);
                ev.push(e("response.completed", json!({"response": done})));
            }
            _ => {}
        }
        ev
    }
}

fn responses_usage(i: u64, o: u64) -> Value {
    json!({"input_tokens": i, "output_tokens": o, "total_tokens": i + o,
        "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
}

/// Deterministic embedding of a text: 8 floats from a hash.
fn embedding(text: &str) -> Vec<f32> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (0..8)
        .map(|k| {
            let v = h.rotate_left(k * 8) & 0xffff;
            (v as f32 / 65535.0) * 2.0 - 1.0
        })
        .collect()
}

fn embeddings_json(body: &Value, model: &str) -> Value {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => vec![],
    };
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let tokens: u64 = inputs.iter().map(|s| estimate_tokens(s)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = embedding(s);
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

fn error_json(endpoint: Option<Endpoint>, status: u16, message: &str) -> Value {
    match endpoint.map(Endpoint::family) {
        Some(crate::wire::ApiFamily::Anthropic) => {
            json!({"type": "error", "error": {"type": "api_error", "message": message}})
        }
        _ => json!({"error": {"message": message, "type": "api_error", "param": null,
            "code": status.to_string()}}),
    }
}

async fn write_whole(session: &mut ServerSession, status: u16, ctype: &str, body: Bytes) -> bool {
    let Ok(mut h) = ResponseHeader::build(status, Some(3)) else {
        return false;
    };
    let _ = h.insert_header("content-type", ctype);
    let _ = h.insert_header("content-length", body.len().to_string());
    if session.write_response_header(Box::new(h)).await.is_err() {
        return false;
    }
    if !body.is_empty() && session.write_response_body(body, true).await.is_err() {
        return false;
    }
    session.finish_body().await.is_ok()
}

impl MockLlm {
    /// Serve one request; returns whether the connection may be reused.
    async fn serve(&self, session: &mut ServerSession) -> bool {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        // Control endpoints.
        match (method.as_str(), path.as_str()) {
            ("POST", "/__mock/script") => {
                return match serde_json::from_slice::<Vec<Script>>(&body) {
                    Ok(scripts) => {
                        lock(&self.queue).extend(scripts);
                        write_whole(session, 204, "application/json", Bytes::new()).await
                    }
                    Err(e) => {
                        let b = error_json(None, 400, &format!("bad script: {e}")).to_string();
                        write_whole(session, 400, "application/json", b.into()).await
                    }
                };
            }
            ("POST", "/__mock/reset") => {
                lock(&self.queue).clear();
                lock(&self.recorded).clear();
                self.calls.store(0, Ordering::Relaxed);
                return write_whole(session, 204, "application/json", Bytes::new()).await;
            }
            ("GET", "/__mock/requests") => {
                let recorded: Vec<Recorded> = lock(&self.recorded).iter().cloned().collect();
                let b = json!({"calls": self.calls.load(Ordering::Relaxed), "requests": recorded});
                return write_whole(session, 200, "application/json", b.to_string().into()).await;
            }
            _ => {}
        }
        if method == "GET" && path.trim_end_matches('/').ends_with("/models") {
            let b = json!({"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]});
            return write_whole(session, 200, "application/json", b.to_string().into()).await;
        }
        let suffix = path
            .rsplit_once("/v1")
            .map(|(_, s)| format!("/v1{s}"))
            .or_else(|| {
                // Azure deployment paths: /openai/deployments/{d}/chat/completions
                path.split_once("/deployments/")
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map(|(_, s)| format!("/v1/{s}"))
            })
            .unwrap_or_else(|| path.clone());
        let endpoint = Endpoint::from_path(&suffix)
            .or_else(|| (path.ends_with("/openai/responses")).then_some(Endpoint::Responses));
        self.calls.fetch_add(1, Ordering::Relaxed);
        {
            let mut rec = lock(&self.recorded);
            if rec.len() == MAX_RECORDED {
                rec.pop_front();
            }
            rec.push_back(Recorded {
                path: session.req_header().uri.to_string(),
                headers: session
                    .req_header()
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let Some(endpoint) = endpoint else {
            let b = error_json(None, 404, &format!("mock: no route for {path}")).to_string();
            return write_whole(session, 404, "application/json", b.into()).await;
        };
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let b = error_json(Some(endpoint), 400, &format!("mock: invalid JSON: {e}"))
                    .to_string();
                return write_whole(session, 400, "application/json", b.into()).await;
            }
        };
        let user = last_user_text(endpoint, &parsed);
        let mut script = lock(&self.queue)
            .pop_front()
            .unwrap_or_else(|| self.options.default_script.clone());
        let mut text = user.clone();
        if let Some(directive) = user.strip_prefix("MOCK:") {
            match serde_json::from_str::<Script>(directive.trim()) {
                Ok(s) => {
                    script = s;
                    text = String::new();
                }
                Err(e) => {
                    let b = error_json(
                        Some(endpoint),
                        400,
                        &format!("mock: bad MOCK directive: {e}"),
                    )
                    .to_string();
                    return write_whole(session, 400, "application/json", b.into()).await;
                }
            }
        }
        if let Some(ms) = script.first_byte_delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let model = parsed
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("mock")
            .to_string();
        if let Some(status) = script.status {
            let msg = script
                .error_message
                .clone()
                .unwrap_or_else(|| format!("mock error {status}"));
            let b = error_json(Some(endpoint), status, &msg).to_string();
            return write_whole(session, status, "application/json", b.into()).await;
        }
        if endpoint == Endpoint::Embeddings {
            let b = embeddings_json(&parsed, &model).to_string();
            return write_whole(session, 200, "application/json", b.into()).await;
        }
        let reply = script.reply.clone().unwrap_or_else(|| {
            if text.is_empty() {
                "Hello from the TapPass mock provider.".to_string()
            } else {
                text
            }
        });
        let prompt_chars: String = match endpoint {
            Endpoint::Responses => parsed
                .get("input")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            _ => parsed
                .get("messages")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        };
        let answer = Answer {
            endpoint,
            model,
            id: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            input_tokens: estimate_tokens(&prompt_chars),
            output_tokens: estimate_tokens(
                script.tool_call.as_ref().map_or(&reply, |t| &t.arguments),
            ),
            text: reply,
            tool: script.tool_call.clone(),
            chunk_size: script.chunk_size.unwrap_or(8),
            include_usage: parsed
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let stream = parsed
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !stream || !endpoint.streams() {
            return write_whole(
                session,
                200,
                "application/json",
                answer.json().to_string().into(),
            )
            .await;
        }
        let Ok(mut h) = ResponseHeader::build(200, Some(3)) else {
            return false;
        };
        let _ = h.insert_header("content-type", "text/event-stream");
        let _ = h.insert_header("cache-control", "no-cache");
        if !session.is_http2() {
            let _ = h.insert_header("transfer-encoding", "chunked");
        }
        if session.write_response_header(Box::new(h)).await.is_err() {
            return false;
        }
        for (k, ev) in answer.events().into_iter().enumerate() {
            if script.die_after_events == Some(k) {
                return false; // drop the connection mid-stream
            }
            if k > 0 {
                if let Some(ms) = script.chunk_delay_ms {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            if session.write_response_body(ev, false).await.is_err() {
                return false;
            }
        }
        session.finish_body().await.is_ok()
    }
}

#[async_trait]
impl HttpServerApp for MockLlm {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !matches!(session.read_request().await, Ok(true)) {
            return None;
        }
        if !self.serve(&mut session).await {
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(s)) => Some(ReusedHttpStream::from_reusable_stream(s, persistent)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(endpoint: Endpoint, tool: bool) -> Answer {
        Answer {
            endpoint,
            model: "m".into(),
            id: 1,
            text: "hello world".into(),
            tool: tool.then(|| ToolCallScript {
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }),
            input_tokens: 3,
            output_tokens: 3,
            chunk_size: 4,
            include_usage: true,
        }
    }

    /// The mock's own streams decode, through the gateway's decoders, to the
    /// text, tool call and usage it meant to send.
    #[test]
    fn streams_round_trip_through_the_event_decoder() {
        use crate::events::EventDecoder;
        use crate::sse::SseDecoder;
        for endpoint in [
            Endpoint::ChatCompletions,
            Endpoint::AnthropicMessages,
            Endpoint::Responses,
        ] {
            for tool in [false, true] {
                let a = answer(endpoint, tool);
                let mut sse = SseDecoder::default();
                let mut frames = Vec::new();
                for ev in a.events() {
                    sse.feed(&ev, &mut frames).unwrap();
                }
                let mut d = EventDecoder::new(endpoint);
                let (mut text, mut args, mut terminal) = (String::new(), String::new(), false);
                let mut name = None;
                for f in &frames {
                    let info = d.decode(f);
                    text.push_str(info.text.as_deref().unwrap_or(""));
                    for tc in info.tool_calls {
                        args.push_str(&tc.arguments);
                        name = name.or(tc.name);
                    }
                    terminal |= info.terminal;
                }
                assert!(terminal, "{endpoint:?}");
                if tool {
                    assert_eq!(args, "{\"city\":\"Paris\"}", "{endpoint:?}");
                    assert_eq!(name.as_deref(), Some("get_weather"));
                    assert_eq!(text, "");
                } else {
                    assert_eq!(text, "hello world", "{endpoint:?}");
                }
                assert_eq!(d.usage().output_tokens, 3, "{endpoint:?}");
            }
        }
    }

    #[test]
    fn last_user_text_in_each_format() {
        let chat = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": [{"type": "text", "text": "c"}]}]});
        assert_eq!(last_user_text(Endpoint::ChatCompletions, &chat), "c");
        let resp =
            json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]});
        assert_eq!(last_user_text(Endpoint::Responses, &resp), "hi");
        assert_eq!(
            last_user_text(Endpoint::Responses, &json!({"input": "x"})),
            "x"
        );
        assert_eq!(last_user_text(Endpoint::AnthropicMessages, &json!({})), "");
    }

    #[test]
    fn embeddings_are_deterministic_and_base64_decodes() {
        let v = embeddings_json(
            &json!({"input": ["a", "b"], "encoding_format": "base64"}),
            "e",
        );
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        let floats = embeddings_json(&json!({"input": "a"}), "e");
        let first = f32::from_le_bytes(bytes[..4].try_into().unwrap());
        assert_eq!(
            floats["data"][0]["embedding"][0].as_f64().unwrap() as f32,
            first
        );
    }
}
