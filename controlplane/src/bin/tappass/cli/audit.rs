//! `tappass audit`: verify, read and export a gateway's audit WAL offline;
//! the fleet's chain heads and audit key rotation through a control plane.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tappass_audit::chain::SealedRow;
use tappass_audit::verify::{verify, VerifyOptions};
use tappass_audit::{AuditKey, AuditRecord, AuditWal, Jwks, WalConfig, WalReader};

use super::control::ControlArgs;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every link and signature; report the first bad row (exit 1).
    Verify(VerifyArgs),
    /// Print the latest rows, optionally following new ones.
    Tail(TailArgs),
    /// Print one call's row with its step decisions.
    Show(ShowArgs),
    /// Export rows as JSON lines (for a SIEM or a log shipper).
    Export(ExportArgs),
    /// Replace a call's row content with a signed tombstone (right to
    /// erasure). The gateway writing this WAL must be stopped.
    Erase(EraseArgs),
    /// The chain head each gateway last reported to the control plane
    /// (compare with `verify --expect-head SEQ:HASH`).
    Heads(HeadsArgs),
    /// Ask a gateway (through the control plane) to switch to a new audit
    /// signing key; it does so at its next report.
    RotateKey(RotateKeyArgs),
    /// Let a gateway whose audit keys were lost enroll new ones at its next
    /// report (its earlier keys stay published).
    Reenroll(ReenrollArgs),
}

#[derive(Debug, Args)]
pub struct HeadsArgs {
    /// Only this gateway.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The gateway id (as in its audit rows).
    #[arg(long)]
    pub gateway: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct ReenrollArgs {
    #[arg(long)]
    pub gateway: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The audit directory (holding `wal/`).
    #[arg(long)]
    pub wal: PathBuf,
    /// The published public keys: a JWKS file or an http(s) URL, e.g. the
    /// control plane's fleet key set `http://HOST:18001/v1/audit/jwks`.
    /// Default: the `jwks.json` beside the WAL (for an independent check,
    /// use the published key set).
    #[arg(long)]
    pub jwks: Option<String>,
    /// The chain head the log must reach, as `SEQ:HASH` (from the gateway's
    /// `/audit/head` or the control plane's list of chain heads).
    #[arg(long, value_name = "SEQ:HASH")]
    pub expect_head: Option<String>,
    /// Fail when rows after the last signature exist.
    #[arg(long)]
    pub require_signed_tail: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct Filter {
    /// Only this agent's rows.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only rows with this decision.
    #[arg(long, value_enum)]
    pub decision: Option<DecisionArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
    Error,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(long)]
    pub wal: PathBuf,
    /// How many of the latest rows.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub lines: usize,
    /// Keep printing new rows as they are written.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub filter: Filter,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The call's trace id (the `x-tappass-request-id` response header).
    pub trace_id: String,
    #[arg(long)]
    pub wal: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub wal: PathBuf,
    /// Only `jsonl` is supported.
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// Rows that ended at or after this: a duration ago (`30m`, `2h`,
    /// `7d`) or milliseconds since the epoch.
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub filter: Filter,
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    #[arg(long)]
    pub wal: PathBuf,
    /// The call's trace id.
    #[arg(long)]
    pub trace: String,
    /// Why (recorded, signed, in the tombstone).
    #[arg(long)]
    pub reason: String,
    /// The WAL's signing key. Default: `<wal>/signing.key`.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

pub fn run(args: &AuditArgs) -> Result<u8> {
    match &args.command {
        AuditCommand::Verify(a) => run_verify(a),
        AuditCommand::Tail(a) => run_tail(a),
        AuditCommand::Show(a) => run_show(a),
        AuditCommand::Export(a) => run_export(a),
        AuditCommand::Erase(a) => run_erase(a),
        AuditCommand::Heads(a) => run_heads(a),
        AuditCommand::RotateKey(a) => run_rotate_key(a),
        AuditCommand::Reenroll(a) => run_reenroll(a),
    }
}

/// Path segment for a gateway id (ids are letters, digits, `.`, `_`, `-`,
/// `:`; anything else is refused by the control plane).
fn gateway_path(id: &str) -> Result<String> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        bail!("gateway id {id:?} is invalid: letters, digits, `.`, `_`, `-`, `:`");
    }
    Ok(format!("/v1/gateways/{id}"))
}

