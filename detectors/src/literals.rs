//! Required-literal extraction: the Hyperscan prefilter of a rule is, when
//! possible, a small set of literals that every match must contain, plus the
//! bounds of where the match can lie around a literal occurrence. Literal
//! sets keep the Hyperscan database a fast multi-literal matcher (no
//! character-class automata running over every byte); the anchored regex
//! confirms in the small window around each candidate.

use std::collections::BTreeSet;

use regex_syntax::hir::{Class, Hir, HirKind};

/// A literal set required by a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredLiterals {
    /// The literals (lower-cased when `caseless`).
    pub set: BTreeSet<Vec<u8>>,
    /// Match the literals case-insensitively.
    pub caseless: bool,
    /// Maximum number of bytes a match can extend before a literal's start.
    pub before: usize,
    /// Maximum number of bytes a match can extend after a literal's end.
    pub after: usize,
}

impl RequiredLiterals {
    pub fn min_len(&self) -> usize {
        self.set.iter().map(Vec::len).min().unwrap_or(0)
    }
    pub fn max_len(&self) -> usize {
        self.set.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// A Hyperscan pattern matching any of the literals (case-insensitive
    /// when `caseless`).
    pub fn hs_pattern(&self) -> String {
        let alts: Vec<String> = self
            .set
            .iter()
            .map(|l| {
                l.iter()
                    .map(|&b| {
                        if b.is_ascii_alphanumeric() || b == b'_' {
                            (b as char).to_string()
                        } else {
                            format!("\\x{b:02x}")
                        }
                    })
                    .collect()
            })
            .collect();
        format!("(?:{})", alts.join("|"))
    }
}

/// Largest literal set kept for one rule.
const MAX_SET: usize = 64;
/// Largest character class expanded into literals.
const MAX_CLASS: usize = 4;

#[derive(Debug, Clone)]
struct Lits {
    set: BTreeSet<Vec<u8>>,
    folded: bool,
}

fn class_bytes(c: &Class) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match c {
        Class::Bytes(b) => {
            for r in b.iter() {
                for x in r.start()..=r.end() {
                    out.push(x);
                    if out.len() > MAX_CLASS {
                        return None;
                    }
                }
            }
        }
        Class::Unicode(u) => {
            for r in u.iter() {
                for x in (r.start() as u32)..=(r.end() as u32) {
                    if x > 0x7f {
                        return None;
                    }
                    out.push(x as u8);
                    if out.len() > MAX_CLASS {
                        return None;
                    }
                }
            }
        }
    }
    Some(out)
}

/// The exact finite set of strings `h` matches, if small.
fn exact(h: &Hir) -> Option<Lits> {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(Lits {
            set: [Vec::new()].into_iter().collect(),
            folded: false,
        }),
        HirKind::Literal(l) => Some(Lits {
            set: [l.0.to_vec()].into_iter().collect(),
            folded: false,
        }),
        HirKind::Class(c) => {
            let bytes = class_bytes(c)?;
            // an upper/lower pair of one letter folds to the lower case
            if bytes.len() == 2
                && bytes[0].is_ascii_alphabetic()
                && bytes[0].eq_ignore_ascii_case(&bytes[1])
                && bytes[0] != bytes[1]
            {
                return Some(Lits {
                    set: [vec![bytes[0].to_ascii_lowercase()]].into_iter().collect(),
                    folded: true,
                });
            }
            Some(Lits {
                set: bytes.into_iter().map(|b| vec![b]).collect(),
                folded: false,
            })
        }
        HirKind::Capture(c) => exact(&c.sub),
        HirKind::Repetition(r) => {
            let max = r.max?;
            if max > 32 || r.min != max {
                // optional repetitions produce the empty string; keep simple
                if r.min == 0 && max == 1 {
                    let mut s = exact(&r.sub)?;
                    s.set.insert(Vec::new());
                    return Some(s);
                }
                return None;
            }
            let sub = exact(&r.sub)?;
            let mut acc = Lits {
                set: [Vec::new()].into_iter().collect(),
                folded: false,
            };
            for _ in 0..max {
                acc = cross(&acc, &sub)?;
            }
            Some(acc)
        }
        HirKind::Concat(v) => {
            let mut acc = Lits {
                set: [Vec::new()].into_iter().collect(),
                folded: false,
            };
            for e in v {
                acc = cross(&acc, &exact(e)?)?;
            }
            Some(acc)
        }
        HirKind::Alternation(v) => {
            let mut acc = Lits {
                set: BTreeSet::new(),
                folded: false,
            };
            for e in v {
                let s = exact(e)?;
                acc.folded |= s.folded;
                acc.set.extend(s.set);
                if acc.set.len() > MAX_SET {
                    return None;
                }
            }
            Some(acc)
        }
    }
}

fn cross(a: &Lits, b: &Lits) -> Option<Lits> {
    if a.set.len() * b.set.len() > MAX_SET {
        return None;
    }
    let mut set = BTreeSet::new();
    for x in &a.set {
        for y in &b.set {
            let mut v = x.clone();
            v.extend_from_slice(y);
            set.insert(v);
        }
    }
    Some(Lits {
        set,
        folded: a.folded || b.folded,
    })
}

fn lower(l: Lits) -> Lits {
    if !l.folded {
        return l;
    }
    Lits {
        set: l.set.into_iter().map(|v| v.to_ascii_lowercase()).collect(),
        folded: true,
    }
}

