//! Quality and speed measurement of `tappass-detectors`.
//!
//! Usage: `tappass-bench-detectors [quality|speed|all] [--corpora DIR]`
//! (run in release mode; see `run.sh` beside this crate, which also fetches
//! the registry corpora). Prints Markdown tables.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use tappass_detectors::{testgen, AllowedValues, Categories, Category, EvidenceKey, RuleSet};

mod gitleaks;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args
        .first()
        .map(String::as_str)
        .unwrap_or("all")
        .to_string();
    let corpora = args
        .iter()
        .position(|a| a == "--corpora")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tappass/corpora")
        });
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = here.join("../../../shared/corpora");
    let t = Instant::now();
    let rs = RuleSet::builtin_with_key(&Categories::all(), EvidenceKey::from_bytes([9; 32]))?;
    println!(
        "Rule set: {} rules, block database {} KiB, built in {:.2} s, streaming hold-back {} bytes.\n",
        rs.len(),
        rs.database_size() / 1024,
        t.elapsed().as_secs_f64(),
        rs.hold_back()
    );
    if what == "quality" || what == "all" {
        secrets_quality(&rs, &shared)?;
        injection_quality(&rs, &corpora, &here)?;
        pii_quality(&rs, &here)?;
    }
    if what == "scan" {
        // diagnostic: findings and injection score for each line of stdin
        for line in std::io::stdin().lines() {
            let line = line?;
            for f in rs.scan(&line)? {
                println!(
                    "{} {} {:?}",
                    f.rule_id,
                    f.category,
                    line.get(f.span.clone()).unwrap_or("")
                );
            }
            let s = rs.score_injection(&line)?;
            println!("injection {:.2} {:?}", s.score, s.rules);
        }
    }
    if what == "pii" {
        pii_quality(&rs, &here)?;
    }
    if what == "fired" {
        fired(&rs, &shared, &here)?;
    }
    if what == "profile" {
        profile(&rs, &shared, &here)?;
    }
    if what == "speed" || what == "all" {
        speed(&rs, &shared, &here)?;
    }
    Ok(())
}