fn print_gateway(g: &Value) {
    let head = &g["head"];
    let (seq, hash) = if head.is_object() {
        (
            head["seq"].to_string(),
            head["hash"].as_str().unwrap_or("").to_string(),
        )
    } else {
        ("-".into(), "-".into())
    };
    println!("gateway {}", g["gateway_id"].as_str().unwrap_or(""));
    println!("  head        {seq}:{hash}");
    if head.is_object() {
        println!(
            "  signed      through row {}",
            head["signed_seq"].as_u64().unwrap_or(0)
        );
        println!(
            "  reported at {}",
            fmt_time(head["reported_at_ms"].as_u64().unwrap_or(0))
        );
    }
    let pending = g["requested_key_generation"].as_u64() > g["key_generation"].as_u64();
    println!(
        "  key         {} (generation {}{})",
        g["key_id"].as_str().unwrap_or(""),
        g["key_generation"],
        if pending { ", rotation requested" } else { "" }
    );
    let kids: Vec<&str> = g["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    println!("  published   {}", kids.join(" "));
    if g["reenroll"].as_bool() == Some(true) {
        println!("  re-enrollment open: the next report may enroll new keys");
    }
}

fn run_heads(a: &HeadsArgs) -> Result<u8> {
    let client = a.control.client()?;
    let v = match &a.gateway {
        Some(id) => Value::Array(vec![client.get(&gateway_path(id)?)?]),
        None => client.get("/v1/gateways")?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no gateway has reported its audit chain");
    }
    for g in &list {
        print_gateway(g);
    }
    Ok(0)
}

fn run_rotate_key(a: &RotateKeyArgs) -> Result<u8> {
    let client = a.control.client()?;
    let v = client.post(
        &format!("{}/audit-key/rotate", gateway_path(&a.gateway)?),
        json!({}),
    )?;
    println!(
        "gateway {} will switch from key {} to a new key (generation {}) at its next report",
        a.gateway,
        v["key_id"].as_str().unwrap_or(""),
        v["requested_key_generation"]
    );
    Ok(0)
}

fn run_reenroll(a: &ReenrollArgs) -> Result<u8> {
    let client = a.control.client()?;
    client.post(
        &format!("{}/reenroll", gateway_path(&a.gateway)?),
        json!({}),
    )?;
    println!(
        "gateway {}: its next report may enroll new audit keys",
        a.gateway
    );
    Ok(0)
}

fn load_jwks(wal: &Path, source: Option<&str>) -> Result<Jwks> {
    let text = match source {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            let resp = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?
                .get(url)
                .send()
                .with_context(|| format!("fetching {url}"))?;
            if !resp.status().is_success() {
                bail!("fetching {url}: HTTP {}", resp.status());
            }
            resp.text()?
        }
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => {
            let path = wal.join("jwks.json");
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading {} (pass --jwks with the published keys)",
                    path.display()
                )
            })?
        }
    };
    let jwks = Jwks::from_json(&text)?;
    if jwks.is_empty() {
        bail!("the key set holds no Ed25519 key");
    }
    Ok(jwks)
}

