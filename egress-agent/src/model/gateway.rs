//! Resolving a checked policy against the nodes: its gateway node, gateway address and egress
//! IP, and the conditions that say how.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use egress_common::policy::MAX_POLICIES;
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    condition::{cond, ConditionType, Reason, Status},
    crd::Ipv6Mode,
    group::{self, Choice},
    route_probe,
    spec::check_spec,
    LocalFacts, Node, Policy, PolicyCondition, PolicyStatus, Selector,
};

/// A valid, resolved policy.
#[derive(Clone, Debug)]
pub(super) struct Active {
    pub id: u32,
    pub gateway: String,
    pub gateway_ip: Ipv4Addr,
    /// The gateway group in order, and its members this node hears as healthy.
    pub group: Vec<String>,
    pub healthy: Vec<String>,
    /// `None`: taken from an interface this node cannot see.
    pub egress_ip: Option<Ipv4Addr>,
    pub destinations: Vec<Ipv4Net>,
    pub excluded: Vec<Ipv4Net>,
    /// The IPv6 destinations to refuse (empty with `ipv6: pass`), and the excluded ones.
    pub refused6: Vec<Ipv6Net>,
    pub excluded6: Vec<Ipv6Net>,
    pub selectors: Vec<(Option<Selector>, Option<Selector>)>,
}

