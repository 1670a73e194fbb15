//! `tappass keys generate`: an Ed25519 key pair for signing policies.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tappass_policies::keypair_from_seed;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a signing key pair: FILE (secret, mode 0600) and FILE.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make a new token-signing key active on a running control plane; the
    /// old key stays in the JWKS until every token it signed has expired.
    Rotate {
        #[command(flatten)]
        control: super::control::ControlArgs,
    },
}

pub fn run(args: &KeysArgs) -> Result<u8> {
    match &args.command {
        KeysCommand::Rotate { control } => {
            let v = control
                .client()?
                .post("/v1/token-keys/rotate", serde_json::json!({}))?;
            for k in v.as_array().into_iter().flatten() {
                let kid = k["kid"].as_str().unwrap_or("");
                if k["active"].as_bool() == Some(true) {
                    println!("active   {kid}");
                } else if let Some(until) = k["published_until"].as_i64() {
                    println!("retired  {kid} (in the JWKS until {until})");
                }
            }
            Ok(0)
        }
        KeysCommand::Generate { out, force } => {
            let mut pub_path = out.clone().into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            if !force && (out.exists() || pub_path.exists()) {
                bail!(
                    "{} or {} exists (use --force to overwrite)",
                    out.display(),
                    pub_path.display()
                );
            }
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
            let (secret, public) = keypair_from_seed(seed);
            write_secret(out, &(serde_json::to_string_pretty(&secret)? + "\n"))?;
            std::fs::write(&pub_path, serde_json::to_string_pretty(&public)? + "\n")
                .with_context(|| format!("writing {}", pub_path.display()))?;
            println!(
                "key id {}: secret {}, public {}",
                public.key_id,
                out.display(),
                pub_path.display()
            );
            Ok(0)
        }
    }
}

fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
