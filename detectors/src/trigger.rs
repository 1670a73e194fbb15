//! Byte-scanning triggers: class-based prefilters (runs of digits, base64
//! and hex runs, `@`, IPv6 colons, …) evaluated by direct loops over the
//! bytes instead of by the Hyperscan database.
//!
//! Character-class automata are what Hyperscan is slowest at: a handful of
//! them running over every byte cost more than hundreds of literals. Each
//! trigger here reports exactly the end offsets Hyperscan reports for the
//! same pattern (checked against Hyperscan in the tests below), so the
//! clusters and confirmation windows, and therefore the findings, do not
//! change. A trigger is recognized by its prefilter text; any other
//! prefilter stays in Hyperscan.

/// Bytes before a reported end that decide it. A streaming scan rescans at
/// least this much of the previous data.
pub(crate) const LOOKBACK: usize = 40;

/// A class-based prefilter evaluated by byte scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `[0-9](?:[ .()/-]{0,G}[0-9]){5}|[0-9]\.[0-9]{1,3}\.[0-9]`.
    Digits { max_gap: u8 },
    /// `[A-Za-z0-9+/_-]{24}={0,2}(?:[^A-Za-z0-9+/_=-]|$)`.
    Base64Run,
    /// `[0-9a-fA-F]{32}(?:[^0-9a-zA-Z]|$)`.
    HexRun,
    /// `@[A-Za-z0-9]`.
    At,
    /// `::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:`.
    Ipv6,
    /// `[0-9][ABCDEHLMPRST][0-9]{2}[A-Z]` (case-sensitive).
    ItCf,
    /// `[0-9]:A[A-Za-z0-9_-]` (case-sensitive).
    Telegram,
    /// `%[0-9A-Fa-f]{2}[A-Za-z0-9._~+-]{0,3}%[0-9A-Fa-f]{2}`.
    PercentPair,
}

const PATTERNS: &[(&str, Trigger, bool)] = &[
    (
        r"[0-9](?:[ .()/-]{0,2}[0-9]){5}|[0-9]\.[0-9]{1,3}\.[0-9]",
        Trigger::Digits { max_gap: 2 },
        false,
    ),
    (
        r"[0-9](?:[ .()/-]?[0-9]){5}|[0-9]\.[0-9]{1,3}\.[0-9]",
        Trigger::Digits { max_gap: 1 },
        false,
    ),
    (
        r"[A-Za-z0-9+/_-]{24}={0,2}(?:[^A-Za-z0-9+/_=-]|$)",
        Trigger::Base64Run,
        false,
    ),
    (r"[0-9a-fA-F]{32}(?:[^0-9a-zA-Z]|$)", Trigger::HexRun, false),
    (r"@[A-Za-z0-9]", Trigger::At, false),
    (r"::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:", Trigger::Ipv6, false),
    (r"[0-9][ABCDEHLMPRST][0-9]{2}[A-Z]", Trigger::ItCf, true),
    (r"[0-9]:A[A-Za-z0-9_-]", Trigger::Telegram, true),
    (
        r"%[0-9A-Fa-f]{2}[A-Za-z0-9._~+-]{0,3}%[0-9A-Fa-f]{2}",
        Trigger::PercentPair,
        false,
    ),
];

impl Trigger {
    /// The byte trigger equivalent to a Hyperscan prefilter, if there is one.
    pub(crate) fn recognize(pattern: &str, caseless: bool) -> Option<Trigger> {
        PATTERNS
            .iter()
            .find(|(p, _, case_sensitive)| *p == pattern && !(caseless && *case_sensitive))
            .map(|(_, t, _)| *t)
    }
}

