//! Prompt-token estimates for reservations.
//!
//! OpenAI models are counted with their real tokenizer (`o200k_base` for
//! the GPT-4o/4.1/5 and o-series families, `cl100k_base` for GPT-4,
//! GPT-3.5 and the v3 embeddings), plus the per-message framing OpenAI
//! documents (about 4 tokens per message and 3 for the reply's priming).
//! Every other model is estimated conservatively at one token per 3 bytes
//! of UTF-8 text (English averages about 4 bytes per token on the
//! Anthropic, Google and Mistral tokenizers; CJK text about 3 bytes per
//! token), with the same framing. Images are counted at a flat
//! [`IMAGE_TOKENS`], the upper end of what the providers bill for one
//! image at default detail; other inline data (audio, files) is counted as
//! text, which over-reserves. The estimate only sizes the reservation: the
//! call is settled with the usage the provider reports.

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

/// Tokens reserved per image.
pub const IMAGE_TOKENS: u64 = 2_000;
/// Framing tokens per message, and for the reply's priming.
pub const PER_MESSAGE: u64 = 4;
pub const PER_REPLY: u64 = 3;
/// Bytes per token for models without a public tokenizer.
pub const APPROX_BYTES_PER_TOKEN: u64 = 3;

/// How a model's text is counted.
#[derive(Clone, Copy)]
pub enum TokenCounter {
    Exact(&'static CoreBPE),
    Approx,
    /// One token per byte: an upper bound for any byte-level BPE
    /// tokenizer (every token covers at least one byte), at the cost of a
    /// length. Reservations use it for OpenAI models while no limit is
    /// within its reach, and the exact count when one is.
    ByteBound,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenCounter::Exact(_) => "Exact",
            TokenCounter::Approx => "Approx",
            TokenCounter::ByteBound => "ByteBound",
        })
    }
}

/// Load the tokenizer tables (a few hundred milliseconds and tens of MiB
/// each) so that no call pays for it.
pub fn warm() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
}

/// Load `o200k_base` (the tokenizer of current OpenAI models) on a
/// background thread. `cl100k_base` (GPT-4, GPT-3.5) loads on first use.
pub fn warm_in_background() {
    let _ = std::thread::Builder::new()
        .name("tappass-tokenizer-load".into())
        .spawn(|| {
            let _ = tiktoken_rs::o200k_base_singleton();
        });
}

impl TokenCounter {
    /// The counter for `model` (the name the provider is called with).
    pub fn for_model(model: &str) -> TokenCounter {
        use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
        match get_tokenizer(model) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => {
                TokenCounter::Exact(tiktoken_rs::o200k_base_singleton())
            }
            Some(Tokenizer::Cl100kBase) => {
                TokenCounter::Exact(tiktoken_rs::cl100k_base_singleton())
            }
            _ if model.starts_with("gpt-5") || model.starts_with("gpt-4.1") => {
                TokenCounter::Exact(tiktoken_rs::o200k_base_singleton())
            }
            _ => TokenCounter::Approx,
        }
    }

    pub fn is_exact(&self) -> bool {
        matches!(self, TokenCounter::Exact(_))
    }

    /// Tokens in `text`.
    pub fn count(&self, text: &str) -> u64 {
        match self {
            TokenCounter::Exact(bpe) => bpe.count_ordinary(text) as u64,
            TokenCounter::Approx => (text.len() as u64).div_ceil(APPROX_BYTES_PER_TOKEN),
            TokenCounter::ByteBound => text.len() as u64,
        }
    }

    /// Estimated prompt tokens of a request body (OpenAI chat or
    /// Responses, Anthropic messages, embeddings).
    pub fn prompt_tokens(&self, body: &Map<String, Value>) -> u64 {
        let mut total = PER_REPLY;
        for key in [
            "messages",
            "system",
            "input",
            "instructions",
            "prompt",
            "tools",
            "functions",
        ] {
            if let Some(v) = body.get(key) {
                total = total.saturating_add(self.value_tokens(v, key == "messages", 0));
            }
        }
        total
    }

    fn value_tokens(&self, v: &Value, messages: bool, depth: usize) -> u64 {
        // Deeply nested input is counted by its text size, not walked.
        if depth > 64 {
            return (v.to_string().len() as u64).div_ceil(2);
        }
        match v {
            Value::String(s) => {
                if s.starts_with("data:image/") {
                    IMAGE_TOKENS
                } else {
                    self.count(s)
                }
            }
            Value::Array(items) => items.iter().fold(0u64, |acc, item| {
                let frame = if messages && item.is_object() {
                    PER_MESSAGE
                } else {
                    0
                };
                acc.saturating_add(frame)
                    .saturating_add(self.value_tokens(item, false, depth + 1))
            }),
            Value::Object(o) => {
                if is_image(o) {
                    return IMAGE_TOKENS;
                }
                o.iter().fold(0u64, |acc, (k, v)| {
                    let key = match v {
                        // Structural keys of message parts cost nothing
                        // of note; schema keys in tool definitions do.
                        Value::String(_) if matches!(k.as_str(), "type" | "role") => 0,
                        _ => self.count(k),
                    };
                    acc.saturating_add(key)
                        .saturating_add(self.value_tokens(v, false, depth + 1))
                })
            }
            Value::Number(n) => self.count(&n.to_string()),
            Value::Bool(_) | Value::Null => 1,
        }
    }
}

