//! TapPass content detection.
//!
//! Pure (no I/O): rule sets are compiled from embedded data files in
//! `detectors/rules/` into Hyperscan databases, and scanned in block mode
//! ([`RuleSet::scan`]) or chunk by chunk ([`RuleSet::stream_scanner`]).
//! A rule set's three databases (block, stream, injection phrases) compile
//! side by side on threads of their own; building one is what a policy swap
//! that turns a detector on waits for.
//! Detectors report [`Finding`]s; deciding allow/deny is the pipeline's job.
//!
//! # Pipeline of one scan
//! 1. Normalize ([`normalize::normalize_for_scan`]): zero-width and tag
//!    characters removed, homoglyphs and compatibility forms folded, with an
//!    offset map back to the original text (pure ASCII passes untouched).
//! 2. One Hyperscan scan reports the end offsets of each rule's prefilter:
//!    the rule's required literals where it has selective ones (extracted
//!    from the pattern, see [`literals`]), else a short trigger written in
//!    the rule (`prefilter`), which several rules may share (e.g. a run of
//!    digits for cards, phones, IBANs and national IDs). Injection rules
//!    (phrases of common words) are matched by Hyperscan in full, so only
//!    real matches reach confirmation, unless all their required literals
//!    are long, rare phrases (seven bytes or more), which then serve as
//!    the prefilter. Class-based triggers (digit runs, base64 and hex runs,
//!    `@`, IPv6 colons, percent-escapes, …) are not compiled into the
//!    database: byte-scanning loops (`trigger.rs`) report exactly the end
//!    offsets Hyperscan would, at a fraction of the cost.
//!
//! Every value found by a secret rule is also checked for placeholders
//! ([`validators::looks_placeholder`], [`validators::has_placeholder_word`]):
//! variable references, elided or masked values and repetitive strings are
//! not reported.
//! 3. Nearby ends are clustered; for a shared trigger one multi-pattern
//!    regex pass (one per run of clusters whose windows overlap; an
//!    earliest-match search first, as most windows match none) selects
//!    the rules that can match (rules whose window reaches further than
//!    256 bytes, such as the base64 decoder, are not selected but always
//!    confirmed); each is confirmed by the `regex` engine in
//!    the window the literal's position allows (`lookbehind`/`lookahead`),
//!    then validators (Luhn, mod-97, check digits, entropy …) run on the
//!    value. In block mode, overlapping windows of one rule are searched
//!    once, as their union: on dense text (a trigger every few bytes, each
//!    window reaching hundreds of bytes ahead) separate searches would find
//!    the same matches many times over.
//! 4. Blobs matched by decoding rules (base64, hex, URL-encoding) are decoded
//!    and scanned again (one level), findings cover the blob. The base64
//!    decoder is confirmed only at runs whose first characters may decode
//!    to text (the decoder's own first test, applied where the trigger
//!    reports the run).
//! 5. Repeated and contained matches are merged.
//!
//! # Streaming
//! [`StreamScanner::feed`] returns the findings a chunk completes and
//! `safe_to_release`: every match is bounded ([`MAX_MATCH_LEN`] for the
//! Hyperscan part, [`MAX_EXTENDED_LEN`] for long confirmed matches such as
//! PEM blocks), so bytes before `total − hold_back` (and before any open
//! match) can be released after redaction.
//!
//! # Not covered
//! Personal names, postal addresses and free-text medical data need NER and
//! are not detected. Phone numbers are recognized by format (E.164 and common
//! national layouts), not validated against numbering plans. National IDs
//! without a checksum (UK NINO) are format-checked only.

pub mod engine;
pub mod evidence;
pub mod hs;
pub mod injection;
pub mod literals;
pub mod normalize;
pub mod redact;
pub mod rules;
pub mod stream;
#[doc(hidden)]
pub mod testgen;
mod trigger;
pub mod validators;

pub use engine::{AllowedValues, Finding, RuleSet, MAX_EXTENDED_LEN, MAX_MATCH_LEN};
pub use evidence::{Evidence, EvidenceKey};
pub use injection::{InjectionScore, DEFAULT_INJECTION_THRESHOLD, JAILBREAK_FAMILIES};
pub use redact::{redact, redact_window, Pseudonyms, RedactMode};
pub use rules::{Categories, Category, Decode, RuleSpec};
pub use stream::{Feed, StreamScanner};

/// A rule set could not be built. Never silently drops a rule.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("rule file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("rule `{id}`: {reason}")]
    InvalidRule { id: String, reason: String },
    #[error("rule `{id}`: invalid regex: {message}")]
    Regex { id: String, message: String },
    #[error("rule `{id}`: Hyperscan rejected the pattern: {message}")]
    Hyperscan { id: String, message: String },
    #[error("rule `{id}`: pattern has no maximum length (bound every repetition)")]
    Unbounded { id: String },
    #[error("rule `{id}`: maximum match length {max} exceeds the limit {limit}")]
    TooLong {
        id: String,
        max: usize,
        limit: usize,
    },
    #[error("duplicate rule id `{0}`")]
    DuplicateId(String),
    #[error("rule set has no detection rules")]
    Empty,
}

/// A scan could not run (Hyperscan runtime failure). Callers fail closed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("scan failed: {0}")]
pub struct ScanError(pub String);
