//! Sample generator for tests and measurements: produces a string matching
//! a regex (ASCII subset), choosing classes and repetitions with a seeded
//! PRNG. Not used on any scanning path.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Small deterministic PRNG (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Generate a string matching `pattern`, or `None` if it does not parse.
pub fn generate(pattern: &str, caseless: bool, seed: u64) -> Option<String> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .case_insensitive(caseless)
        .build()
        .parse(pattern)
        .ok()?;
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    gen(&hir, &mut rng, &mut out);
    String::from_utf8(out).ok()
}

fn gen(h: &Hir, rng: &mut Rng, out: &mut Vec<u8>) {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(l) => out.extend_from_slice(&l.0),
        HirKind::Class(c) => {
            let ranges: Vec<(u8, u8)> = match c {
                Class::Bytes(b) => b.ranges().iter().map(|r| (r.start(), r.end())).collect(),
                Class::Unicode(u) => u
                    .ranges()
                    .iter()
                    .filter(|r| (r.start() as u32) < 128)
                    .map(|r| (r.start() as u8, (r.end() as u32).min(127) as u8))
                    .collect(),
            };
            // prefer printable, non-space ASCII
            let printable: Vec<(u8, u8)> = ranges
                .iter()
                .filter_map(|&(a, b)| {
                    let a = a.max(0x21);
                    let b = b.min(0x7E);
                    (a <= b).then_some((a, b))
                })
                .collect();
            let pool = if printable.is_empty() {
                ranges
            } else {
                printable
            };
            let total: u64 = pool.iter().map(|&(a, b)| (b - a) as u64 + 1).sum();
            let mut k = rng.below(total);
            for (a, b) in pool {
                let n = (b - a) as u64 + 1;
                if k < n {
                    out.push(a + k as u8);
                    return;
                }
                k -= n;
            }
        }
        HirKind::Repetition(r) => {
            let min = r.min as u64;
            let max = r.max.map(|m| m as u64).unwrap_or(min + 4);
            let span = (max - min).min(16);
            let n = min + rng.below(span + 1);
            for _ in 0..n {
                gen(&r.sub, rng, out);
            }
        }
        HirKind::Capture(c) => gen(&c.sub, rng, out),
        HirKind::Concat(v) => v.iter().for_each(|x| gen(x, rng, out)),
        HirKind::Alternation(v) => {
            let i = rng.below(v.len() as u64) as usize;
            gen(&v[i], rng, out)
        }
    }
}