fn read_jsonl(p: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// A gitleaks "sample" that is really a fragment of a generator call (a
/// regex, a length, a keyword) rather than literal text.
fn is_fragment(t: &str) -> bool {
    t.len() < 16
        || t.contains("]{")
        || t.contains("\\w")
        || t.contains("\\s")
        || t.contains("%s")
        || t.trim_end().ends_with("\"") && !t.contains(' ') && t.len() < 30
        || t.ends_with(":= \"")
        || t.ends_with("= \"")
        || is_empty_assignment(t)
        || t.ends_with('/')
}

/// `export NAME=` with nothing assigned.
fn is_empty_assignment(t: &str) -> bool {
    let last = t.split_whitespace().last().unwrap_or("");
    last.strip_suffix('=').is_some_and(|name| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

fn secrets_quality(rs: &RuleSet, shared: &Path) -> Result<()> {
    println!("## Secrets\n");
    println!("| corpus | positives | detected | recall | negatives | false positives | FP rate |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let detail = std::env::var("DETAIL").is_ok();
    let is_secret = |t: &str| -> Result<bool> {
        Ok(rs.scan(t)?.iter().any(|f| f.category == Category::Secret))
    };
    // gitleaks literal samples
    let rows = read_jsonl(&shared.join("secrets/gitleaks-samples.jsonl"))?;
    let catalog = gitleaks::Catalog::parse(&std::fs::read_to_string(
        shared.join("secrets/gitleaks.toml"),
    )?)?;
    let plain = gitleaks_samples(rs, &rows, &catalog, detail)?;
    row(
        "gitleaks samples (literal positives)",
        plain.p,
        plain.tp,
        plain.n,
        plain.fp,
    );
    let allowing = RuleSet::builtin_allowing(
        &Categories::all(),
        EvidenceKey::from_bytes([9; 32]),
        AllowedValues::from_values(&catalog.allowed_values),
    )?;
    let allowed = gitleaks_samples(&allowing, &rows, &catalog, false)?;
    row(
        &format!(
            "the same, with the catalog's {} allowlisted values as TapPass's allowlist",
            catalog.allowed_values.len()
        ),
        allowed.p,
        allowed.tp,
        allowed.n,
        allowed.fp,
    );
    // detect-secrets cases (ip_public is PII in TapPass)
    let rows = read_jsonl(&shared.join("secrets/detect-secrets-cases.jsonl"))?;
    let (mut p2, mut tp2, mut n2, mut fp2) = (0, 0, 0, 0);
    for r in &rows {
        let text = r["text"].as_str().unwrap_or("");
        let found = if r["plugin"] == "ip_public" {
            rs.scan(text)?.iter().any(|f| f.rule_id.as_ref() == "ipv4")
        } else {
            is_secret(text)?
        };
        if r["expect"] == "secret" {
            p2 += 1;
            tp2 += found as usize;
            if detail && !found {
                eprintln!("DSMISS {}: {:?}", r["plugin"], text);
            }
        } else {
            n2 += 1;
            fp2 += found as usize;
            if detail && found {
                let ids: Vec<String> = rs
                    .scan(text)?
                    .iter()
                    .filter(|f| f.category == Category::Secret)
                    .map(|f| format!("{}={:?}", f.rule_id, text.get(f.span.clone()).unwrap_or("")))
                    .collect();
                eprintln!("DSFP {}: {:?} {}", r["plugin"], text, ids.join(" "));
            }
        }
    }
    row("detect-secrets plugin cases", p2, tp2, n2, fp2);
    // generated from the gitleaks catalog regexes
    let (mut p3, mut tp3, mut unparsable) = (0, 0, 0);
    let mut missed_rules = Vec::new();
    for (id, re) in &catalog.patterns {
        let mut any = false;
        let mut hits = 0;
        let mut tried = 0;
        for seed in 0..5u64 {
            let Some(sample) = testgen::generate(re, false, seed) else {
                continue;
            };
            any = true;
            tried += 1;
            if is_secret(&format!("{sample}\n"))? {
                hits += 1;
            }
        }
        if !any {
            unparsable += 1;
            continue;
        }
        p3 += tried;
        tp3 += hits;
        if hits == 0 {
            missed_rules.push(id.as_str());
        }
    }
    row(
        "generated from gitleaks.toml regexes (5 per rule)",
        p3,
        tp3,
        0,
        0,
    );
    println!(
        "\n{} gitleaks \"secret\" samples are generator fragments (regex text, lengths, keywords, a prefix followed by a length) and were excluded; \
         {} \"no_secret\" samples that are verbatim another rule's positive sample, and {} that the catalog as a whole reports \
         (gitleaks' own rules, entropy and allowlists; {}), were excluded from the negatives; \
         {unparsable} catalog regexes could not be parsed by the generator, {} by the `regex` crate.\n",
        plain.skipped,
        plain.cross,
        plain.catalog_cross.len(),
        plain.catalog_cross.join(", "),
        catalog.unparsable.len(),
    );
    if !plain.missed.is_empty() {
        println!("Missed literal samples: {}\n", plain.missed.len());
        for m in plain.missed.iter().take(20) {
            println!("- `{}`", m.replace('`', "'").replace('\n', " "));
        }
        println!();
    }
    for (name, counts) in [("", &plain), (" with the allowlist", &allowed)] {
        if counts.fp_rules.is_empty() {
            continue;
        }
        let mut v: Vec<_> = counts.fp_rules.iter().collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        let list: Vec<String> = v.iter().map(|(k, n)| format!("{k} ({n})")).collect();
        println!(
            "Rules firing on gitleaks negatives{name}: {}\n",
            list.join(", ")
        );
    }
    if !missed_rules.is_empty() {
        println!(
            "Catalog rules with no generated sample detected: {}\n",
            missed_rules.join(", ")
        );
    }
    Ok(())
}

#[derive(Default)]
struct SampleCounts {
    p: usize,
    tp: usize,
    n: usize,
    fp: usize,
    skipped: usize,
    cross: usize,
    /// Negatives the catalog as a whole reports, as `rule→reporting rules`.
    catalog_cross: Vec<String>,
    missed: Vec<String>,
    fp_rules: std::collections::BTreeMap<String, usize>,
}

/// TapPass on gitleaks' literal samples.
fn gitleaks_samples(
    rs: &RuleSet,
    rows: &[serde_json::Value],
    catalog: &gitleaks::Catalog,
    detail: bool,
) -> Result<SampleCounts> {
    let mut c = SampleCounts::default();
    let is_secret = |t: &str| -> Result<bool> {
        Ok(rs.scan(t)?.iter().any(|f| f.category == Category::Secret))
    };
    // A negative of one rule that is verbatim a positive sample of another
    // (e.g. an admin key listed as "not a user key") is not a negative.
    let positives: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r["expect"] == "secret")
        .filter_map(|r| r["text"].as_str())
        .collect();
    for (ix, r) in rows.iter().enumerate() {
        let text = r["text"].as_str().unwrap_or("");
        // gitleaks builds some positives from a prefix, a length and a
        // suffix: the prefix row is followed by a bare number.
        let next_is_length = rows
            .get(ix + 1)
            .and_then(|n| n["text"].as_str())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if r["expect"] == "secret" {
            if is_fragment(text) || next_is_length {
                c.skipped += 1;
                continue;
            }
            c.p += 1;
            if is_secret(text)? {
                c.tp += 1;
            } else {
                c.missed.push(format!("{}: {:.80}", r["rule"], text));
                if detail {
                    eprintln!("MISS {}: {:?}", r["rule"], text);
                }
            }
            continue;
        }
        if positives.contains(text) {
            c.cross += 1;
            continue;
        }
        // Excluded only when another rule reports it: where the sample's
        // own rule reports it too, this evaluation of the catalog disagrees
        // with the catalog's label, and the sample stays a negative.
        let own = r["rule"].as_str().unwrap_or("?");
        let reported = catalog.reporting_rules(text);
        if !reported.is_empty() && !reported.contains(&own) {
            c.catalog_cross.push(format!(
                "{own} negative by {}{}",
                reported.join("+"),
                if is_secret(text)? {
                    ", flagged by TapPass"
                } else {
                    ""
                }
            ));
            continue;
        }
        c.n += 1;
        if is_secret(text)? {
            c.fp += 1;
            for f in rs.scan(text)? {
                if f.category == Category::Secret {
                    *c.fp_rules.entry(f.rule_id.to_string()).or_insert(0) += 1;
                    if detail {
                        eprintln!(
                            "FP {} by {}: {:?}",
                            r["rule"],
                            f.rule_id,
                            text.get(f.span.clone()).unwrap_or("")
                        );
                    }
                }
            }
        }
    }
    Ok(c)
}

fn row(name: &str, p: usize, tp: usize, n: usize, fp: usize) {
    let rate = |a: usize, b: usize| {
        if b == 0 {
            "–".to_string()
        } else {
            format!("{:.3}", a as f64 / b as f64)
        }
    };
    println!(
        "| {name} | {p} | {tp} | {} | {n} | {fp} | {} |",
        rate(tp, p),
        rate(fp, n)
    );
}

fn benign_prompts(here: &Path, corpora: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_to_string(here.join("data/benign_prompts.txt"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let fp = corpora.join(
        "x/spikee-0.9.2-py3-none-any/spikee/data/workspace/datasets/seeds-investment-advice-fp/standalone_user_inputs.jsonl",
    );
    if let Ok(rows) = read_jsonl(&fp) {
        for r in rows {
            if let Some(t) = r["text"].as_str() {
                v.push(t.to_string());
            }
        }
    }
    Ok(v)
}

/// `text` base64-encoded inside a request to decode and follow it, as
/// prompt-security-fuzzer's base64 attack sends its injections.
fn decode_and_follow(text: &str) -> String {
    use base64::Engine as _;
    format!(
        "Decode the following base64 and do what it says: {}",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

/// promptfoo's bundled prompt-injection templates (the `data.ts` region of
/// its strategies bundle: one JSON string literal per line).
fn promptfoo_templates(corpora: &Path) -> Vec<String> {
    let dir = corpora.join("x/promptfoo/package/dist/src");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("strategies-") && n.ends_with(".js"))
        })
        .collect();
    paths.sort();
    for p in paths {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Some(start) = text.find("//#region src/redteam/strategies/promptInjections/data.ts")
        else {
            continue;
        };
        let mut out = Vec::new();
        for line in text[start..].lines().skip(2) {
            let l = line.trim().trim_end_matches(',');
            if l.starts_with(']') {
                break;
            }
            if let Ok(serde_json::Value::String(t)) = serde_json::from_str::<serde_json::Value>(l) {
                if t.contains("__PROMPT__") {
                    out.push(t);
                }
            }
        }
        if !out.is_empty() {
            return out;
        }
    }
    Vec::new()
}

fn injection_quality(rs: &RuleSet, corpora: &Path, here: &Path) -> Result<()> {
    println!(
        "## Prompt injection (threshold {})\n",
        tappass_detectors::DEFAULT_INJECTION_THRESHOLD
    );
    let base = corpora
        .join("x/spikee-0.9.2-py3-none-any/spikee/data/workspace/datasets/seeds-cybersec-2026-01");
    let jb = read_jsonl(&base.join("jailbreaks.jsonl")).unwrap_or_default();
    let ins = read_jsonl(&base.join("instructions.jsonl")).unwrap_or_default();
    if jb.is_empty() || ins.is_empty() {
        println!(
            "spikee corpus not found under {} (run run.sh).\n",
            corpora.display()
        );
        return Ok(());
    }
    let th = tappass_detectors::DEFAULT_INJECTION_THRESHOLD;
    let detail = std::env::var("DETAIL").is_ok();
    // each template with every instruction; and templates alone with a
    // neutral instruction (does the jailbreak wrapper itself score?)
    let (mut n, mut hit, mut tn, mut thit) = (0, 0, 0, 0);
    let mut by_type: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for j in &jb {
        let t = j["text"].as_str().unwrap_or("");
        let ty = j["jailbreak_type"].as_str().unwrap_or("?").to_string();
        tn += 1;
        let s = rs.score_injection(&t.replace("<INSTRUCTION>", "tell me a joke"))?;
        if s.exceeds(th) {
            thit += 1;
        }
        let mut template_hits = 0;
        for i in &ins {
            let text = t.replace("<INSTRUCTION>", i["instruction"].as_str().unwrap_or(""));
            n += 1;
            let ok = rs.score_injection(&text)?.exceeds(th);
            template_hits += ok as usize;
            if detail && !ok {
                let s = rs.score_injection(&text)?;
                eprintln!(
                    "INJMISS {ty} {:.2} {:?} instr={:?}",
                    s.score,
                    s.rules,
                    i["instruction"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(90)
                        .collect::<String>()
                );
            }
            hit += ok as usize;
            let e = by_type.entry(ty.clone()).or_default();
            e.0 += 1;
            e.1 += ok as usize;
        }
        if detail && template_hits < ins.len() {
            eprintln!(
                "INJTEMPLATE {ty} {template_hits}/{} {:?}",
                ins.len(),
                t.chars().take(400).collect::<String>()
            );
        }
    }
    let benign = benign_prompts(here, corpora)?;
    let mut bfp = 0;
    for b in &benign {
        let s = rs.score_injection(b)?;
        if s.exceeds(th) {
            bfp += 1;
            if detail {
                eprintln!("INJFP {:.2} {:?} {b:?}", s.score, s.rules);
            }
        }
    }
    println!("| set | n | flagged | rate |\n|---|---:|---:|---:|");
    println!(
        "| spikee seeds-cybersec-2026-01: {} templates × {} instructions | {n} | {hit} | {:.3} |",
        jb.len(),
        ins.len(),
        hit as f64 / n as f64
    );
    println!("| spikee templates with a neutral instruction (\"tell me a joke\") | {tn} | {thit} | {:.3} |", thit as f64 / tn as f64);
    println!(
        "| benign prompts (TapPass's own + spikee investment-advice-fp) | {} | {bfp} | {:.3} |\n",
        benign.len(),
        bfp as f64 / benign.len() as f64
    );
    // Held out (no rule was written or tuned against it): promptfoo's
    // jailbreak templates.
    let pf = promptfoo_templates(corpora);
    if pf.is_empty() {
        println!(
            "promptfoo templates not found under {} (run run.sh).\n",
            corpora.display()
        );
    } else {
        let (mut n, mut hit, mut nn, mut nhit) = (0, 0, 0, 0);
        for t in &pf {
            nn += 1;
            nhit += rs
                .score_injection(&t.replace("__PROMPT__", "tell me a joke"))?
                .exceeds(th) as usize;
            for i in &ins {
                n += 1;
                let text = t.replace("__PROMPT__", i["instruction"].as_str().unwrap_or(""));
                hit += rs.score_injection(&text)?.exceeds(th) as usize;
            }
        }
        println!("Held out (not used for tuning): promptfoo 0.123.1 jailbreak templates.\n");
        println!("| set | n | flagged | rate |\n|---|---:|---:|---:|");
        println!(
            "| promptfoo: {} templates × {} spikee instructions | {n} | {hit} | {:.3} |",
            pf.len(),
            ins.len(),
            hit as f64 / n.max(1) as f64
        );
        println!(
            "| promptfoo templates with a neutral instruction (\"tell me a joke\") | {nn} | {nhit} | {:.3} |\n",
            nhit as f64 / nn.max(1) as f64
        );
    }
    // Held out too: prompt-security-fuzzer's injection texts (the set its
    // base64 attack encodes), as they are and base64-encoded inside a
    // request to decode and follow them, as that attack sends them.
    let ps = read_jsonl(&corpora.join("x/ps_fuzz_injections.jsonl")).unwrap_or_default();
    if ps.is_empty() {
        println!(
            "prompt-security-fuzzer injections not found under {} (run run.sh).\n",
            corpora.display()
        );
    } else {
        let (mut hit, mut hit_b64) = (0, 0);
        for r in &ps {
            let t = r["text"].as_str().unwrap_or_default();
            hit += rs.score_injection(t)?.exceeds(th) as usize;
            let wrapped = decode_and_follow(t);
            hit_b64 += rs.score_injection(&wrapped)?.exceeds(th) as usize;
        }
        // The control: benign prompts wrapped the same way (what the wrapper
        // and an encoded blob score on their own).
        let (mut ctl, mut ctl_n) = (0, 0);
        for b in &benign {
            ctl_n += 1;
            let wrapped = decode_and_follow(b);
            ctl += rs.score_injection(&wrapped)?.exceeds(th) as usize;
        }
        let n = ps.len();
        println!("Held out (not used for tuning): prompt-security-fuzzer 2.1.1 injection texts (`prompt_injections_for_base64.parquet`, English and German; many are role-play or off-topic requests rather than instruction overrides).\n");
        println!("| set | n | flagged | rate |\n|---|---:|---:|---:|");
        println!(
            "| ps-fuzz injection texts | {n} | {hit} | {:.3} |",
            hit as f64 / n as f64
        );
        println!(
            "| the same, base64-encoded in a request to decode and follow them | {n} | {hit_b64} | {:.3} |",
            hit_b64 as f64 / n as f64
        );
        println!(
            "| control: benign prompts, base64-encoded in the same request | {ctl_n} | {ctl} | {:.3} |\n",
            ctl as f64 / ctl_n.max(1) as f64
        );
    }
    println!(
        "Per jailbreak type (template × instruction):\n\n| type | n | flagged |\n|---|---:|---:|"
    );
    for (k, (a, b)) in by_type {
        println!("| {k} | {a} | {b} |");
    }
    println!();
    Ok(())
}

/// Mix for the diagnostics: `MIX=clean|dense`, default realistic.
fn env_mix() -> Mix {
    match std::env::var("MIX").as_deref() {
        Ok("clean") => Mix::Clean,
        Ok("dense") => Mix::Dense,
        _ => Mix::Realistic,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// Benign prompts only (no secrets, no PII).
    Clean,
    Realistic,
    Dense,
}

/// Mixed text for speed runs. `Clean`: the benign prompts only. `dense`: the benign prompts and every
/// gitleaks sample in turn (a secret or near-secret on most lines).
/// Otherwise a realistic mix: per ten benign prompts, one PII sentence and
/// one gitleaks sample.
fn mixed_text(shared: &Path, here: &Path, size: usize, mix: Mix) -> Result<String> {
    let dense = mix == Mix::Dense;
    let benign: Vec<String> = std::fs::read_to_string(here.join("data/benign_prompts.txt"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let samples: Vec<String> = read_jsonl(&shared.join("secrets/gitleaks-samples.jsonl"))?
        .iter()
        .map(|r| r["text"].as_str().unwrap_or("").to_string())
        .collect();
    let pii = [
        "Contact jane.doe@example.com, +44 20 7946 0958, card 4111 1111 1111 1111.",
        "Bitte überweisen Sie an DE89 3704 0044 0532 0130 00, Steuer-ID 86095742719.",
        "Mon numéro de sécurité sociale est 2 69 05 49 588 157 80, tél. 01 23 45 67 89.",
        "SSN 536-22-1234, born 1984-03-12, lives at 42 Elm Street, server 192.168.10.20.",
        "Il codice fiscale è RSSMRA85T10A562S e il mio cellulare +39 347 123 4567.",
        "Mijn BSN is 111222333 en mijn IBAN NL91 ABNA 0417 1643 00.",
        "DNI 12345678Z, teléfono 612 345 678, correo maria.garcia@correo.es.",
    ];
    let mut parts: Vec<&str> = Vec::new();
    if mix == Mix::Clean {
        parts.extend(benign.iter().map(String::as_str));
    } else if dense {
        parts.extend(benign.iter().map(String::as_str));
        parts.extend(samples.iter().map(String::as_str));
        parts.extend(pii);
    } else {
        for (i, b) in benign.iter().enumerate() {
            parts.push(b);
            if i % 10 == 9 {
                parts.push(pii[(i / 10) % pii.len()]);
                parts.push(&samples[(i / 10 * 7) % samples.len()]);
            }
        }
    }
    let mut text = String::new();
    let mut i = 0;
    while text.len() < size {
        text.push_str(parts[i % parts.len()]);
        text.push('\n');
        i += 1;
    }
    Ok(text)
}

/// One Hyperscan block database over `(id, (name, pattern, caseless))`.
fn compile_block<'a>(
    exprs: impl IntoIterator<Item = (usize, &'a (String, String, bool))>,
) -> std::result::Result<tappass_detectors::hs::Database, tappass_detectors::hs::HsError> {
    use tappass_detectors::hs::{Database, Expr, Mode};
    let ex: Vec<Expr<'_>> = exprs
        .into_iter()
        .map(|(i, e)| Expr {
            pattern: &e.1,
            id: i as u32,
            caseless: e.2,
        })
        .collect();
    Database::compile(&ex, Mode::Block)
}

/// How many reports `db` gives over all `blocks`.
fn count_reports(
    db: &tappass_detectors::hs::Database,
    scratch: &mut tappass_detectors::hs::Scratch,
    blocks: &[&str],
) -> Result<u64> {
    let mut n = 0;
    for b in blocks {
        db.scan(b.as_bytes(), scratch, &mut |_, _| n += 1)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(n)
}

/// Every rule's own pattern compiled into one Hyperscan block database, as
/// a scan without prefilters and confirmation would: the database and the
/// ids of the rules Hyperscan rejected (left out).
fn compile_rule_patterns(rs: &RuleSet) -> Result<(tappass_detectors::hs::Database, Vec<String>)> {
    let mut pats = rs.hs_rule_patterns();
    let mut rejected = Vec::new();
    loop {
        match compile_block(pats.iter().enumerate()) {
            Ok(db) => return Ok((db, rejected)),
            Err(e) => match e.expression {
                Some(i) if i < pats.len() => rejected.push(pats.remove(i).0),
                _ => anyhow::bail!("{e}"),
            },
        }
    }
}

/// One part of the detection path, run on a block of text.
type TimedPart<'a> = dyn Fn(&str) -> Result<()> + 'a;

fn speed(rs: &RuleSet, shared: &Path, here: &Path) -> Result<()> {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "## Speed (one core, thread CPU time, 8 MiB of text in 64 KiB blocks, best of {reps})\n"
    );
    println!("| text | mode | MB/s | ratio to raw |\n|---|---|---:|---:|");
    let mut notes = Vec::new();
    let gw = RuleSet::builtin_with_key(
        &Categories {
            injection_scoring_only: true,
            ..Categories::all()
        },
        EvidenceKey::from_bytes([9; 32]),
    )?;
    // Compiled on first use (the parts timed alone do not need it).
    let mut own: Option<(tappass_detectors::hs::Database, Vec<String>, f64)> = None;
    let only = std::env::var("MIX").ok();
    for (name, mix) in [
        ("clean prompts", Mix::Clean),
        ("realistic mix", Mix::Realistic),
        ("dense mix", Mix::Dense),
    ] {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let text = mixed_text(shared, here, 8 << 20, mix)?;
        let blocks = split_blocks(&text, 65536);
        // the gateway scans one message at a time
        let messages = split_blocks(&text, 1024);
        let mb = text.len() as f64 / 1e6;
        // CPU time of this thread: on a shared machine, time spent waiting
        // for a core is not counted.
        let best = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            let mut b = f64::MAX;
            for _ in 0..reps {
                let t = thread_cpu_seconds();
                f()?;
                b = b.min(thread_cpu_seconds() - t);
            }
            Ok(b)
        };
        // One part alone (for `perf record` and side-by-side comparisons).
        let only: Option<(&str, &TimedPart)> = if std::env::var("NORMALIZE_ONLY").is_ok() {
            Some(("injection normalization only", &|b| {
                std::hint::black_box(tappass_detectors::normalize::normalize_for_injection(b));
                Ok(())
            }))
        } else if std::env::var("GATEWAY_ONLY").is_ok() {
            Some(("gateway only", &|b| {
                gw.scan(b)?;
                gw.score_injection(b)?;
                Ok(())
            }))
        } else if std::env::var("FULL_ONLY").is_ok() || std::env::var("MESSAGES_ONLY").is_ok() {
            Some(("full only", &|b| {
                rs.scan(b)?;
                Ok(())
            }))
        } else if std::env::var("STREAM_ONLY").is_ok() {
            Some(("streaming only", &|b| stream_block(rs, b).map(drop)))
        } else {
            None
        };
        if let Some((label, part)) = only {
            let (label, pieces) = if std::env::var("MESSAGES_ONLY").is_ok() {
                ("full only, 1 KiB messages", &messages)
            } else {
                (label, &blocks)
            };
            let secs = best(&mut || pieces.iter().try_for_each(|b| part(b)))?;
            println!("| {name} | {label} | {:.0} | |", mb / secs);
            continue;
        }
        // Raw baseline: every prefilter of the rule set (literals, phrases
        // and the class-based triggers) compiled into one Hyperscan database
        // and scanned without confirmation.
        let all_db = compile_block(rs.hs_expressions().iter().enumerate())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut all_scratch = all_db.alloc_scratch().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut nraw = 0;
        let raw = best(&mut || {
            nraw = count_reports(&all_db, &mut all_scratch, &blocks)?;
            Ok(())
        })?;
        // The other baseline: the rules' own patterns, compiled once.
        if own.is_none() {
            let t = Instant::now();
            let (db, rejected) = compile_rule_patterns(rs)?;
            own = Some((db, rejected, t.elapsed().as_secs_f64()));
        }
        let own_db = &own.as_ref().expect("compiled above").0;
        let mut own_scratch = own_db.alloc_scratch().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut nown = 0;
        let own_t = best(&mut || {
            nown = count_reports(own_db, &mut own_scratch, &blocks)?;
            Ok(())
        })?;
        let mut nhs = 0;
        let hs_only = best(&mut || {
            nhs = 0;
            for b in &blocks {
                nhs += rs.raw_hyperscan_count(b.as_bytes())?;
            }
            Ok(())
        })?;
        let mut npre = 0;
        let pre = best(&mut || {
            npre = 0;
            for b in &blocks {
                npre += rs.raw_prefilter_count(b.as_bytes())?;
            }
            Ok(())
        })?;
        // A block scan of every piece with `set`: its time and findings.
        let scan_all = |set: &RuleSet, pieces: &[&str]| -> Result<(f64, usize)> {
            let mut n = 0;
            let t = best(&mut || {
                n = 0;
                for b in pieces {
                    n += set.scan(b)?.len();
                }
                Ok(())
            })?;
            Ok((t, n))
        };
        let (full, nfind) = scan_all(rs, &blocks)?;
        let (small, nsmall) = scan_all(rs, &messages)?;
        // The same scan with the injection phrases left out (secrets, PII
        // and exfiltration only): the gateway's scan, without its score.
        let (rest, nrest) = scan_all(&gw, &blocks)?;
        // All four categories the way the gateway runs them: a scan for
        // secrets, PII and exfiltration plus the injection score, with the
        // injection phrases in the scan too (as before) and in the score only.
        let gateway_path = |set: &RuleSet| -> Result<(f64, usize)> {
            let mut n = 0;
            let t = best(&mut || {
                n = 0;
                for b in &blocks {
                    n += set.scan(b)?.len() + set.score_injection(b)?.rules.len();
                }
                Ok(())
            })?;
            Ok((t, n))
        };
        let (both, nboth) = gateway_path(rs)?;
        let (gw_both, ngw) = gateway_path(&gw)?;
        let mut nstream = 0;
        let stream64 = best(&mut || {
            nstream = 0;
            for b in &blocks {
                nstream += stream_block(rs, b)?;
            }
            Ok(())
        })?;
        let chunks = text.len() as f64 / 64.0;
        println!(
            "| {name} | raw Hyperscan scan of all the rule set's prefilters in one database, no confirmation ({nraw} reports) | {:.0} | 1.00 |",
            mb / raw
        );
        println!(
            "| {name} | raw Hyperscan scan of the rules' own patterns in one database, no prefilters, no confirmation ({nown} reports) | {:.0} | {:.2} |",
            mb / own_t,
            raw / own_t
        );
        notes.push(format!(
            "{name}: full rule set against a raw Hyperscan scan of the rules' own patterns: {:.2}; the gateway's path against it: {:.2}.",
            own_t / full,
            own_t / gw_both
        ));
        println!(
            "| {name} | shipped prefilter stage: Hyperscan (literals, phrases) + byte triggers, no confirmation ({npre} reports) | {:.0} | {:.2} |",
            mb / pre,
            raw / pre
        );
        println!(
            "| {name} | Hyperscan part of the shipped prefilter stage alone ({nhs} reports) | {:.0} | {:.2} |",
            mb / hs_only,
            raw / hs_only
        );
        println!(
            "| {name} | full rule set: scan + confirm + validate + merge ({nfind} findings) | {:.0} | {:.2} |",
            mb / full,
            raw / full
        );
        println!(
            "| {name} | full rule set, the text cut into 1 KiB messages, one scan each ({nsmall} findings) | {:.0} | {:.2} |",
            mb / small,
            raw / small
        );
        println!(
            "| {name} | scan without the injection phrases: secrets, PII, exfiltration ({nrest} findings) | {:.0} | {:.2} |",
            mb / rest,
            raw / rest
        );
        println!(
            "| {name} | gateway, before: full scan + injection score ({nboth} findings and scored rules) | {:.0} | {:.2} |",
            mb / both,
            raw / both
        );
        println!(
            "| {name} | gateway: scan without injection phrases + injection score ({ngw} findings and scored rules) | {:.0} | {:.2} |",
            mb / gw_both,
            raw / gw_both
        );
        notes.push(format!(
            "{name}: the gateway's scan and injection score together, injection phrases scored only / also scanned: time ratio {:.2}.",
            gw_both / both
        ));
        println!(
            "| {name} | streaming, 64-byte chunks ({nstream} findings) | {:.0} | {:.2} |",
            mb / stream64,
            raw / stream64
        );
        notes.push(format!(
            "{name}: streaming overhead {:.0} ns per 64-byte chunk over the block scan; {:.1} findings per KiB.",
            (stream64 - full) * 1e9 / chunks,
            nfind as f64 / (text.len() as f64 / 1024.0)
        ));
    }
    println!();
    for n in notes {
        println!("{n}\n");
    }
    if let Some((db, rejected, secs)) = &own {
        println!(
            "The rules' own patterns: {} in one Hyperscan database ({} KiB), compiled in {secs:.1} s; rejected by Hyperscan and left out: {}.\n",
            rs.len() - rejected.len(),
            db.size() / 1024,
            if rejected.is_empty() {
                "none".to_string()
            } else {
                rejected.join(", ")
            }
        );
    }
    Ok(())
}

/// `text` cut into pieces of at most `size` bytes, each ending on a
/// character boundary.
fn split_blocks(text: &str, size: usize) -> Vec<&str> {
    let mut v = Vec::new();
    let mut s = 0;
    while s < text.len() {
        let mut e = (s + size).min(text.len());
        while !text.is_char_boundary(e) {
            e -= 1;
        }
        v.push(&text[s..e]);
        s = e;
    }
    v
}

/// Stream `block` through a new scanner in 64-byte chunks (cut back to a
/// character boundary); returns the number of findings.
fn stream_block(rs: &RuleSet, block: &str) -> Result<usize> {
    let mut s = rs.stream_scanner()?;
    let mut found = 0;
    let mut p = 0;
    while p < block.len() {
        let mut e = (p + 64).min(block.len());
        while !block.is_char_boundary(e) {
            e -= 1;
        }
        found += s.feed(&block[p..e])?.findings.len();
        p = e;
    }
    Ok(found + s.finish()?.findings.len())
}

/// CPU time consumed by the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Diagnostic: raw Hyperscan throughput of the database without each
/// class-based (non-literal) prefilter, to find what makes the scan slow.
fn profile(rs: &RuleSet, shared: &Path, here: &Path) -> Result<()> {
    use tappass_detectors::hs::{Database, Expr, Mode};
    let text = mixed_text(shared, here, 4 << 20, env_mix())?;
    let exprs = rs.hs_expressions();
    let time_db = |keep: &dyn Fn(&str) -> bool| -> Result<(usize, f64)> {
        let kept: Vec<_> = exprs
            .iter()
            .enumerate()
            .filter(|(_, e)| keep(&e.0))
            .collect();
        let db = compile_block(kept.iter().copied()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut scratch = db.alloc_scratch().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for b in text.as_bytes().chunks(65536) {
                db.scan(b, &mut scratch, &mut |_, _| {})
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((kept.len(), text.len() as f64 / 1e6 / best))
    };
    let is_class = |p: &str| p.contains('[') || p.contains("\\b") || p.contains("\\s");
    let class: Vec<&(String, String, bool)> = exprs.iter().filter(|e| is_class(&e.1)).collect();
    let (n, mbs) = time_db(&|_| true)?;
    println!("all: {n} expressions {mbs:.0} MB/s");
    {
        let db = compile_block(exprs.iter().enumerate()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut scratch = db.alloc_scratch().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut counts = vec![0usize; exprs.len()];
        db.scan(text.as_bytes(), &mut scratch, &mut |id, _| {
            counts[id as usize] += 1
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut v: Vec<(usize, usize)> = counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, i))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        for (c, i) in v.iter().take(25) {
            println!("{c:8} reports  {}  {:.100}", exprs[*i].0, exprs[*i].1);
        }
    }
    if std::env::var("COUNTS_ONLY").is_ok() {
        return Ok(());
    }
    let minlen = |p: &str| -> usize {
        p.trim_start_matches("(?:")
            .trim_end_matches(')')
            .split('|')
            .map(|l| {
                l.replace("\\x", "").len() - l.matches("\\x").count() * 2 + l.matches("\\x").count()
            })
            .min()
            .unwrap_or(0)
    };
    for k in [3usize, 4, 5, 6] {
        let (n, mbs) = time_db(&|id| {
            let e = exprs.iter().find(|e| e.0 == id).unwrap();
            !is_class(&e.1) && minlen(&e.1) >= k
        })?;
        println!(
            "literal expressions with min literal length >= {k}: {n} expressions {mbs:.0} MB/s"
        );
    }
    for cl in [false, true] {
        let (n, mbs) = time_db(&|id| {
            let e = exprs.iter().find(|e| e.0 == id).unwrap();
            !is_class(&e.1) && e.2 == cl
        })?;
        println!("literal expressions caseless={cl}: {n} expressions {mbs:.0} MB/s");
    }
    let (n, mbs) = time_db(&|id| !class.iter().any(|e| e.0 == id))?;
    println!("literal prefilters only: {n} expressions {mbs:.0} MB/s");
    let triggered = rs.byte_triggered();
    let (n, mbs) = time_db(&|id| !triggered.iter().any(|t| t == id))?;
    println!("shipped database (byte-scanned triggers removed): {n} expressions {mbs:.0} MB/s");
    let (n, mbs) = time_db(&|id| {
        !triggered.iter().any(|t| t == id)
            && (!class.iter().any(|e| e.0 == id) || id.starts_with("inj-"))
    })?;
    println!("literal prefilters + injection phrases: {n} expressions {mbs:.0} MB/s");
    let (n, mbs) = time_db(&|id| !triggered.iter().any(|t| t == id) && !id.starts_with("inj-"))?;
    println!("shipped database without injection phrases: {n} expressions {mbs:.0} MB/s");
    if std::env::var("INJECTION_EACH").is_ok() {
        let (_, base) =
            time_db(&|id| !triggered.iter().any(|t| t == id) && !id.starts_with("inj-"))?;
        for e in exprs.iter().filter(|e| e.0.starts_with("inj-")) {
            let (_, mbs) = time_db(&|id| {
                !triggered.iter().any(|t| t == id) && (!id.starts_with("inj-") || id == e.0)
            })?;
            let spec = rs.rules().find(|r| r.id == e.0).unwrap();
            let hir = regex_syntax::ParserBuilder::new()
                .unicode(false)
                .utf8(false)
                .case_insensitive(true)
                .build()
                .parse(&spec.pattern)?;
            let lits = tappass_detectors::literals::required(&hir);
            let mut nlit = 0;
            if let Some(l) = &lits {
                let ex = [Expr {
                    pattern: &l.hs_pattern(),
                    id: 0,
                    caseless: true,
                }];
                let db = Database::compile(&ex, Mode::Block).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut scratch = db.alloc_scratch().map_err(|e| anyhow::anyhow!("{e}"))?;
                db.scan(text.as_bytes(), &mut scratch, &mut |_, _| nlit += 1)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            println!(
                "{:40} cost {:6.2} ms/MB  literal reports {nlit:7}  {:.60}",
                e.0,
                1e3 / mbs - 1e3 / base,
                lits.map(|l| format!(
                    "{:?}",
                    l.set
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect::<Vec<_>>()
                ))
                .unwrap_or_default()
            );
        }
    }
    if std::env::var("SUMMARY_ONLY").is_ok() {
        return Ok(());
    }
    for e in &class {
        let (n, mbs) = time_db(&|id| id != e.0)?;
        println!(
            "all but {}: {n} expressions {mbs:.0} MB/s   {:.80}",
            e.0, e.1
        );
    }
    Ok(())
}

/// Diagnostic: which rules fire on the mixed text.
fn fired(rs: &RuleSet, shared: &Path, here: &Path) -> Result<()> {
    let text = mixed_text(shared, here, 1 << 20, env_mix())?;
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for f in rs.scan(&text)? {
        *by.entry(f.rule_id.to_string()).or_default() += 1;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.1));
    for (k, n) in v.iter().take(25) {
        println!("{n:6} {k}");
    }
    Ok(())
}

/// Gold type of a PII rule (the corpus' entity types).
fn pii_type(rule_id: &str) -> &str {
    match rule_id {
        "email" => "email",
        "payment-card" => "card",
        "iban" => "iban",
        "ipv4" => "ipv4",
        "ipv6" => "ipv6",
        "date-of-birth" | "date-of-birth-de" => "dob",
        "de-tax-id" => "de_tax_id",
        "fr-nir" => "fr_nir",
        "es-dni" => "es_dni",
        "it-codice-fiscale" => "it_cf",
        "be-national-number" => "be_nn",
        "uk-nino" => "uk_nino",
        id if id.starts_with("phone") => "phone",
        id if id.starts_with("us-ssn") => "ssn",
        id if id.starts_with("nl-bsn") => "nl_bsn",
        id => id,
    }
}

/// Structured PII on the Faker corpus (`data/pii_faker.jsonl`, generated by
/// `data/gen_pii.py`): a finding counts when its type matches a labelled
/// entity and it covers at least 80 % of the entity's bytes; every other PII
/// finding is a false positive.
fn pii_quality(rs: &RuleSet, here: &Path) -> Result<()> {
    let rows = read_jsonl(&here.join("data/pii_faker.jsonl"))?;
    let detail = std::env::var("DETAIL").is_ok();
    // type -> (gold, true positives, false positives)
    let mut by: std::collections::BTreeMap<String, (usize, usize, usize)> = Default::default();
    let mut locales = std::collections::BTreeSet::new();
    let mut negatives = (0usize, 0usize);
    for r in &rows {
        let text = r["text"].as_str().unwrap_or("");
        locales.insert(r["locale"].as_str().unwrap_or("?").to_string());
        let gold: Vec<(String, usize, usize)> = r["entities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["type"].as_str().unwrap_or("").to_string(),
                            e["start"].as_u64().unwrap_or(0) as usize,
                            e["end"].as_u64().unwrap_or(0) as usize,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if gold.is_empty() {
            negatives.0 += 1;
        }
        for g in &gold {
            by.entry(g.0.clone()).or_default().0 += 1;
        }
        let found: Vec<_> = rs
            .scan(text)?
            .into_iter()
            .filter(|f| f.category == Category::Pii)
            .collect();
        let mut used = vec![false; gold.len()];
        let mut any_fp = false;
        for f in &found {
            let t = pii_type(&f.rule_id);
            let hit = gold.iter().enumerate().position(|(i, g)| {
                let ov = f.span.end.min(g.2).saturating_sub(f.span.start.max(g.1));
                !used[i] && g.0 == t && ov * 10 >= (g.2 - g.1) * 8
            });
            match hit {
                Some(i) => {
                    used[i] = true;
                    by.entry(t.to_string()).or_default().1 += 1;
                }
                None => {
                    any_fp = true;
                    by.entry(t.to_string()).or_default().2 += 1;
                    if detail {
                        eprintln!(
                            "PIIFP {} {:?} in {:?}",
                            f.rule_id,
                            text.get(f.span.clone()).unwrap_or(""),
                            text
                        );
                    }
                }
            }
        }
        if gold.is_empty() && any_fp {
            negatives.1 += 1;
        }
        if detail {
            for (i, g) in gold.iter().enumerate() {
                if !used[i] {
                    eprintln!(
                        "PIIMISS {} {:?} in {:?}",
                        g.0,
                        text.get(g.1..g.2).unwrap_or(""),
                        text
                    );
                }
            }
        }
    }
    println!(
        "## Structured PII (Faker corpus, {} lines, locales {})\n",
        rows.len(),
        locales.into_iter().collect::<Vec<_>>().join(", ")
    );
    println!("| type | entities | found | false positives | precision | recall | F1 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let (mut tg, mut tt, mut tf) = (0, 0, 0);
    for (t, (g, tp, fp)) in &by {
        let (p, r, f1) = prf(*g, *tp, *fp);
        println!("| {t} | {g} | {tp} | {fp} | {p:.3} | {r:.3} | {f1:.3} |");
        tg += g;
        tt += tp;
        tf += fp;
    }
    let (p, r, f1) = prf(tg, tt, tf);
    println!("| **all** | {tg} | {tt} | {tf} | {p:.3} | {r:.3} | {f1:.3} |\n");
    println!(
        "Lines without PII (order numbers, prices, versions, dates, addresses): {}, of which {} had a PII finding.\n",
        negatives.0, negatives.1
    );
    Ok(())
}

fn prf(gold: usize, tp: usize, fp: usize) -> (f64, f64, f64) {
    let p = if tp + fp == 0 {
        1.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let r = if gold == 0 {
        1.0
    } else {
        tp as f64 / gold as f64
    };
    let f1 = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f1)
}