const DIGIT: u8 = 1;
const SEP: u8 = 2; // [ .()/-]
const B64: u8 = 4; // [A-Za-z0-9+/_-]
const HEX: u8 = 8; // [0-9a-fA-F]
const ALNUM: u8 = 16;
const URLCH: u8 = 32; // [A-Za-z0-9._~+-]
const UPPER: u8 = 64;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        let digit = b.is_ascii_digit();
        let alpha = b.is_ascii_alphabetic();
        if digit {
            c |= DIGIT;
        }
        if matches!(b, b' ' | b'.' | b'(' | b')' | b'/' | b'-') {
            c |= SEP;
        }
        if digit || alpha || matches!(b, b'+' | b'/' | b'_' | b'-') {
            c |= B64;
        }
        if b.is_ascii_hexdigit() {
            c |= HEX;
        }
        if digit || alpha {
            c |= ALNUM;
        }
        if digit || alpha || matches!(b, b'.' | b'_' | b'~' | b'+' | b'-') {
            c |= URLCH;
        }
        if b.is_ascii_uppercase() {
            c |= UPPER;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[inline(always)]
fn is(b: u8, class: u8) -> bool {
    CLASS[b as usize] & class != 0
}

/// A symbol of the base64 alphabets (standard and URL-safe, no padding):
/// what the base64-run trigger counts.
pub(crate) fn is_base64_symbol(b: u8) -> bool {
    is(b, B64)
}

/// Report the ends of every trigger in `hay` (`emit(group, end)`).
///
/// Ends at or before `from` are not reported, except ends that need the end
/// of data (`$`), which are reported only when `eof` (then regardless of
/// `from`). `hay` must hold at least [`LOOKBACK`] bytes before `from` unless
/// it starts at the beginning of the data. As in Hyperscan, `$` also
/// matches before a final newline.
pub(crate) fn scan(
    triggers: &[(Trigger, u32)],
    hay: &[u8],
    from: usize,
    eof: bool,
    emit: &mut dyn FnMut(u32, usize),
) {
    if triggers.is_empty() {
        return;
    }
    let start = from.saturating_sub(LOOKBACK);
    let mut digit_groups = [(0u8, 0u32); 4];
    let mut nd = 0;
    let mut itcf: Option<u32> = None;
    for &(t, g) in triggers {
        match t {
            Trigger::Digits { max_gap } => {
                if nd < digit_groups.len() {
                    digit_groups[nd] = (max_gap, g);
                    nd += 1;
                } else {
                    digits(hay, start, from, &[(max_gap, g)], None, emit);
                }
            }
            Trigger::ItCf => itcf = Some(g),
            Trigger::Base64Run => runs(hay, start, from, eof, 24, B64, B64, true, g, emit),
            Trigger::HexRun => runs(hay, start, from, eof, 32, HEX, ALNUM, false, g, emit),
            Trigger::At => {
                for p in memchr::memchr_iter(b'@', &hay[start..]) {
                    let p = start + p;
                    if p + 2 > from && p + 1 < hay.len() && is(hay[p + 1], ALNUM) {
                        emit(g, p + 2);
                    }
                }
            }
            Trigger::Ipv6 => {
                for q in memchr::memchr_iter(b':', &hay[start..]) {
                    let q = start + q;
                    if q < from {
                        continue;
                    }
                    if q >= 1 && hay[q - 1] == b':' {
                        emit(g, q + 1);
                        continue;
                    }
                    let mut n = 0;
                    while n < 5 && q > n && is(hay[q - 1 - n], HEX) {
                        n += 1;
                    }
                    if (1..=4).contains(&n)
                        && q >= n + 2
                        && hay[q - n - 1] == b':'
                        && is(hay[q - n - 2], HEX)
                    {
                        emit(g, q + 1);
                    }
                }
            }
            Trigger::Telegram => {
                for c in memchr::memchr_iter(b':', &hay[start..]) {
                    let c = start + c;
                    if c + 3 > from
                        && c >= 1
                        && c + 2 < hay.len()
                        && is(hay[c - 1], DIGIT)
                        && hay[c + 1] == b'A'
                        && is(hay[c + 2], B64)
                        && hay[c + 2] != b'+'
                        && hay[c + 2] != b'/'
                    {
                        emit(g, c + 3);
                    }
                }
            }
            Trigger::PercentPair => {
                let hex2 =
                    |i: usize| i + 2 < hay.len() && is(hay[i + 1], HEX) && is(hay[i + 2], HEX);
                for q in memchr::memchr_iter(b'%', &hay[start..]) {
                    let q = start + q;
                    if q + 3 <= from || !hex2(q) {
                        continue;
                    }
                    for k in 0..=3usize {
                        if q < k + 3 {
                            break;
                        }
                        if k > 0 && !is(hay[q - k], URLCH) {
                            break;
                        }
                        let p = q - k - 3;
                        if hay[p] == b'%' && hex2(p) {
                            emit(g, q + 3);
                            break;
                        }
                    }
                }
            }
        }
    }
    if nd > 0 || itcf.is_some() {
        digits(hay, start, from, &digit_groups[..nd], itcf, emit);
    }
}

/// Digit-run triggers (several gap widths share one pass) and the codice
/// fiscale trigger (it starts with a digit too).
fn digits(
    hay: &[u8],
    start: usize,
    from: usize,
    groups: &[(u8, u32)],
    itcf: Option<u32>,
    emit: &mut dyn FnMut(u32, usize),
) {
    // per group (at most four): chain length of digits linked by at most
    // max_gap separators
    let groups = &groups[..groups.len().min(4)];
    let widest = groups.iter().map(|g| g.0 as usize).max().unwrap_or(0);
    let mut chain = [0u32; 4];
    let mut last: Option<usize> = None;
    let mut p = start;
    let n = hay.len();
    while p < n {
        p = match next_digit(hay, p) {
            Some(x) => x,
            None => break,
        };
        // the separators between the previous digit and this one, when
        // there are few enough and nothing else stands between them
        let gap = last.and_then(|q| {
            let between = &hay[q + 1..p];
            (between.len() <= widest && between.iter().all(|&b| is(b, SEP)))
                .then_some(between.len())
        });
        let end = p + 1;
        let dotted = p >= 4 && hay[p - 1] == b'.' && {
            let mut k = 0;
            while k < 4 && p >= 2 + k && is(hay[p - 2 - k], DIGIT) {
                k += 1;
            }
            (1..=3).contains(&k)
                && p >= 3 + k
                && hay[p - 2 - k] == b'.'
                && is(hay[p - 3 - k], DIGIT)
        };
        for (c, &(max_gap, id)) in chain.iter_mut().zip(groups) {
            *c = if gap.is_some_and(|g| g <= max_gap as usize) {
                (*c + 1).min(6)
            } else {
                1
            };
            if end > from && (*c >= 6 || dotted) {
                emit(id, end);
            }
        }
        if let Some(id) = itcf {
            if p + 5 > from
                && p + 4 < n
                && matches!(
                    hay[p + 1],
                    b'A' | b'B'
                        | b'C'
                        | b'D'
                        | b'E'
                        | b'H'
                        | b'L'
                        | b'M'
                        | b'P'
                        | b'R'
                        | b'S'
                        | b'T'
                )
                && is(hay[p + 2], DIGIT)
                && is(hay[p + 3], DIGIT)
                && is(hay[p + 4], UPPER)
            {
                emit(id, p + 5);
            }
        }
        last = Some(p);
        p += 1;
    }
}

/// Position of the next ASCII digit at or after `p`.
#[inline]
fn next_digit(hay: &[u8], mut p: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while p + 16 <= hay.len() {
            // SAFETY: SSE2 is part of the x86_64 baseline; the load reads 16
            // bytes within `hay` (p + 16 <= len), unaligned loads allowed.
            let mask = unsafe {
                let v = _mm_loadu_si128(hay.as_ptr().add(p) as *const __m128i);
                let ge = _mm_cmpgt_epi8(v, _mm_set1_epi8(b'0' as i8 - 1));
                let le = _mm_cmplt_epi8(v, _mm_set1_epi8(b'9' as i8 + 1));
                _mm_movemask_epi8(_mm_and_si128(ge, le)) as u32
            };
            if mask != 0 {
                return Some(p + mask.trailing_zeros() as usize);
            }
            p += 16;
        }
    }
    while p < hay.len() {
        if hay[p].is_ascii_digit() {
            return Some(p);
        }
        p += 1;
    }
    None
}

