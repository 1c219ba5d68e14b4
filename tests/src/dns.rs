//! A real DNS server in a lab namespace: dnsmasq, authoritative for the zones it is given,
//! serving only the records it is given (no upstream, no /etc/hosts).

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::lab::{command_in, exec};

/// A record dnsmasq serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// TXT at a name (ASCII; longer than 255 bytes becomes several character strings).
    Txt(String, String),
    /// A record and the matching PTR (`--host-record`).
    Host(String, Ipv4Addr),
    /// A record only, no PTR.
    A(String, Ipv4Addr),
    /// PTR only: `ip` points at `name`.
    Ptr(Ipv4Addr, String),
    /// MX: domain, exchange, preference.
    Mx(String, String, u16),
}

impl Record {
    pub fn txt(name: &str, text: &str) -> Record {
        Record::Txt(name.into(), text.into())
    }
    pub fn host(name: &str, ip: Ipv4Addr) -> Record {
        Record::Host(name.into(), ip)
    }
    pub fn a(name: &str, ip: Ipv4Addr) -> Record {
        Record::A(name.into(), ip)
    }
    pub fn ptr(ip: Ipv4Addr, name: &str) -> Record {
        Record::Ptr(ip, name.into())
    }
    pub fn mx(domain: &str, exchange: &str, pref: u16) -> Record {
        Record::Mx(domain.into(), exchange.into(), pref)
    }

    /// The dnsmasq configuration line that publishes it.
    fn conf_line(&self) -> String {
        match self {
            // One quoted character string per 255 bytes (RFC 1035 3.3.14); receivers join
            // them. dnsmasq unquotes them (in a configuration file, not on its command line).
            Record::Txt(n, t) => {
                let parts: Vec<String> = t
                    .as_bytes()
                    .chunks(255)
                    .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                    .collect();
                format!("txt-record={n},{}", parts.join(","))
            }
            Record::Host(n, ip) => format!("host-record={n},{ip}"),
            // `address=/name/ip` answers A queries for `name` (and its subdomains, which the
            // tests do not use) without a PTR.
            Record::A(n, ip) => format!("address=/{n}/{ip}"),
            Record::Ptr(ip, n) => format!("ptr-record={},{n}", reverse_name(*ip)),
            Record::Mx(d, x, p) => format!("mx-host={d},{x},{p}"),
        }
    }
}

/// `10.2.0.192.in-addr.arpa` for 192.0.2.10.
pub fn reverse_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
}

/// The reverse zone (`2.0.192.in-addr.arpa`) of an address's /24.
fn reverse_zone(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.in-addr.arpa", o[2], o[1], o[0])
}

/// dnsmasq's configuration: only `records`, only on `ip`, authoritative for `zones` and the
/// records' reverse zones.
fn config(ip: Ipv4Addr, zones: &[&str], records: &[Record], log: &Path) -> String {
    let mut c = format!(
        "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={ip}\nport=53\n\
         # dnsmasq-base has no `dnsmasq` user: stay root (the lab is root-only anyway)\n\
         user=root\ngroup=root\npid-file=\nlog-queries\nlog-facility={}\n",
        log.display()
    );
    let mut local: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
    for r in records {
        match r {
            Record::Host(_, ip) | Record::A(_, ip) | Record::Ptr(ip, _) => {
                local.push(reverse_zone(*ip))
            }
            Record::Txt(..) | Record::Mx(..) => {}
        }
        c.push_str(&r.conf_line());
        c.push('\n');
    }
    local.sort();
    local.dedup();
    for z in &local {
        let _ = writeln!(c, "local=/{z}/");
    }
    c
}

/// dnsmasq running in a namespace; killed on drop.
pub struct DnsServer {
    pub addr: SocketAddrV4,
    child: Child,
    pub log: PathBuf,
}

