//! `egress-agent`: the egress gateway's node agent and its CLI.

#![expect(
    unused_crate_dependencies,
    reason = "the binary is a thin front of the library, which uses the package's dependencies"
)]

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use egress_agent::{agent, datapath::DEFAULT_PIN_ROOT, inspect, model, netdev};
use tracing_subscriber::EnvFilter;

/// Egress gateway agent: sends selected pods' traffic to selected destinations through one
/// gateway node, source-NATed to one egress IP, with tc eBPF programs.
///
/// Runs on every node (a DaemonSet). Policies select pods by labels and name the gateway node;
/// see the README for the configuration file and `egress-agent crd` for the custom resource.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Examples:\n  \
    egress-agent check --config deploy/example-config.yaml\n  \
    egress-agent run --config deploy/example-config.yaml --node worker1\n  \
    egress-agent run --kubernetes --node \"$NODE_NAME\"\n  \
    egress-agent inspect policies\n  \
    egress-agent inspect nat --json\n  \
    egress-agent inspect nat --check\n  \
    egress-agent crd > deploy/crd.yaml\n  \
    egress-agent cleanup\n\n\
    Logging: RUST_LOG=debug (default info), to stderr."
)]
struct Cli {
    /// Where maps and links are pinned (a bpffs; mounted if missing). One agent per pin root.
    #[arg(long, global = true, env = "EGRESS_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Where the agent keeps its policy status (`policies.json`, read by `inspect policies`).
    #[arg(long, global = true, env = "EGRESS_STATE_DIR", default_value = agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent on this node: load (or reuse) the datapath and keep it in step with the
    /// policies, pods and nodes of its source: the configuration file or the Kubernetes API.
    ///
    /// A change to the file, or a pod interface appearing or going, is applied within
    /// milliseconds; only the differences are written to the maps. The datapath stays pinned
    /// when the agent stops, so established flows survive restarts.
    Run {
        /// The configuration file (YAML; see the README): tunnel, NAT and map settings, the
        /// cluster CIDRs, and (without --kubernetes) the nodes, namespaces, pods and policies.
        /// Re-read whenever it changes; a broken edit is logged and the previous one kept.
        #[arg(
            long,
            short,
            env = "EGRESS_CONFIG",
            required_unless_present = "kubernetes"
        )]
        config: Option<PathBuf>,
        /// Watch nodes, namespaces, pods and EgressGatewayPolicy objects in the Kubernetes API
        /// (in-cluster service account, or KUBECONFIG) and write policy status.
        #[arg(long, env = "EGRESS_KUBERNETES")]
        kubernetes: bool,
        /// This node's name, as the source knows it (Kubernetes: from the downward API).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// Uplink (internet-facing) interface, when the source does not name one. Default: the
        /// interface of the IPv4 default route.
        #[arg(long, env = "EGRESS_UPLINK")]
        uplink: Option<String>,
        /// Serve /metrics, /healthz and /readyz here (ADDRESS:PORT; an IPv6 address with or
        /// without brackets); `off` to disable. Loopback by default: a host-network pod would
        /// otherwise serve on every address of the node, public ones included (the DaemonSet
        /// binds the node's InternalIP, from the downward API's status.hostIP).
        #[arg(long, env = "EGRESS_METRICS_ADDR", default_value = "127.0.0.1:9479")]
        metrics_addr: String,
        /// How often to check the configuration file for changes, in milliseconds.
        #[arg(long, default_value_t = 100)]
        file_poll_ms: u64,
        /// Reconcile at least this often even without a change, in seconds (a safety net).
        #[arg(long, default_value_t = 30)]
        resync_s: u64,
        /// How often to expire idle NAT entries, in seconds.
        #[arg(long, default_value_t = 10)]
        gc_interval_s: u64,
    },
    /// Show what the datapath holds, read from the pinned maps (the agent need not run).
    Inspect {
        what: What,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
        /// With `nat`: check the NAT table's invariants instead of listing it (every flow has
        /// both entries, pointing at each other; no egress tuple shared; ports in range; valid
        /// states; no claim left behind). Prints each problem, exits non-zero if any.
        #[arg(long)]
        check: bool,
    },
    /// Check a configuration file without touching the node: parse it and show what the
    /// policy model makes of it (each policy's status, and per node the pods it programs).
    Check {
        /// The configuration file.
        #[arg(long, short, env = "EGRESS_CONFIG")]
        config: PathBuf,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Print the EgressGatewayPolicy CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// Remove the datapath from this node: unpin maps and links (detaching the programs),
    /// delete our legacy tc filters (only ours: our priority and handles) and the tunnel
    /// device. Translated flows break. Waits for an agent still running on this pin root to
    /// stop (up to --wait-s), and keeps one from starting until it is done (the uninstall:
    /// deploy/cleanup.yaml).
    Cleanup {
        /// The tunnel device to delete.
        #[arg(long, default_value = "egw0")]
        device: String,
        /// How long to wait for an agent on this pin root to stop, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
    },
    /// Check a mail domain's SPF record and reverse DNS against the egress IPs.
    #[command(subcommand)]
    Spf(egress_agent::spf::SpfCmd),
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// Policies: status (name, ready, gateway, egress IP, pods) and their prefixes in the
    /// datapath (destination, action, gateway, egress IP, traffic per policy id).
    Policies,
    /// Translated flows (forward direction).
    Nat,
    /// Local pods known to the datapath.
    Endpoints,
    /// Per-policy traffic, drops by reason, NAT mappings created and taken ports retried.
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
        .with_ansi(std::io::stderr().is_terminal())
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
            kubernetes,
            node,
            uplink,
            metrics_addr,
            file_poll_ms,
            resync_s,
            gc_interval_s,
        } => {
            let metrics_addr = match metrics_addr.as_str() {
                "off" | "" => None,
                a => Some(parse_listen_addr(a).with_context(|| {
                    format!("--metrics-addr {a}: give ADDRESS:PORT (e.g. 127.0.0.1:9479) or off")
                })?),
            };
            let source = match config {
                _ if kubernetes => agent::Source::Kubernetes { settings: config },
                Some(path) => agent::Source::File(path),
                None => {
                    anyhow::bail!("give --config FILE (nodes, pods and policies), or --kubernetes")
                }
            };
            tokio::runtime::Runtime::new()?.block_on(agent::run(agent::RunOptions {
                source,
                uplink,
                node,
                pin_root: cli.pin_root,
                state_dir: cli.state_dir,
                file_poll: Duration::from_millis(file_poll_ms.max(10)),
                resync: Duration::from_secs(resync_s.max(1)),
                gc_interval: Duration::from_secs(gc_interval_s.max(1)),
                metrics_addr,
            }))
        }
        Cmd::Inspect {
            what: What::Nat,
            json,
            check: true,
        } => {
            let (out, ok) = inspect::nat_check(&cli.pin_root, json)?;
            print!("{out}");
            if !ok {
                anyhow::bail!("the NAT table has problems (each on a line above)");
            }
            Ok(())
        }
        Cmd::Inspect { check: true, .. } => {
            anyhow::bail!("--check checks the NAT table: `egress-agent inspect nat --check`")
        }
        Cmd::Inspect { what, json, .. } => {
            let out = match what {
                What::Policies => inspect::policies(&cli.pin_root, &cli.state_dir, json)?,
                What::Nat => inspect::nat(&cli.pin_root, json)?,
                What::Endpoints => inspect::endpoints(&cli.pin_root, json)?,
                What::Counters => inspect::counters(&cli.pin_root, json)?,
            };
            print!("{out}");
            Ok(())
        }
        Cmd::Check { config, json } => {
            let cfg = egress_agent::config::AgentConfig::load(&config)?;
            print!("{}", inspect::check(&cfg, json)?);
            Ok(())
        }
        Cmd::Crd => {
            print!("{}", model::crd::crd_yaml());
            Ok(())
        }
        Cmd::Cleanup { device, wait_s } => {
            let root = cli.pin_root.display();
            let _lock =
                egress_agent::lock::lock(&cli.pin_root, Duration::from_secs(wait_s), || {
                    println!("waiting for the agent on {root} to stop");
                })?
                .with_context(|| {
                    format!(
                        "an agent still runs on {root} after {wait_s} s: stop it first (it would \
                     attach again what cleanup removes)"
                    )
                })?;
            // Legacy tc filters (kernels below 6.6) are not pinned: remove ours everywhere.
            for (ifname, program) in egress_agent::datapath::remove_all_legacy_filters() {
                println!("removed the {program} filter from {ifname}");
            }
            if cli.pin_root.exists() {
                for sub in ["maps", "links"] {
                    let dir = cli.pin_root.join(sub);
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir)?;
                    }
                }
                // The pin root may be a bpffs mount of its own (the agent mounts one where
                // there is none), holding the kernel's progs.debug and maps.debug: it stays.
                let _ = std::fs::remove_dir(&cli.pin_root);
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

/// `ADDRESS:PORT`, also with an IPv6 address without brackets (`fd00::1:9479`, as
/// `$(HOST_IP):9479` expands on an IPv6 node).
fn parse_listen_addr(a: &str) -> Result<std::net::SocketAddr> {
    if let Ok(addr) = a.parse() {
        return Ok(addr);
    }
    let (ip, port) = a.rsplit_once(':').context("no port")?;
    Ok(std::net::SocketAddr::new(ip.parse()?, port.parse()?))
}

#[cfg(test)]
mod tests {
    use super::parse_listen_addr;

    #[test]
    fn listen_addresses_with_and_without_brackets() {
        for (a, want) in [
            ("127.0.0.1:9479", "127.0.0.1:9479"),
            ("10.0.0.5:9479", "10.0.0.5:9479"),
            ("[fd00::5]:9479", "[fd00::5]:9479"),
            ("fd00::5:9479", "[fd00::5]:9479"),
        ] {
            assert_eq!(parse_listen_addr(a).expect(a).to_string(), want);
        }
        assert!(parse_listen_addr("9479").is_err());
        assert!(parse_listen_addr("localhost:x").is_err());
    }
}
