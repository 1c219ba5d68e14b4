//! SPF evaluation: `check_host()` (RFC 7208 4) for one egress IP with mail-auth, against the
//! DNS of one server or the system's resolvers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use mail_auth::{
    hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    spf::verify::SpfParameters,
    MessageAuthenticator, Parameters, SpfResult,
};

use super::SpfError;

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

/// `check_host()` for `postmaster@<domain>` mailing from `ip`: its RFC 7208 name.
pub(super) async fn check_host(
    auth: &MessageAuthenticator,
    domain: &str,
    ip: Ipv4Addr,
) -> &'static str {
    let sender = format!("postmaster@{domain}");
    let out = auth
        .check_host(Parameters::new(SpfParameters::new(
            IpAddr::V4(ip),
            domain,
            domain,
            "spf-check.egress-agent",
            &sender,
        )))
        .await;
    spf_word(out.result())
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
