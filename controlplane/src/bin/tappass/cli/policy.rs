//! `tappass policy compile|preview|verify`: the policy compiler's CLI.
//! Reading the source tree and writing files happen here; the compiler
//! (`tappass-policies`) is pure.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tappass_policies::{
    compile, preview, sign, verify, CompileOptions, CompiledPolicy, PolicySource, PublicKeyFile,
    SecretKeyFile, SourceFile, MAX_SOURCE_BYTES,
};

use super::control::ControlArgs;

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Compile an agent's policy (org → project → agent) to a Compiled Policy
    /// (canonical JSON; signed when --sign-key is given).
    Compile(CompileArgs),
    /// Print every effective rule of an agent with its because-trail.
    Preview(PreviewArgs),
    /// Verify a signed Compiled Policy against a public key.
    Verify(VerifyArgs),
    /// Store policy files (or a compliance pack) at a level of a running
    /// control plane; every agent is recompiled, signed and pushed.
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// `org`, `project=NAME` or `agent=NAME`.
    #[arg(long)]
    pub level: String,
    /// A policy file (added or replaced at the level) or a directory (its
    /// policy files become the level's whole content).
    #[arg(required_unless_present = "pack", conflicts_with = "pack")]
    pub path: Option<PathBuf>,
    /// A built-in compliance pack to apply at the level instead of files.
    #[arg(long)]
    pub pack: Option<String>,
    /// With --pack: remove the pack from the level.
    #[arg(long, requires = "pack")]
    pub remove: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    /// Policy directory (org/, projects/<name>/, agents/<name>/).
    pub dir: PathBuf,
    /// The agent to compile.
    #[arg(long)]
    pub agent: String,
    /// Secret key file (`tappass keys generate`); signs the output.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Policy version to stamp (monotonic per agent).
    #[arg(long)]
    pub policy_version: Option<u64>,
    /// A previously compiled (or signed) policy of this agent: the new version
    /// is its version + 1 unless --policy-version is given (which must be larger).
    #[arg(long)]
    pub previous: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Policy directory; without it, the sources stored in the control
    /// plane are compiled.
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub agent: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Signed Compiled Policy (envelope JSON).
    pub file: PathBuf,
    /// Public key file (`tappass keys generate` writes FILE.pub).
    #[arg(long)]
    pub public_key: PathBuf,
    /// Reject policies whose version is not above this one.
    #[arg(long)]
    pub min_version: Option<u64>,
}

/// Read a policy directory into a [`PolicySource`] (policy files only).
pub fn read_source(dir: &Path) -> Result<PolicySource> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files, 0)?;
    Ok(PolicySource::new(files))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>, depth: usize) -> Result<()> {
    if depth > 8 {
        bail!("{}: directory tree too deep", dir.display());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        let meta =
            std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if meta.is_dir() {
            walk(root, &p, out, depth + 1)?;
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .replace('\\', "/");
        if !meta.is_file() || !PolicySource::is_policy_file(&rel) {
            continue;
        }
        if meta.len() as usize > MAX_SOURCE_BYTES {
            bail!(
                "{rel}: file is {} bytes, larger than the limit of {MAX_SOURCE_BYTES} bytes",
                meta.len()
            );
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("{rel}: not UTF-8 text"))?;
        out.push(SourceFile { path: rel, text });
    }
    Ok(())
}

/// A compiled policy from a file that holds either a bare policy or a signed envelope.
pub fn read_policy_file(path: &Path) -> Result<CompiledPolicy> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let payload = if v.get("payload").is_some() && v.get("signature").is_some() {
        v["payload"].clone()
    } else {
        v
    };
    serde_json::from_value(payload)
        .with_context(|| format!("{}: not a compiled policy", path.display()))
}

