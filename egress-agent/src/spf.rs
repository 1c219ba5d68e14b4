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
//! Pure parts (record selection, lookup counting, the suggested record, the verdict) are plain
//! functions over text; the DNS and map I/O sits in `check` and `live_egress_ips`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use aya::maps::{lpm_trie::LpmTrie, MapData};
use egress_common::{
    map_names,
    policy::{PolicyKey4, PolicyValue, ACTION_VIA_GATEWAY},
};
use mail_auth::{
    common::parse::TxtRecordParser,
    hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    spf::{verify::SpfParameters, Macro, Mechanism, Spf},
    IprevResult, MessageAuthenticator, Parameters, SpfResult,
};
use serde::Serialize;
use thiserror::Error;

use crate::datapath::{ip4_from, open_pinned_map};

/// RFC 7208 4.6.4: at most 10 terms that cause DNS queries.
pub const MAX_DNS_LOOKUPS: usize = 10;

/// Most names fetched while following `include:` and `redirect=` (a guard against huge trees).
const MAX_FETCHED_NAMES: usize = 64;

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

/// What a name publishes in TXT records that start with `v=spf1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "records", rename_all = "snake_case")]
pub enum Published {
    /// No SPF record (the name may still exist).
    None,
    /// Exactly one SPF record.
    One(String),
    /// More than one: a permanent error for receivers (RFC 7208 4.5).
    Many(Vec<String>),
    /// The lookup failed (timeout, refused, ...).
    Error(String),
}

impl Published {
    /// Picks the SPF records out of a name's TXT records (each already joined from its
    /// character strings). The version tag is matched without regard to case and must be
    /// followed by a space or the end (RFC 7208 4.5).
    pub fn from_txt<S: AsRef<str>>(txt: &[S]) -> Published {
        let mut spf: Vec<String> = txt
            .iter()
            .map(|t| t.as_ref().trim())
            .filter(|t| {
                t.len() >= 6
                    && t.is_char_boundary(6)
                    && t[..6].eq_ignore_ascii_case("v=spf1")
                    && (t.len() == 6 || t.as_bytes()[6] == b' ')
            })
            .map(str::to_owned)
            .collect();
        match spf.len() {
            0 => Published::None,
            1 => Published::One(spf.remove(0)),
            _ => Published::Many(spf),
        }
    }
}

/// A record's `include:` and `redirect=` targets that can be followed (literal domains; a
/// target with macros depends on the sender and cannot be resolved ahead of time).
pub fn references(record: &str) -> Vec<String> {
    let Ok(spf) = Spf::parse(record.as_bytes()) else {
        return Vec::new();
    };
    spf.directives
        .iter()
        .filter_map(|d| match &d.mechanism {
            Mechanism::Include { macro_string } => literal(macro_string),
            _ => None,
        })
        .chain(spf.redirect.as_ref().and_then(literal))
        .collect()
}

