//! Quality and speed measurement of `tappass-detectors`.
//!
//! Usage: `tappass-bench-detectors [quality|speed|all] [--corpora DIR]`
//! (run in release mode; see `run.sh` beside this crate, which also fetches
//! the registry corpora). Prints Markdown tables.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use tappass_detectors::{testgen, Categories, Category, EvidenceKey, RuleSet};

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
}

fn secrets_quality(rs: &RuleSet, shared: &Path) -> Result<()> {
    println!("## Secrets\n");
    println!("| corpus | positives | detected | recall | negatives | false positives | FP rate |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let is_secret = |t: &str| -> Result<bool> {
        Ok(rs.scan(t)?.iter().any(|f| f.category == Category::Secret))
    };
    // gitleaks literal samples
    let rows = read_jsonl(&shared.join("secrets/gitleaks-samples.jsonl"))?;
    let (mut p, mut tp, mut n, mut fp, mut skipped) = (0, 0, 0, 0, 0);
    let mut missed = Vec::new();
    for r in &rows {
        let text = r["text"].as_str().unwrap_or("");
        if r["expect"] == "secret" {
            if is_fragment(text) {
                skipped += 1;
                continue;
            }
            p += 1;
            if is_secret(text)? {
                tp += 1;
            } else {
                missed.push(format!("{}: {:.80}", r["rule"], text));
            }
        } else {
            n += 1;
            if is_secret(text)? {
                fp += 1;
            }
        }
    }
    row("gitleaks samples (literal positives)", p, tp, n, fp);
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
        } else {
            n2 += 1;
            fp2 += found as usize;
        }
    }
    row("detect-secrets plugin cases", p2, tp2, n2, fp2);
    // generated from the gitleaks catalog regexes
    let toml = std::fs::read_to_string(shared.join("secrets/gitleaks.toml"))?;
    let (mut p3, mut tp3, mut unparsable) = (0, 0, 0);
    let mut missed_rules = Vec::new();
    for (id, re) in gitleaks_regexes(&toml) {
        let mut any = false;
        let mut hits = 0;
        let mut tried = 0;
        for seed in 0..5u64 {
            let Some(sample) = testgen::generate(&re, false, seed) else {
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
            missed_rules.push(id);
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
        "\n{skipped} gitleaks \"secret\" samples are generator fragments (regex text, lengths, keywords) and were excluded; \
         {unparsable} catalog regexes could not be parsed by the generator.\n"
    );
    if !missed.is_empty() {
        println!("Missed literal samples: {}\n", missed.len());
        for m in missed.iter().take(20) {
            println!("- `{}`", m.replace('`', "'").replace('\n', " "));
        }
        println!();
    }
    if !missed_rules.is_empty() {
        println!(
            "Catalog rules with no generated sample detected: {}\n",
            missed_rules.join(", ")
        );
    }
    Ok(())
}

fn gitleaks_regexes(toml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut id = String::new();
    for line in toml.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("id = ") {
            id = v.trim_matches('"').to_string();
        } else if let Some(v) = l.strip_prefix("regex = '''") {
            if let Some(re) = v.strip_suffix("'''") {
                if !id.is_empty() {
                    out.push((std::mem::take(&mut id), re.to_string()));
                }
            }
        }
    }
    out
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
        for i in &ins {
            let text = t.replace("<INSTRUCTION>", i["instruction"].as_str().unwrap_or(""));
            n += 1;
            let ok = rs.score_injection(&text)?.exceeds(th);
            hit += ok as usize;
            let e = by_type.entry(ty.clone()).or_default();
            e.0 += 1;
            e.1 += ok as usize;
        }
    }
    let benign = benign_prompts(here, corpora)?;
    let mut bfp = 0;
    for b in &benign {
        if rs.score_injection(b)?.exceeds(th) {
            bfp += 1;
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
    println!(
        "Per jailbreak type (template × instruction):\n\n| type | n | flagged |\n|---|---:|---:|"
    );
    for (k, (a, b)) in by_type {
        println!("| {k} | {a} | {b} |");
    }
    println!();
    Ok(())
}

fn speed(rs: &RuleSet, shared: &Path, here: &Path) -> Result<()> {
    // Mixed text: benign prompts, secret samples, PII sentences, repeated to 8 MiB.
    let mut parts: Vec<String> = std::fs::read_to_string(here.join("data/benign_prompts.txt"))?
        .lines()
        .map(str::to_string)
        .collect();
    for r in read_jsonl(&shared.join("secrets/gitleaks-samples.jsonl"))? {
        parts.push(r["text"].as_str().unwrap_or("").to_string());
    }
    parts.push("Contact jane.doe@example.com, +44 20 7946 0958, card 4111 1111 1111 1111.".into());
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 8 << 20 {
        text.push_str(&parts[i % parts.len()]);
        text.push('\n');
        i += 1;
    }
    let blocks: Vec<&str> = {
        let mut v = Vec::new();
        let mut s = 0;
        while s < text.len() {
            let mut e = (s + 65536).min(text.len());
            while !text.is_char_boundary(e) {
                e -= 1;
            }
            v.push(&text[s..e]);
            s = e;
        }
        v
    };
    let mb = text.len() as f64 / 1e6;
    let reps = 3;
    let best = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut b = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            f()?;
            b = b.min(t.elapsed().as_secs_f64());
        }
        Ok(b)
    };
    let raw = best(&mut || {
        for b in &blocks {
            rs.raw_hyperscan_count(b.as_bytes())?;
        }
        Ok(())
    })?;
    let mut nfind = 0;
    let full = best(&mut || {
        nfind = 0;
        for b in &blocks {
            nfind += rs.scan(b)?.len();
        }
        Ok(())
    })?;
    let stream64 = best(&mut || {
        for b in &blocks {
            let mut s = rs.stream_scanner()?;
            let mut p = 0;
            while p < b.len() {
                let mut e = (p + 64).min(b.len());
                while !b.is_char_boundary(e) {
                    e -= 1;
                }
                s.feed(&b[p..e])?;
                p = e;
            }
            s.finish()?;
        }
        Ok(())
    })?;
    let chunks = text.len() as f64 / 64.0;
    println!("## Speed (one core, {mb:.1} MB mixed text in 64 KiB blocks, best of {reps})\n");
    println!("| mode | MB/s | ratio to raw |\n|---|---:|---:|");
    println!(
        "| raw Hyperscan scan of the same database (no confirmation) | {:.0} | 1.00 |",
        mb / raw
    );
    println!(
        "| full rule set: scan + confirm + validate + merge ({nfind} findings) | {:.0} | {:.2} |",
        mb / full,
        raw / full
    );
    println!(
        "| streaming, 64-byte chunks | {:.0} | {:.2} |",
        mb / stream64,
        raw / stream64
    );
    println!(
        "\nStreaming overhead: {:.0} ns per 64-byte chunk over the block scan.\n",
        (stream64 - full) * 1e9 / chunks
    );
    Ok(())
}
