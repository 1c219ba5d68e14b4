//! Checks of a policy's spec that need no cluster: CIDRs, selectors, the gateway fields.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{EgressGatewayPolicySpec, Reason, Selector};

/// Parses CIDRs into IPv4 and IPv6 ones (host bits cleared), or says which is bad.
fn parse_cidrs(list: &[String], field: &str) -> Result<(Vec<Ipv4Net>, Vec<Ipv6Net>), String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for s in list {
        match s.trim().parse::<IpNet>() {
            Ok(IpNet::V4(n)) => v4.push(n.trunc()),
            Ok(IpNet::V6(n)) => v6.push(n.trunc()),
            Err(_) => {
                return Err(format!(
                    "{field}: {s:?} is not a CIDR (like 203.0.113.0/24)"
                ))
            }
        }
    }
    Ok((v4, v6))
}

fn selector(
    s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    what: &str,
) -> Result<Option<Selector>, String> {
    s.as_ref()
        .map(|s| Selector::new(s).map_err(|e| format!("{what}: {e}")))
        .transpose()
}

/// Checks everything in the spec that does not depend on the cluster.
pub(super) struct Checked {
    pub destinations: Vec<Ipv4Net>,
    pub excluded: Vec<Ipv4Net>,
    pub destinations6: Vec<Ipv6Net>,
    pub excluded6: Vec<Ipv6Net>,
    pub selectors: Vec<(Option<Selector>, Option<Selector>)>,
    pub egress_ip: Option<Ipv4Addr>,
}

pub(super) fn check_spec(spec: &EgressGatewayPolicySpec) -> Result<Checked, (Reason, String)> {
    let (destinations, destinations6) = parse_cidrs(&spec.destination_cidrs, "destinationCIDRs")
        .map_err(|m| (Reason::InvalidCIDR, m))?;
    let (excluded, excluded6) =
        parse_cidrs(&spec.excluded_cidrs, "excludedCIDRs").map_err(|m| (Reason::InvalidCIDR, m))?;
    let mut selectors = Vec::new();
    for (i, s) in spec.selectors.iter().enumerate() {
        if s.pod_selector.is_none() && s.namespace_selector.is_none() {
            return Err((
                Reason::InvalidSelector,
                format!("selectors[{i}]: give a podSelector, a namespaceSelector or both (use podSelector: {{}} to select every pod)"),
            ));
        }
        let pod = selector(&s.pod_selector, &format!("selectors[{i}].podSelector"))
            .map_err(|m| (Reason::InvalidSelector, m))?;
        let ns = selector(
            &s.namespace_selector,
            &format!("selectors[{i}].namespaceSelector"),
        )
        .map_err(|m| (Reason::InvalidSelector, m))?;
        selectors.push((pod, ns));
    }
    let g = &spec.gateway;
    match (&g.node_name, &g.node_selector) {
        (Some(_), Some(_)) => {
            return Err((
                Reason::InvalidGateway,
                "gateway: give nodeName or nodeSelector, not both".into(),
            ))
        }
        (None, None) => {
            return Err((
                Reason::InvalidGateway,
                "gateway: give nodeName or nodeSelector".into(),
            ))
        }
        (None, Some(s)) => {
            Selector::new(s)
                .map_err(|e| (Reason::InvalidGateway, format!("gateway.nodeSelector: {e}")))?;
        }
        (Some(_), None) => {}
    }
    if g.egress_ip.is_some() && g.interface.is_some() {
        return Err((
            Reason::InvalidGateway,
            "gateway: give egressIP or interface, not both".into(),
        ));
    }
    let egress_ip = match &g.egress_ip {
        None => None,
        Some(s) => Some(s.trim().parse::<Ipv4Addr>().map_err(|_| {
            (
                Reason::InvalidGateway,
                format!("gateway.egressIP: {s:?} is not an IPv4 address"),
            )
        })?),
    };
    if selectors.is_empty() {
        return Err((
            Reason::NoSelectors,
            "selectors is empty: the policy selects no pod".into(),
        ));
    }
    if destinations.is_empty() {
        return Err((
            Reason::NoDestinations,
            "destinationCIDRs holds no IPv4 CIDR: nothing to send through the gateway".into(),
        ));
    }
    Ok(Checked {
        destinations,
        excluded,
        destinations6,
        excluded6,
        selectors,
        egress_ip,
    })
}
