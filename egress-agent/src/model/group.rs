//! A policy's gateway group and its active member.
//!
//! The group is every node the policy's `gateway` names (one for `nodeName`, every matching
//! node with an InternalIP for `nodeSelector`), in a deterministic order: the node label
//! [`PRIORITY_LABEL`] (an integer, lower first; nodes without it, or with a value that is not
//! an integer, after those with it), then the name.
//!
//! The active member is chosen from what this node knows of the members' health
//! ([`GatewayHealth`], from heartbeats the members' datapaths answer):
//!
//! - **no health information** (nothing heard yet, or a group of one): the first member, as
//!   with a single gateway. A node that has just started sends where it always did.
//! - **default (no preemption)**: among the members alive, the one healthy the longest. A
//!   member that comes back has been healthy for a moment only, so it stands by: no second
//!   switch-over when it returns. Members whose healthy times differ by less than
//!   [`TIE_TOLERANCE`] are equal and the group order decides, so that two nodes that measure
//!   the same answers a few milliseconds apart still pick the same member. The healthy time
//!   is the member's own (it says it in each answer), not the asker's: every node hears the
//!   same numbers, and the differences between members do not move with time, so the choice
//!   changes only when a member dies or comes back.
//! - **`preempt: true`**: the first member alive in group order.
//! - members not heard of yet count after the living ones: if no member is alive, the first
//!   member not known dead is chosen (this node may just not have heard it yet).
//! - **every member known dead**: the policy stays programmed, to the first member, and is
//!   `Ready=False` (`NoHealthyGateway`). Selected pods' traffic goes into the tunnel and is
//!   lost until a member answers. The other way, unprogramming the policy, would give the
//!   pods their normal path: their mail would leave from their own node's address, which SPF
//!   does not cover (soft-fail, spam, the domain's reputation), and traffic meant to come
//!   from the egress IP would come from addresses the receiving side never agreed to. Fail
//!   closed: an outage is visible and ends by itself when a member answers; a leak is
//!   neither. Sending to the first member rather than dropping at the source also keeps
//!   traffic flowing when only this node's view is wrong (its heartbeats lost while the
//!   tunnel still works), and needs no datapath change.

use std::{collections::BTreeMap, time::Duration};

use super::{GatewayHealth, GatewayTransition, Node, PolicyStatus};

/// The node label that orders a gateway group: an integer, lower first.
pub const PRIORITY_LABEL: &str = "egress-gateway.io/priority";

/// Members healthy for times closer than this are equally long healthy (the group order
/// decides). Larger than what two nodes' measurements of one answer differ by (a heartbeat
/// interval and the round trip), far smaller than the time a returning member needs to
/// catch up (it never does: the active member's lead stays what it was).
pub const TIE_TOLERANCE: Duration = Duration::from_secs(1);

/// The group order: priority (absent last), then name.
pub fn order<'a>(members: impl IntoIterator<Item = &'a Node>) -> Vec<&'a Node> {
    let mut v: Vec<&Node> = members.into_iter().collect();
    v.sort_by_key(|n| (priority(n).is_none(), priority(n), n.name.clone()));
    v
}

/// A node's priority label, when it is an integer.
pub fn priority(n: &Node) -> Option<i64> {
    n.labels.get(PRIORITY_LABEL)?.trim().parse().ok()
}

/// How the active member was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The group has one member.
    Single,
    /// No member is known alive: the first member not known dead (all of them unheard, at
    /// first).
    Unheard,
    /// The member alive the longest (default).
    LongestHealthy,
    /// The first member alive (`preempt: true`).
    FirstHealthy,
    /// Every member is known dead: the first member, where traffic is held.
    NoneHealthy,
}

impl Choice {
    /// For the Ready message.
    pub fn describe(self) -> &'static str {
        match self {
            Choice::Single => "the only member",
            Choice::Unheard => "the first member not known dead (no heartbeat answered yet)",
            Choice::LongestHealthy => "healthy the longest",
            Choice::FirstHealthy => "the first healthy member (preempt)",
            Choice::NoneHealthy => "no member healthy",
        }
    }
}

