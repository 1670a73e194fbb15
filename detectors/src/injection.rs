//! Prompt-injection and jailbreak scoring.
//!
//! The text is normalized aggressively ([`normalize_for_injection`]: NFKC,
//! invisible characters removed, homoglyphs and leetspeak folded, spaced
//! letters joined), encoded blobs (base64, hex, URL-encoding) above 16
//! characters are decoded and normalized too, and every variant is matched
//! against the injection rules (a dedicated Hyperscan database). Each rule
//! belongs to a family and carries a weight (`score`); per family the highest
//! weight counts, and families combine as a noisy-or:
//! `score = 1 − Π(1 − w_family)`. The policy decides the threshold.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::RuleSet;
use crate::normalize::{decode_blob, normalize_for_injection};
use crate::ScanError;

/// Threshold used when a policy does not set one.
pub const DEFAULT_INJECTION_THRESHOLD: f32 = 0.5;

/// Minimum length of an encoded blob that is decoded and scanned.
pub const MIN_ENCODED_BLOB: usize = 16;

/// Result of [`RuleSet::score_injection`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InjectionScore {
    /// Combined score in `0..=1`.
    pub score: f32,
    /// Highest weight per family that matched.
    pub families: BTreeMap<Arc<str>, f32>,
    /// Rule ids that matched.
    pub rules: Vec<Arc<str>>,
    /// The matched rules of the [`JAILBREAK_FAMILIES`].
    pub jailbreak_rules: Vec<Arc<str>>,
    /// Some match was found only in decoded (base64/hex/URL) content.
    pub from_encoded: bool,
}

/// The pattern families that are jailbreaks (attempts to talk the model
/// out of its rules: personas such as DAN, developer or god modes, "no
/// restrictions" claims, fictional and testing pretexts, emotional
/// pressure) rather than injected instructions.
pub const JAILBREAK_FAMILIES: &[&str] = &["persona"];

impl InjectionScore {
    /// Whether the score reaches a policy threshold.
    pub fn exceeds(&self, threshold: f32) -> bool {
        self.score >= threshold
    }

    /// The score of the jailbreak families alone, combined as the whole
    /// score is (so it never exceeds it).
    pub fn jailbreak_score(&self) -> f32 {
        let keep: f32 = self
            .families
            .iter()
            .filter(|(f, _)| JAILBREAK_FAMILIES.contains(&f.as_ref()))
            .map(|(_, w)| 1.0 - w.clamp(0.0, 1.0))
            .product();
        (1.0 - keep).clamp(0.0, 1.0)
    }
}

/// Weight added (as its own family, `encoded-payload`) when an injection
/// pattern is found inside an encoded blob: hiding instructions in base64 is
/// itself a signal.
const ENCODED_WEIGHT: f32 = 0.35;

impl RuleSet {
    /// Score `text` for prompt injection / jailbreak. Returns a zero score
    /// when the rule set has no injection rules.
    pub fn score_injection(&self, text: &str) -> Result<InjectionScore, ScanError> {
        let mut families: BTreeMap<Arc<str>, f32> = BTreeMap::new();
        let mut rules: Vec<Arc<str>> = Vec::new();
        let mut jailbreak_rules: Vec<Arc<str>> = Vec::new();
        let mut from_encoded = false;
        let Some((db, ids)) = &self.inner.injection_db else {
            return Ok(InjectionScore {
                score: 0.0,
                families,
                rules,
                jailbreak_rules: Vec::new(),
                from_encoded,
            });
        };
        let mut variants = vec![(normalize_for_injection(text), false)];
        for blob in encoded_blobs(text) {
            if let Some(decoded) = decode_blob(blob) {
                variants.push((normalize_for_injection(&decoded), true));
            }
        }
        let mut scratch = self.take_scratch()?;
        let mut result = Ok(());
        for (v, encoded) in &variants {
            let mut hit_ids: Vec<u32> = Vec::new();
            if let Err(e) = db.scan(v.as_bytes(), &mut scratch, &mut |id, _| hit_ids.push(id)) {
                result = Err(ScanError(e.message));
                break;
            }
            hit_ids.sort_unstable();
            hit_ids.dedup();
            for id in hit_ids {
                // ids are global rule indexes (the database reports them)
                if !ids.contains(&id) {
                    continue;
                }
                let rule = self.rule(id);
                let fam: Arc<str> = rule.family.clone().unwrap_or_else(|| rule.id.clone());
                let w = families.entry(fam).or_insert(0.0);
                *w = w.max(rule.score);
                if !rules.contains(&rule.id) {
                    rules.push(rule.id.clone());
                    let jailbreak = rule
                        .family
                        .as_deref()
                        .is_some_and(|f| JAILBREAK_FAMILIES.contains(&f));
                    if jailbreak {
                        jailbreak_rules.push(rule.id.clone());
                    }
                }
                if *encoded {
                    from_encoded = true;
                }
            }
        }
        self.put_scratch(scratch);
        result?;
        if from_encoded {
            let w = families.entry(Arc::from("encoded-payload")).or_insert(0.0);
            *w = w.max(ENCODED_WEIGHT);
        }
        let keep: f32 = families.values().map(|w| 1.0 - w.clamp(0.0, 1.0)).product();
        Ok(InjectionScore {
            score: (1.0 - keep).clamp(0.0, 1.0),
            families,
            rules,
            jailbreak_rules,
            from_encoded,
        })
    }
}