/// OpenAI `{"type":"image_url"}` / `{"type":"input_image"}` parts and
/// Anthropic `{"type":"image"}` blocks.
fn is_image(o: &Map<String, Value>) -> bool {
    matches!(
        o.get("type").and_then(Value::as_str),
        Some("image_url" | "input_image" | "image")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn openai_models_use_their_tokenizer() {
        let c = TokenCounter::for_model("gpt-4o-mini");
        assert!(c.is_exact());
        // "hello world" is 2 tokens in o200k_base.
        assert_eq!(c.count("hello world"), 2);
        assert!(TokenCounter::for_model("gpt-4").is_exact());
        assert!(TokenCounter::for_model("gpt-5-mini").is_exact());
        assert!(!TokenCounter::for_model("claude-sonnet-4-5").is_exact());
        assert!(!TokenCounter::for_model("mock-gpt").is_exact());
    }

    #[test]
    fn approximate_counting_is_conservative() {
        let c = TokenCounter::Approx;
        let english = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        // o200k needs about 10 tokens per sentence; the estimate is above.
        let exact = TokenCounter::for_model("gpt-4o").count(&english);
        assert!(
            c.count(&english) > exact,
            "{} vs {exact}",
            c.count(&english)
        );
    }

    #[test]
    fn chat_and_anthropic_bodies() {
        let c = TokenCounter::for_model("gpt-4o");
        let chat = body(json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hello world"}
            ]
        }));
        let n = c.prompt_tokens(&chat);
        // Framing (2 messages * 4 + 3) and the texts, plus a token or two
        // for each role and key name.
        let texts = c.count("You are terse.") + c.count("hello world");
        assert!(n >= 8 + 3 + texts && n <= 8 + 3 + texts + 6, "{n}");
        let anthropic = body(json!({
            "model": "claude", "max_tokens": 10,
            "system": "be brief",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA".repeat(100000)}}
            ]}]
        }));
        let a = TokenCounter::Approx.prompt_tokens(&anthropic);
        assert!((IMAGE_TOKENS..IMAGE_TOKENS + 100).contains(&a), "{a}");
    }

    #[test]
    fn the_byte_bound_is_above_the_exact_count() {
        let exact = TokenCounter::for_model("gpt-4o");
        for text in [
            "hello world",
            "日本語のテキスト",
            "a=1;b=2;",
            "QUJDREVGR0hJSktMTU5PUA==",
        ] {
            assert!(
                TokenCounter::ByteBound.count(text) >= exact.count(text),
                "{text}"
            );
        }
    }

    #[test]
    fn deep_or_odd_bodies_do_not_panic() {
        let mut v = json!("x");
        for _ in 0..200 {
            v = json!([v]);
        }
        let b = body(json!({"messages": v, "tools": [{"a": null, "b": true, "c": 1.5}]}));
        assert!(TokenCounter::Approx.prompt_tokens(&b) > 0);
        assert_eq!(TokenCounter::Approx.prompt_tokens(&Map::new()), PER_REPLY);
    }
}