fn literal(m: &Macro) -> Option<String> {
    match m {
        Macro::Literal(b) => std::str::from_utf8(b).ok().map(normalise),
        _ => None,
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a record's syntax: mail-auth's parser, plus the checks it leaves out (it reads
/// `ip4:300.1.1.1` as 255.1.1.1, clamps `/33`, skips unknown mechanisms), which strict
/// receivers answer with permerror (RFC 7208 4.6.1, 5.6).
pub fn validate(record: &str) -> Result<(), String> {
    Spf::parse(record.as_bytes()).map_err(|e| e.to_string())?;
    for t in record.split_whitespace().skip(1) {
        let body = t.trim_start_matches(['+', '-', '~', '?']);
        let name_end = body.find([':', '/', '=']).unwrap_or(body.len());
        let (name, rest) = body.split_at(name_end);
        if rest.starts_with('=') {
            continue; // a modifier; mail-auth checks the known ones
        }
        let value = rest.strip_prefix(':').unwrap_or(rest);
        match name.to_ascii_lowercase().as_str() {
            "all" | "include" | "a" | "mx" | "ptr" | "exists" => {}
            "ip4" => {
                let (addr, len) = value.split_once('/').unwrap_or((value, "32"));
                if addr.parse::<Ipv4Addr>().is_err() || !len.parse::<u8>().is_ok_and(|l| l <= 32) {
                    return Err(format!("{t}: not an IPv4 network"));
                }
            }
            "ip6" => {
                let (addr, len) = value.split_once('/').unwrap_or((value, "128"));
                if addr.parse::<std::net::Ipv6Addr>().is_err()
                    || !len.parse::<u8>().is_ok_and(|l| l <= 128)
                {
                    return Err(format!("{t}: not an IPv6 network"));
                }
            }
            _ => return Err(format!("{t}: unknown mechanism")),
        }
    }
    Ok(())
}

/// The DNS-querying terms of a record tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LookupCount {
    /// Terms that cost a DNS lookup, over the whole tree (RFC 7208 4.6.4).
    pub total: usize,
    /// Each such term and the domain whose record holds it, in evaluation order.
    pub terms: Vec<String>,
    /// What could not be followed: missing or broken included records, loops, macros.
    pub notes: Vec<String>,
}

/// Counts the DNS-querying terms of `domain`'s record and of every record it includes or
/// redirects to, as found in `records` (name -> what it publishes). This is the static count
/// that SPF checkers report: every branch, as if nothing matched early.
pub fn count_lookups(domain: &str, records: &BTreeMap<String, Published>) -> LookupCount {
    let mut count = LookupCount::default();
    let mut stack = Vec::new();
    walk(&normalise(domain), records, &mut stack, &mut count);
    count
}

fn walk(
    domain: &str,
    records: &BTreeMap<String, Published>,
    stack: &mut Vec<String>,
    count: &mut LookupCount,
) {
    if stack.iter().any(|d| d == domain) {
        count
            .notes
            .push(format!("{domain} includes itself (a loop): permerror"));
        return;
    }
    if stack.len() > MAX_DNS_LOOKUPS {
        return;
    }
    let text = match records.get(domain) {
        Some(Published::One(t)) => t,
        Some(Published::Many(_)) => {
            count
                .notes
                .push(format!("{domain} publishes several SPF records: permerror"));
            return;
        }
        Some(Published::None) => {
            if !stack.is_empty() {
                count.notes.push(format!(
                    "{domain} is included but publishes no SPF record: permerror"
                ));
            }
            return;
        }
        Some(Published::Error(e)) => {
            count.notes.push(format!("{domain}: lookup failed: {e}"));
            return;
        }
        None => {
            count
                .notes
                .push(format!("{domain}: not looked up (too many names)"));
            return;
        }
    };
    let spf = match validate(text)
        .and_then(|()| Spf::parse(text.as_bytes()).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            count.notes.push(format!(
                "{domain}: the SPF record does not parse ({e}): permerror"
            ));
            return;
        }
    };
    stack.push(domain.to_owned());
    let add = |count: &mut LookupCount, what: &str| {
        count.total += 1;
        count.terms.push(format!("{what} (in {domain})"));
    };
    for d in spf.directives.iter() {
        match &d.mechanism {
            Mechanism::Include { macro_string } => {
                let target = literal(macro_string);
                add(
                    count,
                    &format!("include:{}", target.as_deref().unwrap_or("<macro>")),
                );
                match target {
                    Some(t) => walk(&t, records, stack, count),
                    None => count.notes.push(format!(
                        "{domain}: an include with macros is counted once, not followed"
                    )),
                }
            }
            Mechanism::A { macro_string, .. } => add(count, &term("a", macro_string)),
            Mechanism::Mx { macro_string, .. } => add(count, &term("mx", macro_string)),
            Mechanism::Ptr { macro_string } => add(count, &term("ptr", macro_string)),
            Mechanism::Exists { macro_string } => add(count, &term("exists", macro_string)),
            Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {}
        }
    }
    if let Some(r) = &spf.redirect {
        let target = literal(r);
        add(
            count,
            &format!("redirect={}", target.as_deref().unwrap_or("<macro>")),
        );
        if let Some(t) = target {
            walk(&t, records, stack, count);
        }
    }
    stack.pop();
}

fn term(name: &str, m: &Macro) -> String {
    match m {
        Macro::None => name.to_owned(),
        m => format!("{name}:{}", literal(m).unwrap_or_else(|| "<macro>".into())),
    }
}

/// The record to publish so that `missing` IPs pass: the current record (when it is one valid
/// record) with `ip4:` terms for them right after the version (so they match before any
/// lookup), or a fresh `v=spf1 ip4:... ~all`.
pub fn suggest_record(current: &Published, missing: &[Ipv4Addr]) -> String {
    let terms: Vec<String> = missing.iter().map(|ip| format!("ip4:{ip}")).collect();
    match current {
        Published::One(text) if validate(text).is_ok() => {
            let rest = text[6..].trim();
            let mut out = String::from("v=spf1");
            for t in terms.iter().chain(
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .iter(),
            ) {
                out.push(' ');
                out.push_str(t);
            }
            out
        }
        _ => format!("v=spf1 {} ~all", terms.join(" ")),
    }
}

/// One egress IP's results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpCheck {
    pub ip: Ipv4Addr,
    /// `check_host()` for `postmaster@<domain>` from this IP: `pass`, `softfail`, ...
    pub spf: String,
    /// The PTR names of the IP (empty: none).
    pub ptr: Vec<String>,
    /// Forward-confirmed reverse DNS: `pass`, `fail`, `permerror`, `temperror`.
    pub fcrdns: String,
    /// Why FCrDNS did not pass.
    pub fcrdns_detail: Option<String>,
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub domain: String,
    pub published: Published,
    pub lookups: LookupCount,
    pub ips: Vec<IpCheck>,
    pub problems: Vec<String>,
    /// The SPF record to publish, when the published one does not authorise every egress IP.
    pub suggested_record: Option<String>,
    pub ok: bool,
}

