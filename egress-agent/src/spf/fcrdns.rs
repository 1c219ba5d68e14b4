//! Forward-confirmed reverse DNS (the `iprev` check of RFC 8601): the IP's PTR names, and
//! whether one of them resolves back to it.

use std::net::{IpAddr, Ipv4Addr};

use mail_auth::{IprevResult, MessageAuthenticator, Parameters};

/// One IP's reverse DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fcrdns {
    /// The PTR names (empty: none).
    pub ptr: Vec<String>,
    /// `pass`, `fail`, `permerror`, `temperror` or `none`.
    pub result: &'static str,
    /// Why it did not pass.
    pub detail: Option<String>,
}

pub(super) async fn fcrdns(auth: &MessageAuthenticator, ip: Ipv4Addr) -> Fcrdns {
    let iprev = auth.verify_iprev(Parameters::new(IpAddr::V4(ip))).await;
    let (result, detail) = match &iprev.result {
        IprevResult::Pass => ("pass", None),
        IprevResult::Fail(e) => ("fail", Some(e.to_string())),
        IprevResult::TempError(e) => ("temperror", Some(e.to_string())),
        IprevResult::PermError(e) => ("permerror", Some(e.to_string())),
        IprevResult::None => ("none", None),
    };
    Fcrdns {
        ptr: iprev
            .ptr
            .iter()
            .flat_map(|p| p.iter().map(|n| n.trim_end_matches('.').to_owned()))
            .collect(),
        result,
        detail,
    }
}
