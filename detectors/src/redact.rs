//! Redaction of findings in text.

use std::collections::HashMap;
use std::ops::Range;

use crate::engine::{ceil_char, floor_char, Finding};

/// How a detected value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedactMode {
    /// `[REDACTED:EMAIL]`
    #[default]
    Mask,
    /// `<EMAIL_1>`: the same value gets the same number within one call (or
    /// one [`Pseudonyms`] state across a stream).
    Pseudonym,
    /// Keep public or low-risk parts: `****1234` for cards, `DE****3000` for
    /// IBANs, `j***@example.com` for e-mail, `****67` for phone numbers;
    /// everything else is masked as in [`RedactMode::Mask`].
    Partial,
}

impl std::str::FromStr for RedactMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mask" => Ok(RedactMode::Mask),
            "pseudonym" => Ok(RedactMode::Pseudonym),
            "partial" => Ok(RedactMode::Partial),
            o => Err(format!(
                "unknown redaction mode `{o}` (mask, pseudonym, partial)"
            )),
        }
    }
}

/// Pseudonym numbering state (per call, or per stream).
#[derive(Debug, Default, Clone)]
pub struct Pseudonyms {
    ids: HashMap<(String, String), usize>,
    next: HashMap<String, usize>,
}

impl Pseudonyms {
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&mut self, label: &str, value: &str) -> usize {
        if let Some(&n) = self.ids.get(&(label.to_string(), value.to_string())) {
            return n;
        }
        let n = self.next.entry(label.to_string()).or_insert(0);
        *n += 1;
        self.ids.insert((label.to_string(), value.to_string()), *n);
        *n
    }
}

/// Redact `findings` (spans in `text` coordinates) from `text`.
pub fn redact(text: &str, findings: &[Finding], mode: RedactMode) -> String {
    let mut p = Pseudonyms::new();
    redact_window(text, 0, findings, mode, &mut p)
}

/// Redact a window of a stream: `text` starts at absolute offset `base`;
/// finding spans are absolute and are clipped to the window. Spans that
/// overlap are merged (their union is replaced) and take the label of the
/// highest-scoring finding.
pub fn redact_window(
    text: &str,
    base: usize,
    findings: &[Finding],
    mode: RedactMode,
    pseudonyms: &mut Pseudonyms,
) -> String {
    let b = text.as_bytes();
    let mut spans: Vec<(Range<usize>, &str, f32)> = findings
        .iter()
        .filter_map(|f| {
            let s = f.span.start.saturating_sub(base).min(b.len());
            let e = f.span.end.saturating_sub(base).min(b.len());
            let s = floor_char(b, s);
            let e = ceil_char(b, e);
            (s < e).then_some((s..e, &*f.label, f.score))
        })
        .collect();
    spans.sort_by(|a, b| a.0.start.cmp(&b.0.start).then(b.0.end.cmp(&a.0.end)));
    let mut merged: Vec<(Range<usize>, &str, f32)> = Vec::with_capacity(spans.len());
    for (r, label, score) in spans {
        if let Some(last) = merged.last_mut() {
            if r.start < last.0.end {
                last.0.end = last.0.end.max(r.end);
                if score > last.2 {
                    last.1 = label;
                    last.2 = score;
                }
                continue;
            }
        }
        merged.push((r, label, score));
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (r, label, _) in merged {
        out.push_str(&text[pos..r.start]);
        let value = &text[r.clone()];
        match mode {
            RedactMode::Mask => {
                out.push_str("[REDACTED:");
                out.push_str(label);
                out.push(']');
            }
            RedactMode::Pseudonym => {
                let n = pseudonyms.get(label, value);
                out.push_str(&format!("<{label}_{n}>"));
            }
            RedactMode::Partial => out.push_str(&partial(label, value)),
        }
        pos = r.end;
    }
    out.push_str(&text[pos..]);
    out
}

fn partial(label: &str, value: &str) -> String {
    let alnum: Vec<char> = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let tail = |n: usize| -> String {
        // never reveal more than a quarter of the value
        let n = n.min(alnum.len() / 4);
        alnum[alnum.len() - n..].iter().collect()
    };
    match label {
        "CARD" => format!("****{}", tail(4)),
        "IBAN" if alnum.len() > 8 => {
            let cc: String = alnum[..2].iter().collect();
            format!("{cc}****{}", tail(4))
        }
        "PHONE" => format!("****{}", tail(2)),
        "EMAIL" => match value.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() => {
                let first = local.chars().next().unwrap_or('*');
                format!("{first}***@{domain}")
            }
            _ => format!("[REDACTED:{label}]"),
        },
        _ => format!("[REDACTED:{label}]"),
    }
}