impl Report {
    /// Judges the collected facts: lists the problems and the record to publish.
    pub fn new(
        domain: &str,
        published: Published,
        lookups: LookupCount,
        ips: Vec<IpCheck>,
    ) -> Report {
        let mut problems = Vec::new();
        let mut record_broken = false;
        match &published {
            Published::None => {
                problems.push(format!("{domain} publishes no SPF record"));
                record_broken = true;
            }
            Published::Many(r) => {
                problems.push(format!(
                    "{domain} publishes {} SPF records; receivers answer permerror: keep one",
                    r.len()
                ));
                record_broken = true;
            }
            Published::Error(e) => {
                problems.push(format!("looking up {domain}'s SPF record failed: {e}"));
            }
            Published::One(t) => {
                if let Err(e) = validate(t) {
                    problems.push(format!(
                        "{domain}'s SPF record does not parse ({e}); receivers answer permerror"
                    ));
                    record_broken = true;
                }
            }
        }
        if lookups.total > MAX_DNS_LOOKUPS {
            problems.push(format!(
                "the record needs {} DNS lookups, more than the limit of {MAX_DNS_LOOKUPS} \
                 (RFC 7208 4.6.4); receivers answer permerror: replace include/a/mx terms by \
                 the ip4:/ip6: ranges they stand for",
                lookups.total
            ));
        }
        for n in &lookups.notes {
            if n.contains("permerror") {
                problems.push(n.clone());
            }
        }
        let mut missing = Vec::new();
        for c in &ips {
            if c.spf != "pass" {
                problems.push(format!(
                    "{} is not authorised by the SPF record ({})",
                    c.ip, c.spf
                ));
                missing.push(c.ip);
            }
            if c.fcrdns != "pass" {
                let why = c.fcrdns_detail.as_deref().unwrap_or("");
                problems.push(if c.ptr.is_empty() {
                    format!(
                        "{} has no PTR record ({why}): publish one naming a host whose A \
                         record is {}",
                        c.ip, c.ip
                    )
                } else {
                    format!(
                        "{}'s PTR name {} does not resolve back to it ({why}): give that \
                         name an A record {}",
                        c.ip,
                        c.ptr.join(", "),
                        c.ip
                    )
                });
            }
        }
        // Without the current record (a failed lookup) there is nothing sound to suggest.
        let lookup_failed = matches!(published, Published::Error(_));
        let suggested_record = if !lookup_failed && (record_broken || !missing.is_empty()) {
            // A broken record is replaced whole: name every egress IP.
            let ips_to_add: Vec<Ipv4Addr> = if record_broken {
                ips.iter().map(|c| c.ip).collect()
            } else {
                missing
            };
            let base = if record_broken {
                &Published::None
            } else {
                &published
            };
            Some(suggest_record(base, &ips_to_add))
        } else {
            None
        };
        Report {
            domain: domain.to_owned(),
            ok: problems.is_empty(),
            published,
            lookups,
            ips,
            problems,
            suggested_record,
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "domain       {}", self.domain);
        let record = match &self.published {
            Published::None => "(none)".to_owned(),
            Published::One(t) => t.clone(),
            Published::Many(r) => r.join("  |  "),
            Published::Error(e) => format!("(lookup failed: {e})"),
        };
        let _ = writeln!(s, "SPF record   {record}");
        let _ = writeln!(
            s,
            "DNS lookups  {} of at most {MAX_DNS_LOOKUPS}{}",
            self.lookups.total,
            if self.lookups.terms.is_empty() {
                String::new()
            } else {
                format!(": {}", self.lookups.terms.join(", "))
            }
        );
        let _ = writeln!(
            s,
            "\n{:<16} {:<10} {:<32} FCrDNS",
            "EGRESS IP", "SPF", "PTR"
        );
        for c in &self.ips {
            let ptr = if c.ptr.is_empty() {
                "-".to_owned()
            } else {
                c.ptr.join(",")
            };
            let _ = writeln!(s, "{:<16} {:<10} {:<32} {}", c.ip, c.spf, ptr, c.fcrdns);
        }
        if self.ok {
            let _ = writeln!(s, "\nok: every egress IP passes SPF and has FCrDNS");
        } else {
            let _ = writeln!(s, "\nproblems:");
            for p in &self.problems {
                let _ = writeln!(s, "  - {p}");
            }
        }
        if let Some(r) = &self.suggested_record {
            let _ = writeln!(s, "\npublish this SPF record (TXT at {}):", self.domain);
            let _ = writeln!(s, "  {r}");
        }
        s
    }
}

