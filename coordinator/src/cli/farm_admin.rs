//! `farm status|drain|resume|quarantine|readmit`: the admin API's client commands, for an operator acting
//! on a running coordinator (started with `--admin`) without restarting it.

use super::{GlobalArgs, output::print_json};
use clap::{Args, Subcommand};
use cpc_common::wire::{PROTOCOL_VERSION, ROOT_ANSWERS_SINCE, SHARD_PIPE_SINCE};
use cpc_coordinator::{
    admin::{self, AdminClient, AdminToken},
    farm::{DeviceStatus, FarmStatus},
};
use std::{path::PathBuf, process::ExitCode};

/// Default URL of the admin API.
const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:7702";

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// URL of the coordinator's admin API (its --admin address).
    #[arg(long = "admin", env = "CPC_ADMIN_URL", default_value = DEFAULT_ADMIN_URL, help_heading = "Admin API")]
    pub(crate) url: String,
    /// File holding the admin token (needed for every change; reads on loopback need none)
    /// [default: admin-token in ~/.cpc-farm, when it is there].
    #[arg(long, env = "CPC_ADMIN_TOKEN_FILE", help_heading = "Admin API")]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FarmCommand {
    /// Agents and devices: host, model, health, quarantine reason and time, shards in flight, throughput.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Finish the current shards of a device (`agentN/gpuI`) or of every device of an agent (`agentN`),
    /// and give it no new ones.
    Drain {
        /// `agentN/gpuI` or `agentN`, as `farm status` prints them.
        target: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Give a drained device or agent work again.
    Resume {
        /// `agentN/gpuI` or `agentN`.
        target: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Take a device out of service: no new shards, and no answer of it accepted.
    Quarantine {
        /// `agentN/gpuI`.
        device: String,
        /// Why (shown by `farm status`).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put a quarantined device back in service once it passes a known-answer self-test (refused with the
    /// reason otherwise).
    Readmit {
        /// `agentN/gpuI`.
        device: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Re-read the running node's config file and apply it in place (as SIGHUP does): identities,
    /// validators, nodes, gas price and matrix size; refused with the reason otherwise, the old config staying.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The running node's identities: blocks seen, computed, submitted, included, missed and why.
    Identities {
        /// Only blocks from this height (e.g. 1200) or from this long ago (e.g. 90m, 2h, 1d).
        #[arg(long, value_name = "HEIGHT|DURATION")]
        since: Option<String>,
        /// A result not included this many blocks after its own block counts as missed.
        #[arg(long)]
        within_blocks: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let path = match &self.token_file {
            Some(path) => Some(path.clone()),
            None => cpc_coordinator::data_dir::default_dir()
                .map(|dir| dir.join(admin::ADMIN_TOKEN_FILE))
                .filter(|path| path.exists()),
        };
        let token = path.as_deref().map(AdminToken::read).transpose()?;
        Ok(AdminClient::new(&self.url, token))
    }
}

pub(crate) async fn run(g: &GlobalArgs, cmd: FarmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FarmCommand::Status { admin } => {
            let status = admin.client()?.status().await?;
            if g.json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
        }
        FarmCommand::Drain { target, admin } => {
            let reply = admin.client()?.drain(&target).await?;
            print_devices(g, &reply, "draining (finishing its shards, taking no new ones)")?;
        }
        FarmCommand::Resume { target, admin } => {
            let reply = admin.client()?.resume(&target).await?;
            print_devices(g, &reply, "resumed")?;
        }
        FarmCommand::Quarantine { device, reason, admin } => {
            let reply = admin.client()?.quarantine(&device, reason.as_deref()).await?;
            print_devices(g, &reply, "quarantined")?;
        }
        FarmCommand::Readmit { device, admin } => {
            let reply = admin.client()?.readmit(&device).await?;
            if g.json {
                print_json(&reply)?;
            } else {
                let t = &reply.self_test;
                println!(
                    "{} readmitted: self-test passed ({} rows at n = {} matched the CPU, {:.3} s)",
                    reply.device, t.rows, t.matrix_size, t.device_seconds
                );
            }
        }
        FarmCommand::Reload { admin } => {
            let outcome = admin.client()?.reload().await?;
            if g.json {
                print_json(&outcome)?;
            } else if outcome.is_empty() {
                println!("config reloaded, nothing changed");
            } else {
                println!(
                    "config reloaded: added [{}], removed [{}], changed [{}]",
                    outcome.added.join(", "),
                    outcome.removed.join(", "),
                    outcome.changed.join(", ")
                );
            }
        }
        FarmCommand::Identities { since, within_blocks, admin } => {
            let report = admin.client()?.identities(since.as_deref(), within_blocks).await?;
            if g.json {
                print_json(&report)?;
            } else {
                super::identities::print_table(&report);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_devices(
    g: &GlobalArgs,
    reply: &admin::routes::DevicesReply,
    what: &str,
) -> anyhow::Result<()> {
    if g.json {
        return print_json(reply);
    }
    for device in &reply.devices {
        println!("{device} {what}");
    }
    Ok(())
}

fn print_status(status: &FarmStatus) {
    println!("farm {} (fingerprint {})", status.listen, status.fingerprint);
    if status.devices.is_empty() {
        println!("no agent connected");
        return;
    }
    println!(
        "{:<14} {:<14} {:<22} {:<6} {:>9} {:>12}  {:<24} MODEL",
        "DEVICE", "AGENT", "HOST", "KIND", "IN FLIGHT", "OPS/S", "STATE"
    );
    for d in &status.devices {
        println!(
            "{:<14} {:<14} {:<22} {:<6} {:>9} {:>12.3e}  {:<24} {}",
            d.device,
            d.agent,
            d.host,
            d.kind,
            d.shards_in_flight,
            d.measured_ops_per_sec,
            state(d),
            d.name
        );
        if let Some(r) = &d.report {
            let reading =
                |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.0} {unit}"));
            println!(
                "  {}temperature {}, power {}; restarts {}, watchdog firings {}, Xid errors {}{}",
                r.uuid.as_deref().map_or_else(String::new, |u| format!("{u}: ")),
                reading(r.temperature_celsius, "°C"),
                reading(r.power_watts, "W"),
                r.restarts,
                r.watchdog_firings,
                r.xid_errors,
                r.last_xid.map_or_else(String::new, |x| format!(" (last Xid {x})"))
            );
        }
        if d.protocol_version != 0 && d.protocol_version < ROOT_ANSWERS_SINCE {
            println!(
                "  agent speaks farm protocol {}: it sends every leaf of every job (upgrade it to {} to \
                 answer whole jobs by their Merkle root)",
                d.protocol_version, PROTOCOL_VERSION
            );
        } else if d.protocol_version != 0 && d.protocol_version < SHARD_PIPE_SINCE {
            println!(
                "  agent speaks farm protocol {}: each job it runs travels on a QUIC stream of its own \
                 (upgrade it to {} to batch them on one shard pipe)",
                d.protocol_version, PROTOCOL_VERSION
            );
        }
        if let Some(reason) = &d.quarantine_reason {
            let since = d
                .quarantined_at_unix_ms
                .map_or_else(String::new, |ms| format!(" (since {})", format_unix_ms(ms)));
            println!("  quarantined{since}: {reason}");
        }
    }
}

fn state(d: &DeviceStatus) -> &'static str {
    if d.quarantined {
        "quarantined"
    } else if d.drained {
        "drained by operator"
    } else if d.draining {
        "agent draining"
    } else {
        "healthy"
    }
}

/// `1764000000000` → `2025-11-24 16:00:00 UTC`.
fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_ms(1_764_000_000_123), "2025-11-24 16:00:00 UTC");
    }
}