fn run_verify(a: &VerifyArgs) -> Result<u8> {
    let jwks = load_jwks(&a.wal, a.jwks.as_deref())?;
    let expect_head = match &a.expect_head {
        None => None,
        Some(s) => {
            let (seq, hash) = s.split_once(':').context("--expect-head takes SEQ:HASH")?;
            Some((
                seq.parse().context("--expect-head: SEQ is not a number")?,
                hash.to_string(),
            ))
        }
    };
    let reader = WalReader::open(&a.wal)?;
    let opts = VerifyOptions {
        require_signed_tail: a.require_signed_tail,
        expect_head,
    };
    let report = verify(&reader, &jwks, &opts)?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            let range = match (report.first_seq, report.last_seq) {
                (Some(f), Some(l)) => format!("rows {f}..={l}"),
                _ => "no rows".into(),
            };
            match &report.failure {
                None => {
                    // The head as `SEQ:HASH`, the form `tappass audit heads`
                    // shows and `--expect-head` takes.
                    let head = match (report.last_seq, &report.head_hash) {
                        (Some(seq), Some(hash)) => format!("{seq}:{hash}"),
                        _ => "-".into(),
                    };
                    println!(
                        "ok: {range}, {} rows, {} erased, {} checkpoints, head {head}",
                        report.rows, report.erased, report.checkpoints,
                    );
                    if report.unsigned_tail > 0 {
                        println!(
                            "note: the last {} rows are chained but not yet covered by a signed checkpoint",
                            report.unsigned_tail
                        );
                    }
                }
                Some(f) => println!("FAILED at row {}: {}", f.seq, f.reason),
            }
        }
    }
    Ok(if report.ok() { 0 } else { 1 })
}

fn record_of(row: &SealedRow) -> Option<AuditRecord> {
    row.body
        .as_ref()
        .and_then(|b| serde_json::from_str(b.get()).ok())
}

fn matches(filter: &Filter, rec: &AuditRecord) -> bool {
    let decision = match filter.decision {
        None => true,
        Some(DecisionArg::Allow) => rec.decision == tappass_audit::Decision::Allow,
        Some(DecisionArg::Deny) => rec.decision == tappass_audit::Decision::Deny,
        Some(DecisionArg::Error) => rec.decision == tappass_audit::Decision::Error,
    };
    decision
        && filter
            .agent
            .as_ref()
            .is_none_or(|a| rec.agent_id.as_ref() == Some(a))
}

fn fmt_time(ms: u64) -> String {
    // UTC date and time from epoch milliseconds, without a date library.
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

fn line(row: &SealedRow) -> String {
    match record_of(row) {
        None => format!("{:>8}  (erased)", row.seq),
        Some(r) => format!(
            "{:>8}  {}  {}  {}  {}  {}  {}  {}{}",
            row.seq,
            fmt_time(r.ended_at_ms),
            r.trace_id,
            r.agent_id.as_deref().unwrap_or("-"),
            r.endpoint,
            r.model.as_deref().unwrap_or("-"),
            r.status,
            serde_json::to_value(r.decision)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.reason.map(|x| format!(" ({x})")).unwrap_or_default(),
        ),
    }
}

fn run_tail(a: &TailArgs) -> Result<u8> {
    let reader = WalReader::open(&a.wal)?;
    let mut last = Vec::new();
    let mut next_seq = 0;
    for row in reader.rows(0)? {
        let row = row?;
        next_seq = row.seq + 1;
        if record_of(&row).is_none_or(|r| matches(&a.filter, &r)) {
            last.push(line(&row));
            if last.len() > a.lines {
                last.remove(0);
            }
        }
    }
    drop(reader);
    for l in &last {
        println!("{l}");
    }
    if !a.follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        // A read-only open sees the log as of the moment it opens.
        let reader = WalReader::open(&a.wal)?;
        for row in reader.rows(next_seq)? {
            let row = row?;
            next_seq = row.seq + 1;
            if record_of(&row).is_none_or(|r| matches(&a.filter, &r)) {
                println!("{}", line(&row));
            }
        }
    }
}

fn find_trace(reader: &WalReader, trace: &str) -> Result<Option<SealedRow>> {
    for row in reader.rows(0)? {
        let row = row?;
        if record_of(&row).is_some_and(|r| r.trace_id == trace) {
            return Ok(Some(row));
        }
    }
    Ok(None)
}

