//! `keys add|import|list|show`: cpc-cli compatible key files.

use super::{GlobalArgs, output::print_json};
use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Generate a new key.
    Add {
        /// Key name (file NAME.json).
        name: String,
    },
    /// Import a hex private key.
    Import {
        /// Key name (file NAME.json).
        name: String,
        /// 64 hex characters. Prefer `-` to read it from stdin and keep it out of shell history.
        private_key: String,
    },
    /// List keys.
    List,
    /// Show one key.
    Show {
        /// Key name.
        name: String,
        /// Also print the private key.
        #[arg(long)]
        show_private: bool,
    },
}

pub(crate) fn run(g: &GlobalArgs, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let ks = g.keystore();
    match cmd {
        KeysCommand::Add { name } => {
            let key = ks.add(&name)?;
            print_key(g, &key, false, "created")?;
        }
        KeysCommand::Import { name, private_key } => {
            let hex = if private_key == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the private key from stdin")?;
                line.trim().to_owned()
            } else {
                private_key
            };
            let key = ks.import(&name, &hex)?;
            print_key(g, &key, false, "imported")?;
        }
        KeysCommand::List => {
            let mut rows = Vec::new();
            for entry in ks.list()? {
                match entry {
                    Ok(k) => rows.push(json!({"name": k.name, "address": k.address.as_str()})),
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
            if g.json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("no keys in {}", ks.dir().display());
            } else {
                for r in rows {
                    println!(
                        "{:<20} {}",
                        r["name"].as_str().unwrap_or(""),
                        r["address"].as_str().unwrap_or("")
                    );
                }
            }
        }
        KeysCommand::Show { name, show_private } => {
            let key = ks.load(&name)?;
            print_key(g, &key, show_private, "")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_key(
    g: &GlobalArgs,
    key: &cpc_common::keystore::StoredKey,
    show_private: bool,
    verb: &str,
) -> anyhow::Result<()> {
    let mut doc = json!({
        "name": key.name,
        "address": key.address.as_str(),
        "public_key": key.file.public_key,
    });
    if show_private {
        doc["private_key"] = json!(key.file.private_key);
    }
    if g.json {
        return print_json(&doc);
    }
    if !verb.is_empty() {
        println!("{verb} key `{}`", key.name);
    }
    println!("address     {}", key.address);
    println!("public_key  {}", key.file.public_key);
    if show_private {
        println!("private_key {}", key.file.private_key);
    }
    Ok(())
}
