//! `cpc-coordinator`: the farm coordinator and the operator's tool for keys, the L1 and local tasks.

mod cli;

use clap::{CommandFactory as _, FromArgMatches as _};
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the farm's hot path allocates and frees many small frames,
/// messages and tasks a second, and glibc consolidates its fast bins on every request of a kilobyte or
/// more (a batch of orders or answers). Measured on the agent, that was about a sixth of its CPU in the farm
/// bench; the coordinator's hot path makes the same kind of allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    cpc_common::service::disable_transparent_huge_pages();
    // `Cli::parse()`, keeping the matches: `run` layers flags over `CPC_*` variables by where clap found
    // each value.
    let matches = cli::Cli::command().get_matches();
    let args = cli::Cli::from_arg_matches(&matches)
        .unwrap_or_else(|e| e.format(&mut cli::Cli::command()).exit());
    cli::init_logging(args.global.log_format, "warn");
    match cli::run(args, &matches).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", without_repeats(&e));
            if e.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message before it
/// already holds (many errors print their source in their own message).
fn without_repeats(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::without_repeats;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory (os error 2)",
        );
        let e = anyhow::Error::new(io)
            .context("cannot read farm.toml: No such file or directory (os error 2)");
        assert_eq!(
            without_repeats(&e),
            "cannot read farm.toml: No such file or directory (os error 2)"
        );
        let e = anyhow::anyhow!("disk full").context("cannot write the journal");
        assert_eq!(without_repeats(&e), "cannot write the journal: disk full");
    }
}
