//! The policy model, pure: from policies, pods, namespaces and nodes (whatever the source: the
//! Kubernetes API or the configuration file) it computes the exact map contents one node needs
//! and every policy's status. No I/O; every outcome of bad or conflicting input is defined:
//!
//! | situation | outcome | condition |
//! | --- | --- | --- |
//! | invalid CIDR, selector, or gateway spec (both/neither of `nodeName`/`nodeSelector`, both `egressIP` and `interface`, unparsable `egressIP`) | the policy is not programmed; its pods keep their normal path | `Ready=False` with reason `InvalidCIDR`, `InvalidSelector`, `InvalidGateway` |
//! | no `selectors` or no IPv4 `destinationCIDRs` | not programmed | `Ready=False`, `NoSelectors` / `NoDestinations` |
//! | gateway node unknown, or `nodeSelector` matches no node with an InternalIP | not programmed | `Ready=False`, `GatewayNotFound` |
//! | `nodeSelector` matches several nodes | they form the gateway group (priority label, then name); one is active: see `group` | `Ready=True`; message names the group and why this member |
//! | every member of the gateway group is known dead (missed heartbeats) | still programmed, to the first member: selected pods' traffic is lost, never sent from their own node (fail closed, see `group`) | `Ready=False`, `NoHealthyGateway` |
//! | a pod matched by two policies | the older policy (creation time, then name) gets it | `PodConflict=True` on the younger one |
//! | `egressIP` not among the gateway's known addresses | still programmed (the address may be routed to the node without being configured) | `EgressIPOnGateway=False`, `EgressIPNotOnGateway` (seen by the gateway's agent, which also knows its interfaces; other nodes say `Unknown`) |
//! | `interface` missing or without IPv4 on the gateway (known only there) | the gateway does not SNAT for the policy (its tunnel packets are dropped and counted) | `Ready=False`, `InterfaceNotFound` |
//! | the gateway's kernel routes from the egress IP to a destination out of another interface than the one holding it, or not at all (a second NIC without policy routing; known only there) | as `InterfaceNotFound` | `Ready=False`, `EgressIPUnrouted` |
//! | IPv6 CIDRs (the gateway does not translate IPv6 yet) | `ipv6: refuse` (default): selected pods' IPv6 to them is answered with ICMPv6 administratively prohibited; `ipv6: pass`: it keeps the normal path (the node's own address) | `IPv6Egress=False`, `IPv6Refused` / `IPv6Passed` |
//! | more than 1023 policies | the youngest get no datapath id, not programmed | `Ready=False`, `TooManyPolicies` |
//!
//! The cluster's pod and service CIDRs are always excluded. Hostnetwork pods, and pods without
//! a node or an IP, are never endpoints.
//!
//! Datapath ids (the tunnel VNI and counter index, 1..=1023) come from a hash of the policy name
//! (see `ids`).
//!
//! One concern per module: `types` (input and output), `spec` (checks that need no cluster),
//! `gateway` (resolving a policy against the nodes), `group` (the gateway group and its active
//! member), `condition` (condition types, reasons and
//! statuses as enums), `ids`, and `compute` (the pass itself).

mod compute;
pub mod condition;
pub mod crd;
mod gateway;
pub mod group;
mod ids;
pub mod ports;
pub mod selector;
mod spec;
mod tunnel;
mod types;

pub use compute::{compute, NEVER_VIA_GATEWAY};
pub use condition::{ConditionType, Reason, Status};
pub use crd::{
    EgressGatewayPolicy, EgressGatewayPolicySpec, EgressGatewayPolicyStatus, GatewaySpec,
    GatewayTransition, Ipv6Mode, PodSelection, PolicyCondition,
};
pub use ids::allocate_ids;
pub use selector::{Labels, Selector, SelectorError};
pub use tunnel::{protection, Protection, UnderlayFacts};
pub use types::{
    route_probe, Cluster, Desired, GatewayHealth, LocalFacts, LocalPod, Model, Namespace, Node,
    Pod, Policy, PolicyStatus, NAMESPACE_NAME_LABEL,
};

#[cfg(test)]
mod tests;