/// A resolver asking `server`, or the system's resolvers.
pub fn authenticator(server: Option<SocketAddr>) -> Result<MessageAuthenticator, SpfError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    let r = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), opts)
        }
        None => MessageAuthenticator::new_system_conf(),
    };
    r.map_err(|e| SpfError::Resolver(e.to_string()))
}

/// The TXT records of `name` that are SPF records.
async fn published(auth: &MessageAuthenticator, name: &str) -> Published {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match auth.resolver().txt_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let txt: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    mail_auth::hickory_resolver::proto::rr::RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            Published::from_txt(&txt)
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Published::None,
        Err(e) => Published::Error(e.to_string()),
    }
}

/// Checks `domain` against `ips` with the DNS of `server` (or the system's).
pub async fn check(
    domain: &str,
    ips: &[Ipv4Addr],
    server: Option<SocketAddr>,
) -> Result<Report, SpfError> {
    let domain = normalise(domain);
    let auth = authenticator(server)?;
    // The record tree, for the lookup count.
    let mut records = BTreeMap::new();
    let mut queue = vec![domain.clone()];
    while let Some(name) = queue.pop() {
        if records.contains_key(&name) || records.len() >= MAX_FETCHED_NAMES {
            continue;
        }
        let p = published(&auth, &name).await;
        if let Published::One(t) = &p {
            queue.extend(references(t));
        }
        records.insert(name, p);
    }
    let lookups = count_lookups(&domain, &records);
    let top = records.get(&domain).cloned().unwrap_or(Published::None);

    let sender = format!("postmaster@{domain}");
    let mut checks = Vec::new();
    for &ip in ips {
        let out = auth
            .check_host(Parameters::new(SpfParameters::new(
                IpAddr::V4(ip),
                &domain,
                &domain,
                "spf-check.egress-agent",
                &sender,
            )))
            .await;
        let iprev = auth.verify_iprev(Parameters::new(IpAddr::V4(ip))).await;
        let (fcrdns, detail) = match &iprev.result {
            IprevResult::Pass => ("pass", None),
            IprevResult::Fail(e) => ("fail", Some(e.to_string())),
            IprevResult::TempError(e) => ("temperror", Some(e.to_string())),
            IprevResult::PermError(e) => ("permerror", Some(e.to_string())),
            IprevResult::None => ("none", None),
        };
        checks.push(IpCheck {
            ip,
            spf: spf_word(out.result()).to_owned(),
            ptr: iprev
                .ptr
                .iter()
                .flat_map(|p| p.iter().map(|n| n.trim_end_matches('.').to_owned()))
                .collect(),
            fcrdns: fcrdns.to_owned(),
            fcrdns_detail: detail,
        });
    }
    Ok(Report::new(&domain, top, lookups, checks))
}