fn max_len(h: &Hir) -> Option<usize> {
    h.properties().maximum_len()
}

fn score(c: &RequiredLiterals) -> (usize, i64, i64) {
    (
        c.min_len().min(8),
        -(c.set.len() as i64),
        -((c.before + c.after) as i64),
    )
}

fn better(a: Option<RequiredLiterals>, b: RequiredLiterals) -> Option<RequiredLiterals> {
    if b.min_len() == 0 {
        return a;
    }
    match a {
        Some(a) if score(&a) >= score(&b) => Some(a),
        _ => Some(b),
    }
}

/// The most selective required literal set of `h`, if any.
pub fn required(h: &Hir) -> Option<RequiredLiterals> {
    if let Some(l) = exact(h) {
        let l = lower(l);
        let c = RequiredLiterals {
            set: l.set,
            caseless: l.folded,
            before: 0,
            after: 0,
        };
        return (c.min_len() > 0).then_some(c);
    }
    match h.kind() {
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) => {
            if r.min == 0 {
                return None;
            }
            let sub_max = max_len(&r.sub)?;
            let extra = (r.max? as usize).saturating_sub(1).checked_mul(sub_max)?;
            let mut c = required(&r.sub)?;
            c.before = c.before.checked_add(extra)?;
            c.after = c.after.checked_add(extra)?;
            Some(c)
        }
        HirKind::Alternation(v) => {
            let mut acc: Option<RequiredLiterals> = None;
            for e in v {
                let c = required(e)?;
                acc = Some(match acc {
                    None => c,
                    Some(mut a) => {
                        a.caseless |= c.caseless;
                        if a.caseless {
                            a.set = a.set.into_iter().map(|v| v.to_ascii_lowercase()).collect();
                        }
                        a.set.extend(c.set.into_iter().map(|v| {
                            if a.caseless {
                                v.to_ascii_lowercase()
                            } else {
                                v
                            }
                        }));
                        a.before = a.before.max(c.before);
                        a.after = a.after.max(c.after);
                        if a.set.len() > MAX_SET {
                            return None;
                        }
                        a
                    }
                });
            }
            acc.filter(|a| a.min_len() > 0)
        }
        HirKind::Concat(v) => {
            let maxes: Vec<Option<usize>> = v.iter().map(max_len).collect();
            let span = |from: usize, to: usize| -> Option<usize> {
                maxes[from..to]
                    .iter()
                    .try_fold(0usize, |a, m| a.checked_add((*m)?))
            };
            let exacts: Vec<Option<Lits>> = v.iter().map(exact).collect();
            let mut best: Option<RequiredLiterals> = None;
            for i in 0..v.len() {
                // runs of exact elements starting at i
                let mut acc: Option<Lits> = None;
                for (j, e) in exacts.iter().enumerate().skip(i) {
                    let Some(e) = e else { break };
                    acc = match acc {
                        None => Some(e.clone()),
                        Some(a) => cross(&a, e),
                    };
                    let Some(a) = &acc else { break };
                    let (Some(before), Some(after)) = (span(0, i), span(j + 1, v.len())) else {
                        continue;
                    };
                    let l = lower(a.clone());
                    best = better(
                        best,
                        RequiredLiterals {
                            set: l.set,
                            caseless: l.folded,
                            before,
                            after,
                        },
                    );
                }
                if exacts[i].is_none() {
                    if let Some(mut c) = required(&v[i]) {
                        let (Some(b), Some(a)) = (span(0, i), span(i + 1, v.len())) else {
                            continue;
                        };
                        c.before += b;
                        c.after += a;
                        best = better(best, c);
                    }
                }
            }
            best
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(p: &str, ci: bool) -> Option<RequiredLiterals> {
        let h = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .case_insensitive(ci)
            .build()
            .parse(p)
            .unwrap();
        required(&h)
    }

    fn set(r: &RequiredLiterals) -> Vec<String> {
        r.set
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    #[test]
    fn prefix_literal_with_bounds() {
        let r = req(r"\bghp_[A-Za-z0-9]{36}\b", false).unwrap();
        assert_eq!(set(&r), ["ghp_"]);
        assert!(!r.caseless);
        assert_eq!((r.before, r.after), (0, 36));
    }

    #[test]
    fn inner_literal_and_alternation() {
        let r = req(r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}", false).unwrap();
        assert_eq!(set(&r), [".atlasv1."]);
        assert_eq!((r.before, r.after), (14, 70));
        let r = req(r"\b(?:AKIA|ASIA|A3T[A-Z0-9])[A-Z0-9]{16}\b", false).unwrap();
        assert_eq!(set(&r), ["A3T", "AKIA", "ASIA"]);
    }

    #[test]
    fn caseless_literals_fold() {
        let r = req(r"(?i:secret)_?[0-9a-f]{8}", false).unwrap();
        assert_eq!(set(&r), ["secret"]);
        assert!(r.caseless);
        let r = req(r"\b(?:ignore|drop)\b[^\n]{0,40}\bprevious\b", true).unwrap();
        assert_eq!(set(&r), ["previous"]);
        assert_eq!(r.before, 46);
    }

    #[test]
    fn no_literal_for_class_patterns() {
        assert!(req(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", false).is_none_or(|r| r.min_len() < 3));
        assert!(req(r"[A-Za-z0-9+/]{24,1000}", false).is_none());
        // an optional literal is not required
        assert!(req(r"(?:token)?[0-9a-f]{32}", false).is_none());
    }
}