fn write_out(out: Option<&Path>, text: &str) -> Result<()> {
    match out {
        Some(p) => std::fs::write(p, format!("{text}\n"))
            .with_context(|| format!("writing {}", p.display())),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

pub fn run(args: &PolicyArgs) -> Result<u8> {
    match &args.command {
        PolicyCommand::Compile(a) => {
            let src = read_source(&a.dir)?;
            let previous = a
                .previous
                .as_deref()
                .map(read_policy_file)
                .transpose()?
                .map(|p| p.identity.policy_version);
            let version = match (a.policy_version, previous) {
                (Some(v), Some(prev)) if v <= prev => {
                    bail!("--policy-version {v} is not above the previous version {prev}")
                }
                (Some(v), _) => v,
                (None, Some(prev)) => prev + 1,
                (None, None) => 1,
            };
            let key = match &a.sign_key {
                Some(p) => Some(SecretKeyFile::parse(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )?),
                None => None,
            };
            let compiled = match compile(
                &src,
                &a.agent,
                &CompileOptions {
                    policy_version: version,
                },
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tappass: policy error: {e}");
                    return Ok(1);
                }
            };
            let text = match key {
                Some(k) => sign(&compiled.policy, &k)?.to_canonical_json()?,
                None => compiled.policy.to_canonical_json()?,
            };
            write_out(a.out.as_deref(), &text)?;
            Ok(0)
        }
        PolicyCommand::Apply(a) => apply(a),
        PolicyCommand::Preview(a) => {
            let Some(dir) = &a.dir else {
                let v = a
                    .control
                    .client()?
                    .get(&format!("/v1/agents/{}/preview", a.agent))?;
                print!("{}", v["preview"].as_str().unwrap_or(""));
                return Ok(0);
            };
            let src = read_source(dir)?;
            match compile(&src, &a.agent, &CompileOptions::default()) {
                Ok(c) => {
                    print!("{}", preview(&c));
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("tappass: policy error: {e}");
                    Ok(1)
                }
            }
        }
        PolicyCommand::Verify(a) => {
            let text = std::fs::read_to_string(&a.file)
                .with_context(|| format!("reading {}", a.file.display()))?;
            let key = PublicKeyFile::parse(
                &std::fs::read_to_string(&a.public_key)
                    .with_context(|| format!("reading {}", a.public_key.display()))?,
            )?;
            match verify(&text, std::slice::from_ref(&key), a.min_version) {
                Ok(p) => {
                    println!(
                        "ok: agent {} version {} signed by key {}",
                        p.identity.agent, p.identity.policy_version, key.key_id
                    );
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("tappass: verify failed: {e}");
                    Ok(1)
                }
            }
        }
    }
}

fn apply(a: &ApplyArgs) -> Result<u8> {
    let client = a.control.client()?;
    let report = if let Some(pack) = &a.pack {
        client.put(
            "/v1/policy/packs",
            json!({"level": a.level, "pack": pack, "remove": a.remove}),
        )?
    } else {
        let path = a.path.as_deref().unwrap_or(Path::new("."));
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let (files, replace) = if meta.is_dir() {
            let mut files = Vec::new();
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for p in entries {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with('.') || !p.is_file() || !PolicySource::is_policy_file(name) {
                    continue;
                }
                files.push(read_one(&p)?);
            }
            if files.is_empty() {
                bail!("{}: no .yaml, .yml or .rego files", path.display());
            }
            (files, true)
        } else {
            (vec![read_one(path)?], false)
        };
        client.put(
            "/v1/policy/sources",
            json!({"level": a.level, "files": files, "replace": replace}),
        )?
    };
    let changed = report["changed"].as_object().cloned().unwrap_or_default();
    if changed.is_empty() {
        println!("applied at {}: no agent's policy changed", a.level);
    } else {
        let list: Vec<String> = changed.iter().map(|(k, v)| format!("{k} v{v}")).collect();
        println!("applied at {}: pushed {}", a.level, list.join(", "));
    }
    Ok(0)
}

fn read_one(p: &Path) -> Result<serde_json::Value> {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name", p.display()))?;
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(json!({"name": name, "text": text}))
}