/// Bytes of base64, base64url and hex runs.
static BLOB_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_' | b'=');
        i += 1;
    }
    t
};

/// Maximal runs that may be encoded payloads: base64/base64url/hex runs and
/// whitespace-delimited tokens with at least three percent-escapes.
fn encoded_blobs(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let is_b64 = |c: u8| BLOB_BYTE[usize::from(c)];
    // Every byte before `p` has been handled, and `p` is 0 or follows a
    // byte outside the runs. A run of MIN_ENCODED_BLOB bytes starting at or
    // after `p` covers the byte `probe`: when that byte is outside, skip
    // past it without looking at the bytes before it.
    let mut p = 0;
    while p + MIN_ENCODED_BLOB <= b.len() {
        let probe = p + MIN_ENCODED_BLOB - 1;
        if !is_b64(b[probe]) {
            p = probe + 1;
            continue;
        }
        let mut s = probe;
        while s > p && is_b64(b[s - 1]) {
            s -= 1;
        }
        let mut e = probe + 1;
        while e < b.len() && is_b64(b[e]) {
            e += 1;
        }
        if e - s >= MIN_ENCODED_BLOB {
            out.push(&text[s..e]);
        }
        p = e + 1;
    }
    // Percent-encoded tokens (whitespace-delimited) with three escapes:
    // only the tokens around a `%` are looked at.
    let mut done = 0;
    for pct in memchr::memchr_iter(b'%', b) {
        if pct < done {
            continue;
        }
        let start = text[..pct]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = text[pct..]
            .char_indices()
            .find(|(_, c)| c.is_whitespace())
            .map_or(text.len(), |(i, _)| pct + i);
        let tok = &text[start..end];
        if tok.len() >= MIN_ENCODED_BLOB
            && memchr::memchr_iter(b'%', tok.as_bytes()).nth(2).is_some()
        {
            out.push(tok);
        }
        done = end;
    }
    out.truncate(64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The maximal runs of blob bytes, found byte by byte.
    fn reference_runs(text: &str) -> Vec<&str> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let s = i;
            while i < b.len() && BLOB_BYTE[usize::from(b[i])] {
                i += 1;
            }
            if i - s >= MIN_ENCODED_BLOB {
                out.push(&text[s..i]);
            }
            i = i.max(s + 1);
        }
        out
    }

    proptest! {
        /// Skipping ahead finds exactly the maximal runs of at least
        /// MIN_ENCODED_BLOB blob bytes, around runs one byte too short, at
        /// the start and at the end of the text; looking around each `%`
        /// finds exactly the whitespace-delimited tokens with three.
        #[test]
        fn blob_runs_match_the_reference(
            parts in proptest::collection::vec(
                prop_oneof![
                    3 => (1usize..40).prop_map(|n| "A".repeat(n)),
                    2 => Just("x".repeat(MIN_ENCODED_BLOB - 1)),
                    2 => Just("y".repeat(MIN_ENCODED_BLOB)),
                    3 => proptest::sample::select(vec![" ", ".", "\n", "é", "%", "!!", "%41", "\u{2003}", "\u{85}"]).prop_map(String::from),
                    2 => "[a-zA-Z0-9+/=_-]{0,20}",
                ],
                0..30,
            )
        ) {
            let text = parts.concat();
            let mut want = reference_runs(&text);
            want.extend(text.split_whitespace().filter(|tok| {
                tok.len() >= MIN_ENCODED_BLOB && tok.matches('%').count() >= 3
            }));
            want.truncate(64);
            prop_assert_eq!(encoded_blobs(&text), want);
        }
    }
}
