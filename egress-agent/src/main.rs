//! `egress-agent`: the egress gateway's node agent and its CLI.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use egress_agent::{agent, datapath::DEFAULT_PIN_ROOT, inspect, netdev};
use tracing_subscriber::EnvFilter;

/// Egress gateway agent: sends selected pods' traffic through a gateway node, source-NATed to
/// one egress IP, with tc eBPF programs.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Where maps and links are pinned (a bpffs; mounted if missing).
    #[arg(long, global = true, env = "EGRESS_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent on this node.
    Run {
        /// The configuration file (YAML); reloaded when it changes.
        #[arg(long, short, env = "EGRESS_CONFIG")]
        config: PathBuf,
        /// This node's name, as in the configuration (Kubernetes: from the downward API).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// How often to reconcile, in milliseconds.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// How often to expire NAT entries, in seconds.
        #[arg(long, default_value_t = 10)]
        gc_interval_s: u64,
    },
    /// Show what the datapath holds, read from the pinned maps.
    Inspect {
        what: What,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove the datapath from this node: unpin maps and links (detaching the programs) and
    /// delete the tunnel device.
    Cleanup {
        #[arg(long, default_value = "egw0")]
        device: String,
    },
    /// Check a mail domain's SPF record and reverse DNS against the egress IPs.
    #[command(subcommand)]
    Spf(egress_agent::spf::SpfCmd),
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// Translated flows (forward direction).
    Nat,
    /// Local pods known to the datapath.
    Endpoints,
    /// Per-policy traffic and per-reason drops.
    Counters,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into())
                // netlink-packet-route warns about every attribute newer than itself, on
                // every link dump.
                .add_directive(
                    "netlink_packet_route=error"
                        .parse()
                        .expect("valid directive"),
                ),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run {
            config,
            node,
            interval_ms,
            gc_interval_s,
        } => tokio::runtime::Runtime::new()?.block_on(agent::run(agent::RunOptions {
            config,
            node,
            pin_root: cli.pin_root,
            interval: Duration::from_millis(interval_ms),
            gc_interval: Duration::from_secs(gc_interval_s),
        })),
        Cmd::Inspect { what, json } => {
            let out = match what {
                What::Nat => inspect::nat(&cli.pin_root, json)?,
                What::Endpoints => inspect::endpoints(&cli.pin_root, json)?,
                What::Counters => inspect::counters(&cli.pin_root, json)?,
            };
            print!("{out}");
            Ok(())
        }
        Cmd::Cleanup { device } => {
            if cli.pin_root.exists() {
                std::fs::remove_dir_all(&cli.pin_root)?;
                println!("unpinned {}", cli.pin_root.display());
            }
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let h = netdev::connect()?;
                if netdev::delete_link(&h, &device).await? {
                    println!("deleted {device}");
                }
                anyhow::Ok(())
            })
        }
        Cmd::Spf(cmd) => Ok(egress_agent::spf::run(cmd, &cli.pin_root)?),
    }
}
