//! `tappass packs list|show`: the built-in compliance packs.

use anyhow::Result;
use clap::{Args, Subcommand};
use tappass_policies::compiler::builtin_content;

#[derive(Debug, Args)]
pub struct PacksArgs {
    #[command(subcommand)]
    pub command: PacksCommand,
}

#[derive(Debug, Subcommand)]
pub enum PacksCommand {
    /// List the compliance packs.
    List,
    /// Print a pack's YAML source.
    Show {
        /// Pack id (see `tappass packs list`).
        id: String,
    },
}

pub fn run(args: &PacksArgs) -> Result<u8> {
    let b = builtin_content()?;
    match &args.command {
        PacksCommand::List => {
            for (id, p) in &b.packs {
                println!(
                    "{id:<22} {}  [{}]",
                    p.doc.pack.title,
                    p.doc.pack.cites.join(" ")
                );
            }
            Ok(0)
        }
        PacksCommand::Show { id } => match b.packs.get(id) {
            Some(p) => {
                print!("{}", p.text);
                Ok(0)
            }
            None => {
                eprintln!(
                    "tappass: unknown pack '{id}' (packs: {})",
                    b.packs.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                Ok(1)
            }
        },
    }
}
