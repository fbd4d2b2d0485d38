//! `mcp-gateway auth …`: make API keys and the hashes the config stores.

use std::io::{BufRead, Write};

use clap::Subcommand;

use super::api_key::{KeyHash, new_key};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Read an API key from stdin (one line) and print its `sha256:` hash
    /// for `[[auth.api_keys]] hash`.
    HashKey,
    /// Make a new random API key; prints the key (give it to the client)
    /// and, on the next line, its hash (put it in the config).
    NewKey,
}

/// Runs an `auth` subcommand; the error is for the user.
pub fn run(cmd: &AuthCommand) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match cmd {
        AuthCommand::HashKey => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the key from stdin: {e}"))?;
            let key = line.trim();
            if key.is_empty() {
                return Err("no key on stdin".to_owned());
            }
            writeln!(out, "{}", KeyHash::of(key)).map_err(|e| e.to_string())
        }
        AuthCommand::NewKey => {
            let key = new_key().map_err(|e| format!("no randomness from the OS: {e}"))?;
            writeln!(out, "{key}\n{}", KeyHash::of(&key)).map_err(|e| e.to_string())
        }
    }
}