/// Runs of at least `min` bytes of `class`, followed (for `pad`) by at most
/// two `=`, then a byte outside `stop` (reported after it) or the end of data.
#[allow(clippy::too_many_arguments)]
fn runs(
    hay: &[u8],
    start: usize,
    from: usize,
    eof: bool,
    min: usize,
    class: u8,
    stop: u8,
    pad: bool,
    g: u32,
    emit: &mut dyn FnMut(u32, usize),
) {
    let n = hay.len();
    let mut p = start;
    // invariant: every window of `min` class bytes starting before p has
    // been handled
    while p + min <= n {
        let probe = p + min - 1;
        if !is(hay[probe], class) {
            p = probe + 1;
            continue;
        }
        let mut k = probe;
        while k > p && is(hay[k - 1], class) {
            k -= 1;
        }
        if k > p {
            p = k;
            continue;
        }
        // [p, p + min) is all class: find the run end
        let mut r = p + min;
        while r < n && is(hay[r], class) {
            r += 1;
        }
        let mut t = r;
        if pad {
            while t < n && t - r < 3 && hay[t] == b'=' {
                t += 1;
            }
        }
        if t - r <= 2 {
            if t < n {
                let padding = pad && hay[t] == b'=';
                if !(is(hay[t], stop) || padding) && t + 1 > from {
                    emit(g, t + 1);
                }
                if eof && t + 1 == n && hay[t] == b'\n' {
                    emit(g, t);
                }
            } else if eof {
                emit(g, n);
            }
        }
        p = r.max(p + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hs::{Database, Expr, Mode};
    use std::collections::BTreeSet;

    /// Deterministic xorshift for the generated inputs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn inputs() -> Vec<Vec<u8>> {
        let alphabets: [&[u8]; 8] = [
            b"%%%2F2f0a.~+-x%",
            b"01:A:A_-+/zA9%",
            b"0123456789abcdefABCDEF0123456789abcdefABCDEF \n.g=",
            b"0123456789 .-()/:",
            b"AbcdEF0123456789+/_-=\n !x",
            b"0123456789abcdefABCDEF:% .\ngG",
            b"@a1 :A0%2F.~ABCDEHLMPRSTZ019",
            b"0123456789abcdefABCDEFghijkl+/=_-.:@%( )\n",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut out = Vec::new();
        for round in 0..600 {
            let alpha = alphabets[round % alphabets.len()];
            let len = (rng.next() % 200) as usize;
            let mut v = Vec::with_capacity(len);
            // long runs of one class now and then
            while v.len() < len {
                let c = alpha[(rng.next() % alpha.len() as u64) as usize];
                let rep = if rng.next().is_multiple_of(8) {
                    1 + (rng.next() % 40) as usize
                } else {
                    1
                };
                for _ in 0..rep {
                    let d = if rep > 1 {
                        alpha[(rng.next() % alpha.len() as u64) as usize]
                    } else {
                        c
                    };
                    let d = if rep > 1 && rng.next().is_multiple_of(2) {
                        b'7'
                    } else {
                        d
                    };
                    v.push(d);
                }
            }
            out.push(v);
        }
        out.push(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n".to_vec());
        out.push(b"0123456789abcdef0123456789abcdef\n".to_vec());
        out.push(b"0123456789abcdef0123456789abcdef".to_vec());
        out
    }

    fn hs_block(db: &Database, hay: &[u8]) -> BTreeSet<usize> {
        let mut scratch = db.alloc_scratch().unwrap();
        let mut s = BTreeSet::new();
        db.scan(hay, &mut scratch, &mut |_, e| {
            s.insert(e as usize);
        })
        .unwrap();
        s
    }

    fn hs_stream(db: &Database, hay: &[u8], cut: &[usize]) -> BTreeSet<usize> {
        let mut scratch = db.alloc_scratch().unwrap();
        let mut st = db.open_stream().unwrap();
        let mut s = BTreeSet::new();
        let mut prev = 0;
        for &c in cut.iter().chain(std::iter::once(&hay.len())) {
            st.scan(&hay[prev..c], &mut scratch, &mut |_, e| {
                s.insert(e as usize);
            })
            .unwrap();
            prev = c;
        }
        st.close(&mut scratch, &mut |_, e| {
            s.insert(e as usize);
        })
        .unwrap();
        s
    }

    /// All triggers scanned together (the digit ones share one pass) report
    /// what each reports alone.
    #[test]
    fn triggers_together_report_what_each_reports_alone() {
        let all: Vec<(Trigger, u32)> = PATTERNS
            .iter()
            .enumerate()
            .map(|(i, &(_, t, _))| (t, i as u32))
            .collect();
        for hay in inputs() {
            let mut together = BTreeSet::new();
            scan(&all, &hay, 0, true, &mut |g, e| {
                together.insert((g, e));
            });
            let mut alone = BTreeSet::new();
            for &t in &all {
                scan(&[t], &hay, 0, true, &mut |g, e| {
                    alone.insert((g, e));
                });
            }
            assert_eq!(together, alone, "{:?}", String::from_utf8_lossy(&hay));
        }
    }

    #[test]
    fn every_trigger_reports_the_hyperscan_ends() {
        let ins = inputs();
        for &(pattern, trig, case_sensitive) in PATTERNS {
            assert_eq!(Trigger::recognize(pattern, false), Some(trig));
            assert_eq!(
                Trigger::recognize(pattern, true).is_none(),
                case_sensitive,
                "{pattern}"
            );
            let ex = [Expr {
                pattern,
                id: 0,
                caseless: false,
            }];
            let block = Database::compile(&ex, Mode::Block).unwrap();
            let stream = Database::compile(&ex, Mode::Stream).unwrap();
            let trig = [(trig, 7u32)];
            let mut reported = 0;
            for hay in &ins {
                let want = hs_block(&block, hay);
                reported += want.len();
                let mut got = BTreeSet::new();
                scan(&trig, hay, 0, true, &mut |g, e| {
                    assert_eq!(g, 7);
                    got.insert(e);
                });
                assert_eq!(
                    got,
                    want,
                    "block {pattern} on {:?}",
                    String::from_utf8_lossy(hay)
                );

                // streaming in 7-byte pieces: rescan with LOOKBACK context
                let cuts: Vec<usize> = (7..hay.len()).step_by(7).collect();
                let want = hs_stream(&stream, hay, &cuts);
                let mut got = BTreeSet::new();
                let mut prev = 0usize;
                for &c in cuts.iter().chain(std::iter::once(&hay.len())) {
                    let lo = prev.saturating_sub(LOOKBACK);
                    scan(&trig, &hay[lo..c], prev - lo, false, &mut |_, e| {
                        assert!(lo + e > prev);
                        got.insert(lo + e);
                    });
                    prev = c;
                }
                let lo = hay.len().saturating_sub(LOOKBACK);
                scan(&trig, &hay[lo..], hay.len() - lo, true, &mut |_, e| {
                    got.insert(lo + e);
                });
                assert_eq!(
                    got,
                    want,
                    "stream {pattern} on {:?}",
                    String::from_utf8_lossy(hay)
                );
            }
            // the generated inputs exercise every trigger
            assert!(reported >= 20, "{pattern}: only {reported} ends");
        }
    }
}