fn run_show(a: &ShowArgs) -> Result<u8> {
    let reader = WalReader::open(&a.wal)?;
    let Some(row) = find_trace(&reader, &a.trace_id)? else {
        eprintln!("no row for trace {}", a.trace_id);
        return Ok(1);
    };
    let Some(r) = record_of(&row) else {
        println!("row {}: erased", row.seq);
        return Ok(0);
    };
    println!(
        "row        {}  (hash {}, prev {})",
        row.seq, row.hash, row.prev_hash
    );
    println!("trace      {}", r.trace_id);
    println!("gateway    {}", r.gateway_id);
    println!(
        "time       {} .. {}",
        fmt_time(r.started_at_ms),
        fmt_time(r.ended_at_ms)
    );
    println!("agent      {}", r.agent_id.as_deref().unwrap_or("-"));
    println!(
        "call       {} ({}{})",
        r.endpoint,
        r.wire_format,
        if r.stream { ", stream" } else { "" }
    );
    println!(
        "model      {} via {}",
        r.model.as_deref().unwrap_or("-"),
        r.provider.as_deref().unwrap_or("-")
    );
    println!(
        "outcome    {} {:?}{}",
        r.status,
        r.decision,
        r.reason
            .as_deref()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default()
    );
    if let Some(u) = r.usage {
        println!(
            "usage      {} in, {} out ({} cached)",
            u.input_tokens, u.output_tokens, u.cached_input_tokens
        );
    }
    println!(
        "latency    {} ms total{}{}",
        r.latency.total_ms,
        r.latency
            .upstream_ms
            .map(|x| format!(", {x} ms upstream"))
            .unwrap_or_default(),
        r.latency
            .ttft_ms
            .map(|x| format!(", {x} ms to first byte"))
            .unwrap_or_default()
    );
    if let Some(b) = r.bytes_released_before_block {
        println!("released   {b} bytes before the stream ended");
    }
    println!("steps");
    for s in &r.step_decisions {
        println!(
            "  {:<18} {:<6} {:<9} {}  [{}]",
            s.step, s.decision, s.aspect, s.evidence, s.provenance
        );
    }
    Ok(0)
}

fn parse_since(s: &str) -> Result<u64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| {
        format!("--since `{s}`: expected e.g. 30m, 2h, 7d or epoch milliseconds")
    })?;
    let ms = match unit {
        "" => return Ok(n),
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => bail!("--since `{s}`: unit must be s, m, h or d"),
    };
    Ok(now.saturating_sub(ms))
}

fn run_export(a: &ExportArgs) -> Result<u8> {
    if a.format != "jsonl" {
        bail!("--format: only jsonl is supported");
    }
    let since = a.since.as_deref().map(parse_since).transpose()?;
    let reader = WalReader::open(&a.wal)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    use std::io::Write;
    for row in reader.rows(0)? {
        let row = row?;
        let rec = record_of(&row);
        if let Some(r) = &rec {
            if since.is_some_and(|t| r.ended_at_ms < t) || !matches(&a.filter, r) {
                continue;
            }
        }
        let doc = json!({
            "seq": row.seq,
            "hash": row.hash,
            "prev_hash": row.prev_hash,
            "erased": row.erased.is_some(),
            "record": rec.map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
        });
        writeln!(out, "{doc}")?;
    }
    out.flush()?;
    Ok(0)
}

fn run_erase(a: &EraseArgs) -> Result<u8> {
    let (seq, gateway_id) = {
        let reader = WalReader::open(&a.wal)?;
        let Some(row) = find_trace(&reader, &a.trace)? else {
            eprintln!("no row for trace {}", a.trace);
            return Ok(1);
        };
        let gateway = record_of(&row).map(|r| r.gateway_id).unwrap_or_default();
        (row.seq, gateway)
    };
    let key_path = a.key.clone().unwrap_or_else(|| a.wal.join("signing.key"));
    if !key_path.exists() {
        bail!("signing key {} not found (pass --key)", key_path.display());
    }
    let key = AuditKey::load_or_create(&key_path)?;
    let wal = AuditWal::open(WalConfig::new(&a.wal, &gateway_id), key)
        .context("opening the WAL for writing (is the gateway still running?)")?;
    wal.erase_blocking(seq, &a.reason)?;
    wal.close();
    println!("erased row {seq}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_utc() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(1_763_762_400_123), "2025-11-21T22:00:00.123Z");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn since_parses_durations_and_epochs() {
        assert_eq!(parse_since("1700000000000").unwrap(), 1_700_000_000_000);
        assert!(parse_since("2h").unwrap() > 1_700_000_000_000);
        assert!(parse_since("2y").is_err());
        assert!(parse_since("h").is_err());
    }
}