impl DnsServer {
    /// Starts dnsmasq in namespace `ns` on `ip`:53, authoritative (NXDOMAIN for anything
    /// else) for `zones` and for the reverse zones of the addresses in `records`, and waits
    /// until it answers. Its configuration (`dnsmasq.conf`) and log (`dnsmasq.log`, every
    /// query) go into `dir`.
    pub fn start(
        ns: &str,
        ip: Ipv4Addr,
        zones: &[&str],
        records: &[Record],
        dir: &Path,
    ) -> Result<DnsServer> {
        let log = dir.join("dnsmasq.log");
        let conf = dir.join("dnsmasq.conf");
        fs::write(&conf, config(ip, zones, records, &log))?;
        let child = command_in(ns, "dnsmasq")?
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base, or `cargo xtask setup`)")?;
        let mut server = DnsServer {
            addr: SocketAddrV4::new(ip, 53),
            child,
            log,
        };
        server.wait_ready(ns)?;
        Ok(server)
    }

    fn wait_ready(&mut self, ns: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "dnsmasq in {ns} exited ({status}); log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let sockets = exec(ns, &["ss", "-Hlun", "sport", "=", ":53"]).unwrap_or_default();
            if sockets.contains(&self.addr.ip().to_string()) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("dnsmasq in {ns} did not start listening on {}", self.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ADDR:PORT` for `--dns-server` and resolvers.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::V4(self.addr)
    }

    /// The server's log so far (one line per query).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The zone as a person reads it, for the demo's output.
    pub fn describe(records: &[Record]) -> String {
        let mut s = String::new();
        for r in records {
            let _ = match r {
                Record::Txt(n, t) => writeln!(s, "  {n:<28} TXT  \"{t}\""),
                Record::Host(n, ip) => writeln!(
                    s,
                    "  {n:<28} A    {ip}\n  {:<28} PTR  {n}",
                    reverse_name(*ip)
                ),
                Record::A(n, ip) => writeln!(s, "  {n:<28} A    {ip}"),
                Record::Ptr(ip, n) => writeln!(s, "  {:<28} PTR  {n}", reverse_name(*ip)),
                Record::Mx(d, x, p) => writeln!(s, "  {d:<28} MX   {p} {x}"),
            };
        }
        s
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        let ip = Ipv4Addr::new(192, 0, 2, 10);
        assert_eq!(reverse_name(ip), "10.2.0.192.in-addr.arpa");
        assert_eq!(reverse_zone(ip), "2.0.192.in-addr.arpa");
    }

    #[test]
    fn long_txt_becomes_several_character_strings() {
        let long = "v=spf1 ".to_owned() + &"a".repeat(300);
        let line = Record::txt("d.example", &long).conf_line();
        let parts: Vec<&str> = line
            .trim_start_matches("txt-record=d.example,")
            .split("\",\"")
            .collect();
        assert_eq!(parts.len(), 2, "{line}");
        assert_eq!(parts[0].len(), 256, "a quote and 255 bytes");
    }

    #[test]
    fn config_serves_only_its_records_authoritatively() {
        let ip = Ipv4Addr::new(198, 51, 100, 10);
        let c = config(
            ip,
            &["d.example"],
            &[
                Record::txt("d.example", "v=spf1 ip4:192.0.2.10 ~all"),
                Record::host("mail.d.example", Ipv4Addr::new(192, 0, 2, 10)),
                Record::a("x.d.example", Ipv4Addr::new(192, 0, 2, 20)),
            ],
            Path::new("/tmp/dns.log"),
        );
        for line in [
            "no-resolv",
            "no-hosts",
            "listen-address=198.51.100.10",
            "txt-record=d.example,\"v=spf1 ip4:192.0.2.10 ~all\"",
            "host-record=mail.d.example,192.0.2.10",
            "address=/x.d.example/192.0.2.20",
            "local=/d.example/",
            "local=/2.0.192.in-addr.arpa/",
            "log-facility=/tmp/dns.log",
        ] {
            assert!(c.lines().any(|l| l == line), "no {line:?} in\n{c}");
        }
        assert_eq!(c.matches("local=/2.0.192.in-addr.arpa/").count(), 1);
    }
}