/// The members alive, by name, in group order.
pub fn healthy<'a>(group: &[&'a Node], health: &BTreeMap<String, GatewayHealth>) -> Vec<&'a str> {
    group
        .iter()
        .filter(|n| matches!(health.get(&n.name), Some(GatewayHealth::Alive { .. })))
        .map(|n| n.name.as_str())
        .collect()
}

/// The active member (an index into `group`, which is ordered and not empty) and how it was
/// chosen.
pub fn choose(
    group: &[&Node],
    health: &BTreeMap<String, GatewayHealth>,
    preempt: bool,
) -> (usize, Choice) {
    if group.len() <= 1 {
        return (0, Choice::Single);
    }
    let alive: Vec<(usize, Duration)> = group
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match health.get(&n.name) {
            Some(GatewayHealth::Alive { healthy_for }) => Some((i, *healthy_for)),
            _ => None,
        })
        .collect();
    if let Some(&(first, _)) = alive.first() {
        if preempt {
            return (first, Choice::FirstHealthy);
        }
        let longest = alive.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let i = alive
            .iter()
            .find(|(_, d)| *d + TIE_TOLERANCE > longest)
            .map_or(first, |(i, _)| *i);
        return (i, Choice::LongestHealthy);
    }
    match group
        .iter()
        .position(|n| !matches!(health.get(&n.name), Some(GatewayHealth::Dead)))
    {
        Some(i) => (i, Choice::Unheard),
        None => (0, Choice::NoneHealthy),
    }
}

/// Why a policy's active gateway changed (`lastTransition.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionReason {
    /// The policy had no gateway (not found, invalid, ...) and has one now.
    GatewayFound,
    /// The policy has no gateway any more.
    NoGateway,
    /// The former gateway is no longer in the group (relabelled, deleted, the policy changed).
    GroupChanged,
    /// The former gateway stopped answering heartbeats.
    GatewayUnhealthy,
    /// A member before the former gateway in group order is healthy again (`preempt`).
    Preempted,
    /// Anything else: the writing agent's view of the group's health changed (it heard its
    /// first heartbeats, or the group's order changed).
    Reelected,
}

impl TransitionReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            TransitionReason::GatewayFound => "GatewayFound",
            TransitionReason::NoGateway => "NoGateway",
            TransitionReason::GroupChanged => "GroupChanged",
            TransitionReason::GatewayUnhealthy => "GatewayUnhealthy",
            TransitionReason::Preempted => "Preempted",
            TransitionReason::Reelected => "Reelected",
        }
    }
}

/// The `lastTransition` of `new` given the status written before (`old`): the old one while
/// the active gateway stays, a new one (without time: the writer sets it) when it changed.
/// Nothing before a first status.
pub fn transition(old: Option<&PolicyStatus>, new: &PolicyStatus) -> Option<GatewayTransition> {
    let old = old?;
    if old.gateway_node == new.gateway_node {
        return old.last_transition.clone();
    }
    let reason = match (&old.gateway_node, &new.gateway_node) {
        (None, _) => TransitionReason::GatewayFound,
        (_, None) => TransitionReason::NoGateway,
        (Some(from), Some(to)) => {
            let pos = |n: &String| new.gateway_group.iter().position(|m| m == n);
            let none_healthy = new.conditions.iter().any(|c| {
                c.is(super::ConditionType::Ready)
                    && c.reason == super::Reason::NoHealthyGateway.as_str()
            });
            if pos(from).is_none() {
                TransitionReason::GroupChanged
            } else if !new.healthy_gateways.contains(from)
                && (!new.healthy_gateways.is_empty() || none_healthy)
            {
                TransitionReason::GatewayUnhealthy
            } else if new.healthy_gateways.contains(from) && pos(to) < pos(from) {
                TransitionReason::Preempted
            } else {
                TransitionReason::Reelected
            }
        }
    };
    Some(GatewayTransition {
        from: old.gateway_node.clone(),
        to: new.gateway_node.clone(),
        reason: reason.as_str().into(),
        time: None,
    })
}
