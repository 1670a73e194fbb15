//! Typed LLM stream events decoded from SSE frames, and token usage
//! extracted from streamed and non-streamed responses.
//!
//! Only the fields the gateway acts on are decoded; everything else stays in
//! the frame's raw bytes and is forwarded untouched.

use serde::Deserialize;

use crate::sse::SseFrame;
use crate::wire::Endpoint;

/// Token usage of one call, normalized across wire formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

#[derive(Deserialize, Default)]
struct OpenAiUsageWire {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    // Responses API names.
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<CachedDetails>,
    #[serde(default)]
    input_tokens_details: Option<CachedDetails>,
}

#[derive(Deserialize, Default)]
struct CachedDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl From<OpenAiUsageWire> for Usage {
    fn from(u: OpenAiUsageWire) -> Self {
        let cached = u
            .prompt_tokens_details
            .or(u.input_tokens_details)
            .map(|d| d.cached_tokens)
            .unwrap_or(0);
        Usage {
            input_tokens: u.prompt_tokens.max(u.input_tokens),
            output_tokens: u.completion_tokens.max(u.output_tokens),
            cached_input_tokens: cached,
        }
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsageWire {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

/// One tool-call argument fragment, in any wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallFragment {
    /// Index (OpenAI `tool_calls[].index`, Anthropic content block index,
    /// Responses output index).
    pub index: u64,
    /// Set on the fragment that opens the call.
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// What a stream event means to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventInfo {
    /// Text delta for the client (assistant output).
    pub text: Option<String>,
    /// Tool-call fragments carried by this event.
    pub tool_calls: Vec<ToolCallFragment>,
    /// A tool call (content block / output item) is complete.
    pub tool_call_done: Option<u64>,
    /// Usage reported by this event (cumulative where the format is).
    pub usage: Option<Usage>,
    /// The event is an OpenAI usage-only chunk (`choices: []` with `usage`).
    pub usage_only_chunk: bool,
    /// The stream's terminal event (`[DONE]`, `message_stop`, `response.completed` …).
    pub terminal: bool,
    /// The upstream reported an error inside the stream.
    pub upstream_error: bool,
}

// ---- OpenAI chat chunks ----

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<OpenAiUsageWire>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

// ---- Anthropic messages events ----

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicEvent {
    MessageStart {
        message: AnthropicMessageStart,
    },
    ContentBlockStart {
        index: u64,
        content_block: AnthropicBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: AnthropicDelta,
    },
    ContentBlockStop {
        index: u64,
    },
    MessageDelta {
        #[serde(default)]
        usage: Option<AnthropicUsageWire>,
    },
    MessageStop,
    Error,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct AnthropicMessageStart {
    #[serde(default)]
    usage: Option<AnthropicUsageWire>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicBlock {
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

// ---- Responses events ----

#[derive(Deserialize)]
#[serde(tag = "type")]
enum ResponsesEvent {
    #[serde(rename = "response.output_text.delta")]
    TextDelta { delta: String },
    #[serde(rename = "response.output_item.added")]
    ItemAdded {
        output_index: u64,
        item: ResponsesItem,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgsDelta { output_index: u64, delta: String },
    #[serde(rename = "response.output_item.done")]
    ItemDone {
        output_index: u64,
        item: ResponsesItem,
    },
    #[serde(rename = "response.completed")]
    Completed { response: ResponsesResponse },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: ResponsesResponse },
    #[serde(rename = "response.failed")]
    Failed,
    #[serde(rename = "error")]
    Error,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ResponsesItem {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct ResponsesResponse {
    #[serde(default)]
    usage: Option<OpenAiUsageWire>,
}

/// Decodes the frames of one stream, keeping the per-stream state some
/// formats need (Anthropic reports input and output usage in different
/// events).
#[derive(Debug)]
pub struct EventDecoder {
    endpoint: Endpoint,
    usage: Usage,
}

impl EventDecoder {
    pub fn new(endpoint: Endpoint) -> Self {
        EventDecoder {
            endpoint,
            usage: Usage::default(),
        }
    }

    /// The usage seen so far in the stream.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Decode one frame. Frames that are not JSON (or not an event this
    /// format defines) yield an empty [`EventInfo`]: they are forwarded as
    /// they are.
    pub fn decode(&mut self, frame: &SseFrame) -> EventInfo {
        let Some(data) = frame.data_str() else {
            return EventInfo::default();
        };
        let info = match self.endpoint {
            Endpoint::ChatCompletions => decode_chat(data),
            Endpoint::AnthropicMessages => self.decode_anthropic(data),
            Endpoint::Responses => decode_responses(data),
            _ => EventInfo::default(),
        };
        if let Some(u) = info.usage {
            if self.endpoint != Endpoint::AnthropicMessages {
                self.usage = u;
            }
        }
        info
    }

    fn decode_anthropic(&mut self, data: &str) -> EventInfo {
        let mut info = EventInfo::default();
        let Ok(ev) = serde_json::from_str::<AnthropicEvent>(data) else {
            return info;
        };
        let merge = |u: AnthropicUsageWire, usage: &mut Usage| {
            if let Some(i) = u.input_tokens {
                usage.input_tokens = i
                    + u.cache_read_input_tokens.unwrap_or(0)
                    + u.cache_creation_input_tokens.unwrap_or(0);
            }
            if let Some(c) = u.cache_read_input_tokens {
                usage.cached_input_tokens = c;
            }
            if let Some(o) = u.output_tokens {
                usage.output_tokens = o;
            }
        };
        match ev {
            AnthropicEvent::MessageStart { message } => {
                if let Some(u) = message.usage {
                    merge(u, &mut self.usage);
                    info.usage = Some(self.usage);
                }
            }
            AnthropicEvent::ContentBlockStart {
                index,
                content_block: AnthropicBlock::ToolUse { id, name },
            } => info.tool_calls.push(ToolCallFragment {
                index,
                id: Some(id),
                name: Some(name),
                arguments: String::new(),
            }),
            AnthropicEvent::ContentBlockStart { .. } => {}
            AnthropicEvent::ContentBlockDelta { index, delta } => match delta {
                AnthropicDelta::TextDelta { text } => info.text = Some(text),
                AnthropicDelta::InputJsonDelta { partial_json } => {
                    info.tool_calls.push(ToolCallFragment {
                        index,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    })
                }
                AnthropicDelta::Other => {}
            },
            AnthropicEvent::ContentBlockStop { index } => info.tool_call_done = Some(index),
            AnthropicEvent::MessageDelta { usage } => {
                if let Some(u) = usage {
                    merge(u, &mut self.usage);
                    info.usage = Some(self.usage);
                }
            }
            AnthropicEvent::MessageStop => info.terminal = true,
            AnthropicEvent::Error => info.upstream_error = true,
            AnthropicEvent::Other => {}
        }
        info
    }
}

fn decode_chat(data: &str) -> EventInfo {
    let mut info = EventInfo::default();
    if data.trim() == "[DONE]" {
        info.terminal = true;
        return info;
    }
    let Ok(chunk) = serde_json::from_str::<ChatChunk>(data) else {
        return info;
    };
    if chunk.error.is_some() {
        info.upstream_error = true;
    }
    let choices = chunk.choices.unwrap_or_default();
    if let Some(u) = chunk.usage {
        info.usage = Some(u.into());
        info.usage_only_chunk = choices.is_empty();
    }
    for choice in choices {
        let Some(delta) = choice.delta else { continue };
        if let Some(t) = delta.content {
            info.text.get_or_insert_with(String::new).push_str(&t);
        }
        for tc in delta.tool_calls.unwrap_or_default() {
            let (name, arguments) = match tc.function {
                Some(f) => (f.name, f.arguments.unwrap_or_default()),
                None => (None, String::new()),
            };
            info.tool_calls.push(ToolCallFragment {
                index: tc.index,
                id: tc.id,
                name,
                arguments,
            });
        }
    }
    info
}

fn decode_responses(data: &str) -> EventInfo {
    let mut info = EventInfo::default();
    let Ok(ev) = serde_json::from_str::<ResponsesEvent>(data) else {
        return info;
    };
    match ev {
        ResponsesEvent::TextDelta { delta } => info.text = Some(delta),
        ResponsesEvent::ItemAdded { output_index, item } if item.kind == "function_call" => {
            info.tool_calls.push(ToolCallFragment {
                index: output_index,
                id: item.call_id,
                name: item.name,
                arguments: String::new(),
            })
        }
        ResponsesEvent::ItemAdded { .. } => {}
        ResponsesEvent::ArgsDelta {
            output_index,
            delta,
        } => info.tool_calls.push(ToolCallFragment {
            index: output_index,
            id: None,
            name: None,
            arguments: delta,
        }),
        ResponsesEvent::ItemDone { output_index, item } => {
            if item.kind == "function_call" {
                info.tool_call_done = Some(output_index);
            }
        }
        ResponsesEvent::Completed { response } | ResponsesEvent::Incomplete { response } => {
            info.terminal = true;
            info.usage = response.usage.map(Usage::from);
        }
        ResponsesEvent::Failed => {
            info.terminal = true;
            info.upstream_error = true;
        }
        ResponsesEvent::Error => info.upstream_error = true,
        ResponsesEvent::Other => {}
    }
    info
}

/// Usage from a complete (non-streamed) JSON response body.
pub fn usage_from_body(endpoint: Endpoint, body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct WithOpenAi {
        usage: Option<OpenAiUsageWire>,
    }
    #[derive(Deserialize)]
    struct WithAnthropic {
        usage: Option<AnthropicUsageWire>,
    }
    #[derive(Deserialize)]
    struct CountTokens {
        input_tokens: u64,
    }
    match endpoint {
        Endpoint::AnthropicMessages => {
            let u = serde_json::from_slice::<WithAnthropic>(body).ok()?.usage?;
            Some(Usage {
                input_tokens: u.input_tokens.unwrap_or(0)
                    + u.cache_read_input_tokens.unwrap_or(0)
                    + u.cache_creation_input_tokens.unwrap_or(0),
                output_tokens: u.output_tokens.unwrap_or(0),
                cached_input_tokens: u.cache_read_input_tokens.unwrap_or(0),
            })
        }
        Endpoint::AnthropicCountTokens => {
            let c = serde_json::from_slice::<CountTokens>(body).ok()?;
            Some(Usage {
                input_tokens: c.input_tokens,
                ..Usage::default()
            })
        }
        _ => serde_json::from_slice::<WithOpenAi>(body)
            .ok()?
            .usage
            .map(Usage::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseDecoder;

    fn frames(s: &str) -> Vec<SseFrame> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        d.feed(s.as_bytes(), &mut out).unwrap();
        d.finish(&mut out);
        out
    }

    #[test]
    fn openai_chunks_text_tool_calls_usage_done() {
        let s = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut d = EventDecoder::new(Endpoint::ChatCompletions);
        let infos: Vec<EventInfo> = frames(s).iter().map(|f| d.decode(f)).collect();
        assert_eq!(infos[0].text.as_deref(), Some("Hel"));
        assert_eq!(infos[1].tool_calls[0].name.as_deref(), Some("get"));
        assert_eq!(infos[1].tool_calls[0].id.as_deref(), Some("call_1"));
        assert_eq!(infos[2].tool_calls[0].arguments, "{\"a\"");
        assert!(infos[3].usage_only_chunk);
        assert_eq!(
            d.usage(),
            Usage {
                input_tokens: 5,
                output_tokens: 7,
                cached_input_tokens: 2
            }
        );
        assert!(infos[4].terminal);
    }

    #[test]
    fn anthropic_usage_is_merged_across_events() {
        let s = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"w\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"c\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let mut d = EventDecoder::new(Endpoint::AnthropicMessages);
        let infos: Vec<EventInfo> = frames(s).iter().map(|f| d.decode(f)).collect();
        assert_eq!(infos[1].tool_calls[0].id.as_deref(), Some("toolu_1"));
        assert_eq!(infos[2].tool_calls[0].arguments, "{\"c");
        assert_eq!(infos[3].tool_call_done, Some(1));
        assert!(infos[5].terminal);
        assert_eq!(d.usage().input_tokens, 11);
        assert_eq!(d.usage().output_tokens, 9);
    }

    #[test]
    fn responses_events() {
        let s = concat!(
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
            "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc\",\"call_id\":\"call_9\",\"name\":\"f\",\"arguments\":\"\"}}\n\n",
            "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"item_id\":\"fc\",\"output_index\":1,\"delta\":\"{}\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":4,\"total_tokens\":7}}}\n\n",
        );
        let mut d = EventDecoder::new(Endpoint::Responses);
        let infos: Vec<EventInfo> = frames(s).iter().map(|f| d.decode(f)).collect();
        assert_eq!(infos[0].text.as_deref(), Some("Hi"));
        assert_eq!(infos[1].tool_calls[0].id.as_deref(), Some("call_9"));
        assert_eq!(infos[2].tool_calls[0].arguments, "{}");
        assert!(infos[3].terminal);
        assert_eq!(d.usage().output_tokens, 4);
    }

    #[test]
    fn garbage_events_decode_to_nothing() {
        let mut d = EventDecoder::new(Endpoint::ChatCompletions);
        for f in frames("data: {not json\n\ndata: 42\n\n: c\n\n") {
            assert_eq!(d.decode(&f), EventInfo::default());
        }
    }

    #[test]
    fn usage_from_bodies() {
        let u = usage_from_body(
            Endpoint::ChatCompletions,
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        );
        assert_eq!(u.map(|u| (u.input_tokens, u.output_tokens)), Some((1, 2)));
        let u = usage_from_body(
            Endpoint::AnthropicMessages,
            br#"{"usage":{"input_tokens":3,"output_tokens":4}}"#,
        );
        assert_eq!(u.map(|u| (u.input_tokens, u.output_tokens)), Some((3, 4)));
        assert_eq!(usage_from_body(Endpoint::Embeddings, b"nope"), None);
    }
}
