//! The price table: US dollars per 1,000,000 tokens for each model, from
//! the embedded files in `policies/pricing/`, with per-deployment overrides.
//! See `policies/pricing/README.md` for the format and matching rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The embedded price files, by provider.
pub const BUILTIN_FILES: [(&str, &str); 4] = [
    ("openai.yaml", include_str!("../pricing/openai.yaml")),
    ("anthropic.yaml", include_str!("../pricing/anthropic.yaml")),
    ("google.yaml", include_str!("../pricing/google.yaml")),
    ("mistral.yaml", include_str!("../pricing/mistral.yaml")),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PricingError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: model `{model}`: {message}")]
    Invalid {
        file: String,
        model: String,
        message: String,
    },
}

/// Dollars per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached prompt tokens; absent: billed as `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// A higher tier for prompts above a size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    pub above_input_tokens: u64,
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[allow(dead_code)]
    provider: String,
    #[allow(dead_code)]
    as_of: String,
    models: BTreeMap<String, Price>,
}

/// Token counts of one call, for pricing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// All prompt tokens, cached ones included.
    pub input: u64,
    /// The part of `input` served from the provider's cache.
    pub cached_input: u64,
    pub output: u64,
}

impl Price {
    fn check(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        let long = self
            .long_context
            .map(|l| (l.input, l.output, l.cached_input));
        let all = [Some(self.input), Some(self.output), self.cached_input]
            .into_iter()
            .chain(long.into_iter().flat_map(|(a, b, c)| [Some(a), Some(b), c]))
            .flatten();
        for v in all {
            if !ok(v) {
                return Err(format!("prices must be finite and not negative, got {v}"));
            }
        }
        Ok(())
    }

    /// Cost of `t` in micro-dollars (millionths of a dollar), rounded up.
    /// A price per 1M tokens in dollars is a price per token in
    /// micro-dollars.
    pub fn micro_dollars(&self, t: TokenCounts) -> u64 {
        let (input, output, cached) = match self.long_context {
            Some(l) if t.input > l.above_input_tokens => (l.input, l.output, l.cached_input),
            _ => (self.input, self.output, self.cached_input),
        };
        let cached_tokens = t.cached_input.min(t.input);
        let fresh = (t.input - cached_tokens) as f64 * input;
        let cached = cached_tokens as f64 * cached.unwrap_or(input);
        let out = t.output as f64 * output;
        let total = (fresh + cached + out).ceil();
        if total >= u64::MAX as f64 {
            u64::MAX
        } else {
            total as u64
        }
    }
}

/// Model pattern → price; exact names first, then globs, longest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    exact: BTreeMap<String, Price>,
    /// Sorted by pattern length, longest first.
    globs: Vec<(String, Price)>,
}

impl PriceTable {
    /// The embedded table.
    pub fn builtin() -> Result<PriceTable, PricingError> {
        let mut t = PriceTable::default();
        for (file, text) in BUILTIN_FILES {
            t.add_file(file, text)?;
        }
        Ok(t)
    }

