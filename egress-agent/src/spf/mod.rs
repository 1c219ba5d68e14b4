//! `egress-agent spf check`: is a mail domain ready for the egress IPs?
//!
//! The egress gateway exists so that mail leaves from IPs the domain's SPF record names. This
//! checks what a receiving mail server checks, against the DNS as published:
//! - the domain publishes exactly one SPF record (RFC 7208 4.5) and it parses;
//! - it authorises every egress IP: `check_host()` (RFC 7208 4) evaluated for each IP with
//!   `mail-auth`, the SPF implementation of Stalwart's mail server, must give `pass`;
//! - the record and everything it includes need at most 10 DNS-querying terms (`include`, `a`,
//!   `mx`, `ptr`, `exists`, `redirect`; RFC 7208 4.6.4); past that, receivers answer
//!   `permerror` for every address that is not matched before the limit;
//! - every egress IP has forward-confirmed reverse DNS: a PTR name that resolves back to the IP
//!   (the `iprev` check of RFC 8601; many receivers reject or down-rank mail without it).
//!
//! When something is missing it prints the SPF record to publish. The egress IPs come from
//! `--egress-ip` or from the live policies in the pinned policy map.
//!
//! One module per concern: `record` (the published record, its syntax, the record to
//! publish), `lookups` (the record tree and its DNS lookup count), `evaluate` (`check_host()`),
//! `fcrdns` (reverse DNS) and `report` (the verdict and its output). The pure parts are plain
//! functions over text; the DNS and map I/O sits in `check`, the DNS modules and
//! `live_egress_ips`.

mod evaluate;
mod fcrdns;
mod lookups;
mod record;
mod report;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
};

use aya::maps::{lpm_trie::LpmTrie, MapData};
use egress_common::{
    map_names,
    policy::{PolicyKey4, PolicyValue, ACTION_VIA_GATEWAY},
};
use thiserror::Error;

pub use self::{
    evaluate::{authenticator, spf_word},
    lookups::{count_lookups, LookupCount, MAX_DNS_LOOKUPS},
    record::{references, suggest_record, validate, Published},
    report::{IpCheck, Report},
};
use crate::datapath::{ip4_from, open_pinned_map};

#[derive(Debug, Error)]
pub enum SpfError {
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error(
        "reading the live policies from {path}: {reason}; is the agent running with this \
         --pin-root? Otherwise name the egress IPs with --egress-ip"
    )]
    Policies { path: String, reason: String },
    #[error(
        "no egress IP to check: the live policies send nothing through a gateway; name the \
         egress IPs with --egress-ip"
    )]
    NoEgressIps,
    #[error("starting the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error(
        "{domain} is not ready for mail from the egress IPs: {problems} problem(s), see above"
    )]
    CheckFailed { domain: String, problems: usize },
}

/// `egress-agent spf ...`
#[derive(Debug, clap::Subcommand)]
pub enum SpfCmd {
    /// Check that a domain's SPF record and reverse DNS fit the egress IPs; print the SPF
    /// record to publish when something is missing. Exits non-zero on any problem.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The mail domain (the MAIL FROM domain of the mail the pods send).
    #[arg(long)]
    pub domain: String,
    /// An egress IP to check (repeat for several). Default: the egress IPs of the live
    /// policies, read from the pinned policy map under --pin-root.
    #[arg(long = "egress-ip", value_name = "IP")]
    pub egress_ips: Vec<Ipv4Addr>,
    /// The DNS server to ask, ADDR:PORT. Default: the system's resolvers (/etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_server: Option<SocketAddr>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs `egress-agent spf <cmd>`: prints the report and fails when the check failed.
pub fn run(cmd: SpfCmd, pin_root: &Path) -> Result<(), SpfError> {
    match cmd {
        SpfCmd::Check(args) => {
            let ips = if args.egress_ips.is_empty() {
                live_egress_ips(pin_root)?
            } else {
                args.egress_ips.iter().copied().collect()
            };
            if ips.is_empty() {
                return Err(SpfError::NoEgressIps);
            }
            let ips: Vec<Ipv4Addr> = ips.into_iter().collect();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(check(&args.domain, &ips, args.dns_server))?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                );
            } else {
                print!("{}", report.render());
            }
            if report.ok {
                Ok(())
            } else {
                Err(SpfError::CheckFailed {
                    domain: report.domain,
                    problems: report.problems.len(),
                })
            }
        }
    }
}

/// The egress IPs of the live policies: the pinned policy map's "via gateway" entries.
pub fn live_egress_ips(pin_root: &Path) -> Result<BTreeSet<Ipv4Addr>, SpfError> {
    let path = pin_root.join("maps").join(map_names::POLICY4);
    let err = |reason: String| SpfError::Policies {
        path: path.display().to_string(),
        reason,
    };
    let map =
        open_pinned_map(pin_root, map_names::POLICY4).map_err(|e| err(e.source.to_string()))?;
    let trie: LpmTrie<&MapData, PolicyKey4, PolicyValue> = (&map)
        .try_into()
        .map_err(|e: aya::maps::MapError| err(e.to_string()))?;
    let mut ips = BTreeSet::new();
    for kv in trie.iter() {
        let (_, v) = kv.map_err(|e| err(e.to_string()))?;
        if v.action == ACTION_VIA_GATEWAY {
            ips.insert(ip4_from(v.egress_ip4));
        }
    }
    Ok(ips)
}

/// Checks `domain` against `ips` with the DNS of `server` (or the system's).
pub async fn check(
    domain: &str,
    ips: &[Ipv4Addr],
    server: Option<SocketAddr>,
) -> Result<Report, SpfError> {
    let domain = record::normalise(domain);
    let auth = authenticator(server)?;
    let records = lookups::fetch_tree(&auth, &domain).await;
    let lookups = count_lookups(&domain, &records);
    let top = records.get(&domain).cloned().unwrap_or(Published::None);
    let mut checks = Vec::new();
    for &ip in ips {
        let spf = evaluate::check_host(&auth, &domain, ip).await;
        let rdns = fcrdns::fcrdns(&auth, ip).await;
        checks.push(IpCheck {
            ip,
            spf: spf.to_owned(),
            ptr: rdns.ptr,
            fcrdns: rdns.result.to_owned(),
            fcrdns_detail: rdns.detail,
        });
    }
    Ok(Report::new(&domain, top, lookups, checks))
}