/// Resolves one policy against the nodes: `Ok` with its extra conditions (a `Ready=True` one
/// first), or the conditions saying why it is not active.
pub(super) fn resolve(
    p: &Policy,
    st: &PolicyStatus,
    node_by_name: &BTreeMap<&str, &Node>,
    nodes: &[&Node],
    this_node: &str,
    local: &LocalFacts,
) -> Result<(Active, Vec<PolicyCondition>), Vec<PolicyCondition>> {
    let not_ready =
        |reason: Reason, msg: String| vec![cond(ConditionType::Ready, false, reason, msg)];
    let c = check_spec(&p.spec).map_err(|(r, m)| not_ready(r, m))?;
    let mut conds = Vec::new();
    let mode = p.spec.ipv6.unwrap_or_default();
    if !c.destinations6.is_empty() {
        let list = c
            .destinations6
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        conds.push(match mode {
            Ipv6Mode::Refuse => cond(
                ConditionType::IPv6Egress,
                false,
                Reason::IPv6Refused,
                format!(
                    "the gateway does not translate IPv6 yet: selected pods' IPv6 to {list} is \
                     refused at once (a connect with a reset, anything else with ICMPv6 \
                     administratively prohibited), so that they fall back to IPv4, instead of \
                     leaving from their node's own address"
                ),
            ),
            Ipv6Mode::Pass => cond(
                ConditionType::IPv6Egress,
                false,
                Reason::IPv6Passed,
                format!(
                    "ipv6: pass: selected pods' IPv6 to {list} leaves from their node's own \
                     IPv6 address, which SPF does not cover"
                ),
            ),
        });
    }
    let Some(id) = st.datapath_id else {
        return Err(not_ready(
            Reason::TooManyPolicies,
            format!("no datapath id left: at most {} policies", MAX_POLICIES - 1),
        ));
    };
    let g = &p.spec.gateway;
    let group: Vec<&Node> = if let Some(name) = &g.node_name {
        match node_by_name.get(name.as_str()) {
            Some(n) if n.ip.is_some() => vec![*n],
            Some(_) => {
                return Err(not_ready(
                    Reason::GatewayNotFound,
                    format!("gateway node {name} has no InternalIP"),
                ))
            }
            None => {
                return Err(not_ready(
                    Reason::GatewayNotFound,
                    format!("gateway node {name} does not exist; its pods keep their normal path"),
                ))
            }
        }
    } else {
        let sel = Selector::new(g.node_selector.as_ref().expect("checked: one of the two"))
            .map_err(|e| not_ready(Reason::InvalidGateway, e.to_string()))?;
        let matching = group::order(
            nodes
                .iter()
                .copied()
                .filter(|n| n.ip.is_some() && sel.matches(&n.labels)),
        );
        if matching.is_empty() {
            return Err(not_ready(
                Reason::GatewayNotFound,
                "gateway.nodeSelector matches no node with an InternalIP; its pods keep their normal path".into(),
            ));
        }
        matching
    };
    let (chosen, choice) = group::choose(&group, &local.gateway_health, g.preempt == Some(true));
    let gw: &Node = group[chosen];
    let names = |v: &[&Node]| v.iter().map(|n| n.name.clone()).collect::<Vec<String>>();
    let healthy = group::healthy(&group, &local.gateway_health);
    let gateway_ip = gw.ip.expect("filtered on ip");
    let on_gateway = gw.name == this_node;
    let egress_ip = if let Some(ifname) = &g.interface {
        if on_gateway {
            match local.interfaces.get(ifname).and_then(|a| a.first()) {
                Some(ip) => Some(*ip),
                None => {
                    return Err(not_ready(
                        Reason::InterfaceNotFound,
                        format!(
                            "gateway {}: interface {ifname} is missing or has no IPv4 address",
                            gw.name
                        ),
                    ))
                }
            }
        } else {
            None
        }
    } else {
        let ip = c.egress_ip.unwrap_or(gateway_ip);
        if c.egress_ip.is_some() {
            let mut known: BTreeSet<Ipv4Addr> = gw.addresses.iter().copied().collect();
            known.insert(gateway_ip);
            if on_gateway {
                known.extend(local.interfaces.values().flatten().copied());
            }
            if known.contains(&ip) {
                conds.push(cond(
                    ConditionType::EgressIPOnGateway,
                    true,
                    Reason::Assigned,
                    format!("{ip} is on {}", gw.name),
                ));
            } else if !on_gateway {
                // Only the gateway's agent sees its interface addresses; it writes the status.
                conds.push(cond(
                    ConditionType::EgressIPOnGateway,
                    Status::Unknown,
                    Reason::CheckedOnGateway,
                    format!(
                        "{ip} is not among {}'s node addresses; its agent checks its interfaces",
                        gw.name
                    ),
                ));
            } else {
                conds.push(cond(
                    ConditionType::EgressIPOnGateway,
                    false,
                    Reason::EgressIPNotOnGateway,
                    format!(
                        "{ip} is not among the known addresses of gateway {}; replies reach it only if the address is routed to that node",
                        gw.name
                    ),
                ));
            }
        }
        if ip == gateway_ip || gw.addresses.contains(&ip) {
            conds.push(cond(
                ConditionType::EgressIPDedicated,
                false,
                Reason::NodeAddress,
                format!(
                    "{ip} is also gateway {}'s own address: the node's own traffic and its unselected pods (masqueraded by the CNI) leave from it too; a dedicated egress IP keeps the domain's reputation to the selected pods",
                    gw.name
                ),
            ));
            if let Some(h) = local.host_ports.as_ref().filter(|_| on_gateway) {
                conds.push(match h.advice(ip) {
                    Some(advice) => cond(
                        ConditionType::HostPortsApart,
                        false,
                        Reason::EphemeralPortsOverlap,
                        advice,
                    ),
                    None => cond(
                        ConditionType::HostPortsApart,
                        true,
                        Reason::OutsideEphemeralPorts,
                        format!(
                            "the host's ephemeral ports (net.ipv4.ip_local_port_range {}-{}, less \
                             reserved ports) are outside the NAT range {}-{}; ICMP echo \
                             identifiers cannot be kept apart from the host's pings on a shared \
                             address",
                            h.ephemeral[0], h.ephemeral[1], h.nat[0], h.nat[1]
                        ),
                    ),
                });
            }
        }
        Some(ip)
    };
    if let (true, Some(ip)) = (on_gateway, egress_ip) {
        check_routes(ip, &c.destinations, local)
            .map_err(|m| not_ready(Reason::EgressIPUnrouted, m))?;
    }
    let ready = match choice {
        Choice::Single => cond(
            ConditionType::Ready,
            true,
            Reason::Active,
            format!("gateway {} ({gateway_ip})", gw.name),
        ),
        Choice::NoneHealthy => cond(
            ConditionType::Ready,
            false,
            Reason::NoHealthyGateway,
            format!(
                "no member of the gateway group ({}) answers heartbeats: selected pods' \
                 traffic is sent to {} (the first member) and lost until one answers; it \
                 never leaves from their nodes' own addresses",
                names(&group).join(", "),
                gw.name
            ),
        ),
        _ => cond(
            ConditionType::Ready,
            true,
            Reason::Active,
            format!(
                "gateway {} ({gateway_ip}), {} of the group {} (healthy: {})",
                gw.name,
                choice.describe(),
                names(&group).join(", "),
                if healthy.is_empty() {
                    "none heard yet".to_owned()
                } else {
                    healthy.join(", ")
                }
            ),
        ),
    };
    conds.insert(0, ready);
    Ok((
        Active {
            id,
            gateway: gw.name.clone(),
            gateway_ip,
            group: names(&group),
            healthy: healthy.into_iter().map(str::to_owned).collect(),
            egress_ip,
            destinations: c.destinations,
            excluded: c.excluded,
            refused6: match mode {
                Ipv6Mode::Refuse => c.destinations6,
                Ipv6Mode::Pass => Vec::new(),
            },
            excluded6: c.excluded6,
            selectors: c.selectors,
        },
        conds,
    ))
}

/// On the gateway: translated packets leave out of the interface that holds the egress IP
/// (the kernel's route lookup from the egress IP picks the next hop there), so the kernel must
/// route from the egress IP to every destination out of that interface. Where it does not (a
/// second NIC without policy routing), packets would leave nowhere while replies arrive: the
/// policy is refused instead. An egress IP on no interface (routed to the node) and pairs the
/// agent did not look up are not checked.
fn check_routes(ip: Ipv4Addr, destinations: &[Ipv4Net], local: &LocalFacts) -> Result<(), String> {
    let Some(holder) = local
        .interfaces
        .iter()
        .find(|(_, a)| a.contains(&ip))
        .map(|(n, _)| n)
    else {
        return Ok(());
    };
    for d in destinations {
        let probe = route_probe(*d);
        match local.routes.get(&(ip, probe)) {
            Some(Some(out)) if out != holder => {
                return Err(format!(
                    "{ip} is on {holder}, but the kernel routes from it to {d} out of {out}: add a route from {ip} out of {holder} (ip rule add from {ip} lookup <table>; ip route add default via <router> dev {holder} table <table>)"
                ))
            }
            Some(None) => {
                return Err(format!(
                    "{ip} is on {holder}, but the kernel has no route from it to {d}"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}