/// The RFC 7208 name of a result.
pub fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(&str, &str)]) -> BTreeMap<String, Published> {
        list.iter()
            .map(|(n, t)| (n.to_string(), Published::One(t.to_string())))
            .collect()
    }

    #[test]
    fn picks_the_spf_record_among_txt_records() {
        assert_eq!(
            Published::from_txt(&["google-site-verification=x", "v=spf1 ip4:192.0.2.10 ~all"]),
            Published::One("v=spf1 ip4:192.0.2.10 ~all".into())
        );
        assert_eq!(
            Published::from_txt(&["V=SPF1 -all"]),
            Published::One("V=SPF1 -all".into())
        );
        assert_eq!(Published::from_txt(&["v=spf10 -all"]), Published::None);
        assert_eq!(Published::from_txt::<&str>(&[]), Published::None);
        assert_eq!(
            Published::from_txt(&["v=spf1 -all", "v=spf1 ~all"]),
            Published::Many(vec!["v=spf1 -all".into(), "v=spf1 ~all".into()])
        );
    }

    #[test]
    fn validates_what_mail_auth_reads_leniently() {
        assert_eq!(
            validate("v=spf1 ip4:192.0.2.10 ip6:2001:db8::/32 a mx/24 -all"),
            Ok(())
        );
        assert_eq!(
            validate("v=spf1 include:_spf.example.net redirect=x.example"),
            Ok(())
        );
        assert!(validate("v=spf1 ip4:192.0.2.10 ~al").is_err());
        assert!(validate("v=spf1 ip4:300.1.1.1 ~all").is_err());
        assert!(validate("v=spf1 ip4:192.0.2.10/33 ~all").is_err());
        assert!(validate("v=spf1 ip6:2001:db8::/129 ~all").is_err());
        assert_eq!(
            validate("v=spf1 bogus:x -all"),
            Err("bogus:x: unknown mechanism".into())
        );
    }

    #[test]
    fn follows_literal_includes_and_redirects_only() {
        assert_eq!(
            references("v=spf1 include:_spf.Example.com. a mx include:%{d}.x redirect=r.example"),
            vec!["_spf.example.com".to_owned(), "r.example".to_owned()]
        );
        assert!(references("v=spf1 ip4:300.0.0.1 -all").is_empty());
    }

    #[test]
    fn an_ip4_only_record_costs_no_lookup() {
        let r = recs(&[("d.example", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::/32 ~all")]);
        let c = count_lookups("d.example", &r);
        assert_eq!(c.total, 0);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn counts_every_querying_term_across_includes() {
        let r = recs(&[
            (
                "d.example",
                "v=spf1 a mx:mail.d.example include:i.example ptr exists:%{i}.x.example redirect=r.example",
            ),
            ("i.example", "v=spf1 a include:j.example -all"),
            ("j.example", "v=spf1 ip4:198.51.100.0/24 -all"),
            ("r.example", "v=spf1 mx -all"),
        ]);
        let c = count_lookups("D.example.", &r);
        // d: a, mx, include, ptr, exists, redirect = 6; i: a, include = 2; r: mx = 1.
        assert_eq!(c.total, 9, "{c:#?}");
        assert_eq!(c.terms[0], "a (in d.example)");
        assert!(c
            .terms
            .contains(&"include:j.example (in i.example)".to_owned()));
        assert!(c
            .terms
            .contains(&"redirect=r.example (in d.example)".to_owned()));
    }

    #[test]
    fn eleven_lookups_exceed_the_limit() {
        let top = format!(
            "v=spf1 {} a:a1.d.example a:a2.d.example a:a3.d.example mx mx:m2.d.example \
             mx:m3.d.example ip4:192.0.2.10 ~all",
            (1..=5)
                .map(|i| format!("include:i{i}.d.example"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut list = vec![("d.example".to_owned(), top)];
        for i in 1..=5 {
            list.push((format!("i{i}.d.example"), "v=spf1 -all".to_owned()));
        }
        let r: BTreeMap<String, Published> = list
            .into_iter()
            .map(|(n, t)| (n, Published::One(t)))
            .collect();
        let c = count_lookups("d.example", &r);
        assert_eq!(c.total, 11);
        let report = Report::new("d.example", r["d.example"].clone(), c, vec![]);
        assert!(!report.ok);
        assert!(
            report.problems[0].contains("11 DNS lookups"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn loops_and_missing_includes_are_permerrors() {
        let mut r = recs(&[
            (
                "a.example",
                "v=spf1 include:b.example include:c.example -all",
            ),
            ("b.example", "v=spf1 include:a.example -all"),
        ]);
        r.insert("c.example".into(), Published::None);
        let c = count_lookups("a.example", &r);
        assert_eq!(c.total, 3);
        assert!(c.notes.iter().any(|n| n.contains("loop")), "{c:#?}");
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("c.example is included but publishes no SPF record")),
            "{c:#?}"
        );
    }

    #[test]
    fn suggestion_adds_missing_ips_in_front() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            suggest_record(
                &Published::One("v=spf1 include:_spf.example.net ~all".into()),
                &[ip("192.0.2.100")]
            ),
            "v=spf1 ip4:192.0.2.100 include:_spf.example.net ~all"
        );
        assert_eq!(
            suggest_record(&Published::None, &[ip("192.0.2.10"), ip("192.0.2.100")]),
            "v=spf1 ip4:192.0.2.10 ip4:192.0.2.100 ~all"
        );
        // A record that does not parse is replaced.
        assert_eq!(
            suggest_record(
                &Published::One("v=spf1 ip4:300.1.1.1 ~all".into()),
                &[ip("192.0.2.10")]
            ),
            "v=spf1 ip4:192.0.2.10 ~all"
        );
    }

    fn ipc(ip: &str, spf: &str, fcrdns: &str, ptr: &[&str]) -> IpCheck {
        IpCheck {
            ip: ip.parse().unwrap(),
            spf: spf.into(),
            ptr: ptr.iter().map(|s| s.to_string()).collect(),
            fcrdns: fcrdns.into(),
            fcrdns_detail: None,
        }
    }

    #[test]
    fn a_covering_record_with_fcrdns_is_ok() {
        let p = Published::One("v=spf1 ip4:192.0.2.10 ~all".into());
        let r = Report::new(
            "d.example",
            p,
            LookupCount::default(),
            vec![ipc("192.0.2.10", "pass", "pass", &["mail.d.example"])],
        );
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.suggested_record, None);
        assert!(r.render().contains("ok: every egress IP passes SPF"));
    }

    #[test]
    fn uncovered_ip_and_missing_ptr_are_reported_with_the_record_to_publish() {
        let p = Published::One("v=spf1 ip4:192.0.2.10 ~all".into());
        let r = Report::new(
            "d.example",
            p,
            LookupCount::default(),
            vec![
                ipc("192.0.2.10", "pass", "pass", &["mail.d.example"]),
                ipc("192.0.2.100", "softfail", "permerror", &[]),
            ],
        );
        assert!(!r.ok);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(r.problems[0].contains("192.0.2.100 is not authorised"));
        assert!(r.problems[1].contains("192.0.2.100 has no PTR record"));
        assert_eq!(
            r.suggested_record.as_deref(),
            Some("v=spf1 ip4:192.0.2.100 ip4:192.0.2.10 ~all")
        );
        assert!(r
            .render()
            .contains("publish this SPF record (TXT at d.example):"));
    }

    #[test]
    fn a_broken_record_is_replaced_whole() {
        let p = Published::One("v=spf1 ip4:192.0.2.10 ~al".into());
        let r = Report::new(
            "d.example",
            p,
            LookupCount::default(),
            vec![ipc("192.0.2.10", "permerror", "pass", &["mail.d.example"])],
        );
        assert!(!r.ok);
        assert!(r.problems[0].contains("does not parse"), "{:?}", r.problems);
        assert_eq!(
            r.suggested_record.as_deref(),
            Some("v=spf1 ip4:192.0.2.10 ~all")
        );
    }

    #[test]
    fn a_failed_lookup_suggests_nothing() {
        let r = Report::new(
            "d.example",
            Published::Error("timed out".into()),
            LookupCount::default(),
            vec![ipc("192.0.2.10", "temperror", "temperror", &[])],
        );
        assert!(!r.ok);
        assert!(
            r.problems[0].contains("failed: timed out"),
            "{:?}",
            r.problems
        );
        assert_eq!(r.suggested_record, None);
    }

    #[test]
    fn several_records_are_a_problem() {
        let r = Report::new(
            "d.example",
            Published::Many(vec!["v=spf1 -all".into(), "v=spf1 ~all".into()]),
            LookupCount::default(),
            vec![ipc("192.0.2.10", "permerror", "pass", &["m"])],
        );
        assert!(r.problems[0].contains("publishes 2 SPF records"));
        assert_eq!(
            r.suggested_record.as_deref(),
            Some("v=spf1 ip4:192.0.2.10 ~all")
        );
    }
}
