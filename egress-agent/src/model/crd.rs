//! The `EgressGatewayPolicy` custom resource (cluster-scoped), derived from these Rust types.
//! `egress-agent crd` prints it; `deploy/crd.yaml` is that output, checked by a test.
//! The configuration file uses the same `spec` shape.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the custom resource.
pub const GROUP: &str = "egress-gateway.io";

/// Sends the traffic of selected pods to selected destinations through one gateway node,
/// source-NATed to one egress IP.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[kube(
    group = "egress-gateway.io",
    version = "v1alpha1",
    kind = "EgressGatewayPolicy",
    plural = "egressgatewaypolicies",
    shortname = "egp",
    status = "EgressGatewayPolicyStatus",
    derive = "PartialEq",
    doc = "An egress gateway policy: selected pods reach selected destinations through one gateway node, source-NATed to one egress IP.",
    printcolumn = r#"{"name":"Gateway", "type":"string", "jsonPath":".status.gatewayNode"}"#,
    printcolumn = r#"{"name":"Egress IP", "type":"string", "jsonPath":".status.egressIP"}"#,
    printcolumn = r#"{"name":"Pods", "type":"integer", "jsonPath":".status.selectedPods"}"#,
    printcolumn = r#"{"name":"Ready", "type":"string", "jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewayPolicySpec {
    /// Which pods the policy applies to: a pod is selected when any entry matches it.
    pub selectors: Vec<PodSelection>,
    /// Destinations (CIDRs) whose traffic leaves through the gateway, e.g. `0.0.0.0/0` and
    /// `::/0`. IPv6 ones are not translated yet: see `ipv6`.
    #[serde(rename = "destinationCIDRs")]
    pub destination_cidrs: Vec<String>,
    /// Destinations inside `destinationCIDRs` that keep the normal path. The cluster's pod and
    /// service CIDRs are always excluded.
    #[serde(
        rename = "excludedCIDRs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub excluded_cidrs: Vec<String>,
    /// The gateway node and the source address traffic leaves with.
    pub gateway: GatewaySpec,
    /// What happens to selected pods' IPv6 traffic to the IPv6 `destinationCIDRs`, which the
    /// gateway does not translate yet: `refuse` (the default) answers it at once with ICMPv6
    /// destination unreachable (administratively prohibited), so that a mail server falls
    /// back to IPv4 at once instead of sending from its node's own IPv6 address and failing
    /// SPF; `pass` lets it leave from the node's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Mode>,
}

/// `spec.ipv6`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Ipv6Mode {
    #[default]
    Refuse,
    Pass,
}

/// One selector entry. Both parts must match; an absent part matches everything, but at least
/// one part must be given. Namespaces carry the label `kubernetes.io/metadata.name`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSelection {
    /// Labels of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Labels of the pods' namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// The gateway: exactly one of `nodeName` and `nodeSelector`; at most one of `egressIP` and
/// `interface`. Without either, traffic leaves with the gateway node's own (InternalIP) address.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The gateway node, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The gateway nodes, by labels. Every matching node (with an InternalIP) is a member of
    /// the policy's gateway group, ordered by the node label `egress-gateway.io/priority` (an
    /// integer, lower first; nodes without it after those with it), then by name. One member
    /// is active: the healthy member healthy the longest (a member that comes back stands
    /// by), or with `preempt` the first healthy member in that order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Source address after SNAT; it must be configured on (or routed to) the gateway node.
    #[serde(rename = "egressIP", default, skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<String>,
    /// Take the egress IP from this interface of the gateway node (its first IPv4 address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// When a member of the gateway group that comes before the active one (in priority,
    /// then name order) is healthy again, it takes over (a second, short switch-over). Off by
    /// default: a returning member stands by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt: Option<bool>,
}

/// What the agents made of the policy. Written by the agent on the gateway node (or, with no
/// gateway, on the first node by name).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewayPolicyStatus {
    /// The active gateway node (the member of the gateway group traffic is sent to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_node: Option<String>,
    /// The gateway group: every node `gateway` names, in order (priority label, then name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_group: Vec<String>,
    /// The members whose heartbeats the writing agent hears (empty while it has heard none:
    /// then the first member is active, as with a single gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub healthy_gateways: Vec<String>,
    /// The last change of the active gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<GatewayTransition>,
    /// The source address after SNAT.
    #[serde(rename = "egressIP", default, skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<String>,
    /// Pods the policy applies to (pods claimed by an older policy are not counted).
    #[serde(default)]
    pub selected_pods: u32,
    /// Datapath id (tunnel VNI and counter index), stable for the policy's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_id: Option<u32>,
    #[serde(default)]
    pub conditions: Vec<PolicyCondition>,
}

/// A change of a policy's active gateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTransition {
    /// The gateway before (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The gateway after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// A CamelCase reason: `GatewayUnhealthy`, `Preempted`, `GroupChanged`, `HealthLearned`.
    pub reason: String,
    /// When it was seen (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// A status condition, shaped like Kubernetes' `metav1.Condition`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    /// `Ready`, `PodConflict`, `EgressIPOnGateway` or `IPv6Egress`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason, e.g. `GatewayNotFound`.
    pub reason: String,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The CRD as YAML, as `kubectl apply` takes it.
pub fn crd_yaml() -> String {
    let crd = EgressGatewayPolicy::crd();
    let body = serde_norway::to_string(&crd).expect("a CRD always serializes");
    format!(
        "# Generated by `egress-agent crd` from egress-agent/src/model/crd.rs: do not edit.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_is_cluster_scoped_with_status_subresource() {
        let crd = EgressGatewayPolicy::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.kind, "EgressGatewayPolicy");
        let v = &crd.spec.versions[0];
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
        let y = crd_yaml();
        assert!(y.contains("destinationCIDRs"), "{y}");
        assert!(y.contains("matchExpressions"), "{y}");
    }

    #[test]
    fn deploy_crd_yaml_matches_the_rust_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(),
            "deploy/crd.yaml is out of date: regenerate it with \
             `cargo run -p egress-agent -- crd > deploy/crd.yaml`"
        );
    }

    #[test]
    fn spec_round_trips_in_the_documented_shape() {
        let y = r#"
selectors:
  - podSelector: { matchLabels: { app: mailu-postfix } }
    namespaceSelector:
      matchExpressions: [{ key: kubernetes.io/metadata.name, operator: In, values: [mailu] }]
destinationCIDRs: [0.0.0.0/0]
excludedCIDRs: [192.168.0.0/16]
gateway: { nodeSelector: { matchLabels: { egress-gateway: "true" } }, egressIP: 5.75.247.168 }
"#;
        let s: EgressGatewayPolicySpec = serde_norway::from_str(y).expect("valid spec");
        assert_eq!(s.destination_cidrs, ["0.0.0.0/0"]);
        assert_eq!(s.gateway.egress_ip.as_deref(), Some("5.75.247.168"));
        let back: EgressGatewayPolicySpec =
            serde_norway::from_str(&serde_norway::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