    /// Add a price file (the format of `policies/pricing/*.yaml`).
    pub fn add_file(&mut self, file: &str, text: &str) -> Result<(), PricingError> {
        let parsed: PriceFile = serde_norway::from_str(text).map_err(|e| PricingError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        self.add_all(file, parsed.models)
    }

    /// Add or override prices (a deployment's overrides).
    pub fn add_all(
        &mut self,
        file: &str,
        models: BTreeMap<String, Price>,
    ) -> Result<(), PricingError> {
        for (model, price) in models {
            price.check().map_err(|message| PricingError::Invalid {
                file: file.to_string(),
                model: model.clone(),
                message,
            })?;
            if model.trim().is_empty() {
                return Err(PricingError::Invalid {
                    file: file.to_string(),
                    model,
                    message: "empty model name".into(),
                });
            }
            if model.contains('*') {
                self.globs.retain(|(p, _)| *p != model);
                self.globs.push((model, price));
            } else {
                self.exact.insert(model, price);
            }
        }
        self.globs
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(())
    }

    /// The price of `model`, if the table has one.
    pub fn price(&self, model: &str) -> Option<&Price> {
        if let Some(p) = self.exact.get(model) {
            return Some(p);
        }
        self.globs
            .iter()
            .find(|(pattern, _)| glob_match(pattern, model))
            .map(|(_, p)| p)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.globs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses_and_prices_known_models() {
        let t = PriceTable::builtin().unwrap();
        for m in [
            "gpt-4o",
            "gpt-4o-2024-08-06",
            "gpt-4o-mini",
            "gpt-5",
            "o4-mini",
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-1-20250805",
            "claude-haiku-4-5",
            "gemini-2.5-pro",
            "gemini-2.5-flash",
            "mistral-large-latest",
            "codestral-2508",
        ] {
            assert!(t.price(m).is_some(), "{m} has no price");
        }
        assert!(t.price("no-such-model").is_none());
    }

    #[test]
    fn most_specific_pattern_wins() {
        let t = PriceTable::builtin().unwrap();
        // `gpt-4o-mini-*` beats `gpt-4o-*`.
        let mini = t.price("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(mini.input, 0.15);
        let full = t.price("gpt-4o-2024-08-06").unwrap();
        assert_eq!(full.input, 2.50);
    }

    #[test]
    fn cost_in_micro_dollars() {
        let p = Price {
            input: 2.5,
            output: 10.0,
            cached_input: Some(1.25),
            long_context: None,
        };
        let t = TokenCounts {
            input: 1000,
            cached_input: 400,
            output: 100,
        };
        // 600 * 2.5 + 400 * 1.25 + 100 * 10 = 1500 + 500 + 1000
        assert_eq!(p.micro_dollars(t), 3000);
        // Cached tokens never exceed the prompt.
        let odd = TokenCounts {
            input: 10,
            cached_input: 50,
            output: 0,
        };
        assert_eq!(p.micro_dollars(odd), 13);
    }

    #[test]
    fn long_context_tier_applies_above_threshold() {
        let t = PriceTable::builtin().unwrap();
        let p = t.price("gemini-2.5-pro").unwrap();
        let small = TokenCounts {
            input: 1000,
            ..Default::default()
        };
        let large = TokenCounts {
            input: 300_000,
            ..Default::default()
        };
        assert_eq!(p.micro_dollars(small), 1250);
        assert_eq!(p.micro_dollars(large), 750_000);
    }

    #[test]
    fn overrides_win_and_bad_prices_are_refused() {
        let mut t = PriceTable::builtin().unwrap();
        let mut o = BTreeMap::new();
        o.insert(
            "gpt-4o".to_string(),
            Price {
                input: 1.0,
                output: 1.0,
                cached_input: None,
                long_context: None,
            },
        );
        t.add_all("config", o).unwrap();
        assert_eq!(t.price("gpt-4o").unwrap().input, 1.0);
        let mut bad = BTreeMap::new();
        bad.insert(
            "x".to_string(),
            Price {
                input: -1.0,
                output: 1.0,
                cached_input: None,
                long_context: None,
            },
        );
        assert!(t.add_all("config", bad).is_err());
        let nan = "provider: x\nas_of: y\nmodels:\n  m: { input: .nan, output: 1 }\n";
        assert!(t.add_file("nan.yaml", nan).is_err());
        let unknown = "provider: x\nas_of: y\nmodels:\n  m: { input: 1, output: 1, extra: 2 }\n";
        assert!(t.add_file("u.yaml", unknown).is_err());
        assert!(t.add_file("garbage.yaml", "{{{{").is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("gpt-4o-*", "gpt-4o-2024"));
        assert!(!glob_match("gpt-4o-*", "gpt-4o"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
