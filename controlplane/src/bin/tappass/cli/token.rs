//! `tappass token`: capability-token keys and minting. (A running control
//! plane mints and revokes tokens through its admin API; these commands work
//! offline with a key file.)

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tappass_keys::SigningKeyPair;
use tappass_tokens::{mint, Audience, Claims, Scope};

use super::control::ControlArgs;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token-signing key: FILE (secret seed, mode 0600) and
    /// FILE.jwks.json (the key set gateways trust).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint a capability token for an agent: from a running control plane
    /// (--data-dir / --control), or offline with --key.
    Mint(Box<MintArgs>),
    /// Revoke a token by its `jti` on a running control plane.
    Revoke {
        jti: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// The agent (`sub`).
    #[arg(long)]
    pub agent: String,
    /// Offline: the signing key file (from `tappass token keygen`).
    #[arg(long, conflicts_with_all = ["data_dir", "control"])]
    pub key: Option<PathBuf>,
    /// Lifetime in seconds (default 300).
    #[arg(long)]
    pub ttl: Option<i64>,
    #[arg(long, default_value = "tappass-gateway")]
    pub aud: String,
    #[arg(long, default_value = "tappass-control")]
    pub iss: String,
    #[arg(long)]
    pub org: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub sandbox: Option<String>,
    #[arg(long)]
    pub tier: Option<String>,
    /// Model patterns the token may call (repeatable; none: any model).
    #[arg(long = "model")]
    pub models: Vec<String>,
    #[arg(long)]
    pub policy_version: Option<u64>,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub fn run(args: &TokenArgs) -> Result<u8> {
    match &args.command {
        TokenCommand::Keygen { out } => {
            if out.exists() {
                bail!("{} exists", out.display());
            }
            let key = SigningKeyPair::load_or_create(out)?;
            let mut jwks_path = out.clone().into_os_string();
            jwks_path.push(".jwks.json");
            std::fs::write(&jwks_path, key.jwks().to_string() + "\n")
                .with_context(|| format!("writing {}", PathBuf::from(&jwks_path).display()))?;
            println!(
                "key id {}: secret {}, key set {}",
                key.kid(),
                out.display(),
                PathBuf::from(jwks_path).display()
            );
            Ok(0)
        }
        TokenCommand::Revoke { jti, control } => {
            let v = control
                .client()?
                .post("/v1/revocations/tokens", json!({ "jti": jti }))?;
            println!(
                "token {jti} revoked (pushed until {})",
                v["expires_at"].as_i64().unwrap_or(0)
            );
            Ok(0)
        }
        TokenCommand::Mint(a) => {
            let Some(key_path) = &a.key else {
                let v = a.control.client()?.post(
                    "/v1/tokens",
                    json!({
                        "agent": a.agent,
                        "ttl_seconds": a.ttl,
                        "sandbox": a.sandbox,
                        "models": a.models,
                    }),
                )?;
                eprintln!(
                    "token {} for agent {} (key {}, expires {})",
                    v["jti"].as_str().unwrap_or(""),
                    a.agent,
                    v["kid"].as_str().unwrap_or(""),
                    v["exp"].as_i64().unwrap_or(0)
                );
                println!("{}", v["token"].as_str().unwrap_or(""));
                return Ok(0);
            };
            let ttl = a.ttl.unwrap_or(300);
            if ttl <= 0 {
                bail!("--ttl must be positive");
            }
            if !key_path.exists() {
                bail!(
                    "key file {} not found (create one with `tappass token keygen`)",
                    key_path.display()
                );
            }
            let key = SigningKeyPair::load_or_create(key_path)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs() as i64;
            let jti: [u8; 12] = rand_bytes()?;
            let claims = Claims {
                iss: a.iss.clone(),
                aud: Audience::One(a.aud.clone()),
                sub: a.agent.clone(),
                org: a.org.clone(),
                project: a.project.clone(),
                sandbox: a.sandbox.clone(),
                tier: a.tier.clone(),
                scope: Scope {
                    models: a.models.clone(),
                    ..Scope::default()
                },
                policy_version: a.policy_version,
                iat: now,
                nbf: None,
                exp: now + ttl,
                jti: format!("tok-{}", hex_string(&jti)),
            };
            println!("{}", mint(&claims, &key));
            Ok(0)
        }
    }
}

fn rand_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(b)
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
