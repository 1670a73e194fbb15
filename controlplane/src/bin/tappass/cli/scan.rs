//! `tappass scan`: run the built-in detectors over files or stdin.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tappass_detectors::{AllowedValues, Categories, Category, EvidenceKey, Finding, RuleSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per finding for people.
    Text,
    /// One JSON object per finding per line.
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files to scan; `-` or none reads stdin.
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Only these categories (repeatable): pii, secret, injection, exfil.
    #[arg(long = "category", value_parser = parse_category)]
    pub categories: Vec<Category>,
    /// Also report the prompt-injection score per input, and count an input
    /// whose score reaches this threshold as a finding.
    #[arg(long)]
    pub injection_threshold: Option<f32>,
    /// File of values never reported as secrets, one per line (`#` starts
    /// a comment): keys reviewed as public, such as a web app's API key.
    #[arg(long)]
    pub allowlist: Option<PathBuf>,
}

fn parse_category(s: &str) -> Result<Category, String> {
    s.parse()
}

#[derive(Serialize)]
struct JsonFinding<'a> {
    path: &'a str,
    category: Category,
    rule: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<&'a str>,
    start: usize,
    end: usize,
    line: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<tappass_detectors::Decode>,
    evidence: &'a tappass_detectors::Evidence,
}

/// Run the scan; returns the exit code (0 nothing found, 1 findings).
pub fn run(args: &ScanArgs) -> Result<u8> {
    let cats = if args.categories.is_empty() {
        Categories::all()
    } else {
        let mut c = Categories::none();
        for k in &args.categories {
            c.set(*k, true);
        }
        c
    };
    let allowed = match &args.allowlist {
        Some(p) => AllowedValues::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        ),
        None => AllowedValues::default(),
    };
    let rules = RuleSet::builtin_allowing(&cats, EvidenceKey::random(), allowed)
        .context("building the built-in rule set")?;
    let inputs: Vec<(String, Vec<u8>)> = if args.paths.is_empty()
        || args.paths.iter().any(|p| p.as_os_str() == "-") && args.paths.len() == 1
    {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        vec![("<stdin>".to_string(), buf)]
    } else {
        let mut v = Vec::new();
        for p in &args.paths {
            let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            v.push((p.display().to_string(), data));
        }
        v
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut found = false;
    for (path, data) in &inputs {
        // Invalid UTF-8 is replaced; offsets then refer to the replaced text.
        let text = String::from_utf8_lossy(data);
        let findings = rules.scan(&text).context("scan failed")?;
        found |= !findings.is_empty();
        for f in &findings {
            write_finding(&mut out, args.format, path, &text, f)?;
        }
        if let Some(th) = args.injection_threshold {
            let s = rules
                .score_injection(&text)
                .context("injection scoring failed")?;
            if s.exceeds(th) {
                found = true;
            }
            match args.format {
                Format::Text => writeln!(
                    out,
                    "{path}: injection score {:.2} (threshold {th:.2}) families {:?}",
                    s.score,
                    s.families.keys().collect::<Vec<_>>()
                )?,
                Format::Jsonl => {
                    let v =
                        serde_json::json!({"path": path, "injection_score": s, "threshold": th});
                    writeln!(out, "{v}")?
                }
            }
        }
    }
    out.flush()?;
    Ok(if found { 1 } else { 0 })
}

fn write_finding(
    out: &mut impl Write,
    format: Format,
    path: &str,
    text: &str,
    f: &Finding,
) -> Result<()> {
    let line = text.as_bytes()[..f.span.start.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    match format {
        Format::Text => writeln!(
            out,
            "{path}:{line}: {cat}/{rule} bytes {s}..{e} score {score:.2} evidence {prev} ({len} chars, {hash}){enc}",
            cat = f.category,
            rule = f.rule_id,
            s = f.span.start,
            e = f.span.end,
            score = f.score,
            prev = f.evidence.preview,
            len = f.evidence.len,
            hash = f.evidence.hash,
            enc = f
                .encoding
                .map(|e| format!(" [inside {e:?} blob]"))
                .unwrap_or_default(),
        )?,
        Format::Jsonl => {
            let j = JsonFinding {
                path,
                category: f.category,
                rule: &f.rule_id,
                family: f.family.as_deref(),
                start: f.span.start,
                end: f.span.end,
                line,
                score: f.score,
                encoding: f.encoding,
                evidence: &f.evidence,
            };
            writeln!(out, "{}", serde_json::to_string(&j)?)?;
        }
    }
    Ok(())
}
