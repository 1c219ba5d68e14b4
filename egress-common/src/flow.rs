//! The flows of a node's selected pods to destinations of their policies (`EGW_FLOWS4`), keyed
//! by the pod's packet as it leaves the pod (`NatKey4 {pod ip, remote ip, pod port, remote
//! port, proto}`; ICMP echo: the identifier as the pod port, remote port 0), and who opened
//! each:
//!
//! - the pod (outbound): `egw_from_pod` records the flow when it sends it to its gateway (into
//!   the tunnel, or translated on this node when it is the gateway). A packet that comes out
//!   of the tunnel for a local pod is delivered only if its reversed key (or, for an ICMP
//!   error, the quoted packet's key) is in the table, from the gateway and with the VNI the
//!   flow was sent with: nothing reaches a pod through the tunnel that the pod did not ask for.
//! - the peer (inbound, [`INBOUND`]): `egw_to_pod` records a connection opened towards the pod
//!   (a NodePort or LoadBalancer client, a peer reaching the pod directly), and the pod's
//!   answers keep the normal path: they must leave from the address the client connected to,
//!   not from the egress IP.

/// What the source node remembers of a flow a pod opened through a gateway.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry4 {
    /// Underlay address of the gateway the flow was sent to (network byte order): answers
    /// must come from there.
    pub gateway_ip4: u32,
    /// The policy (and VNI) the flow was sent with.
    pub policy_id: u32,
}
crate::assert_size!(FlowEntry4, 8);

/// `FlowEntry4::gateway_ip4` of a flow the peer opened towards the pod (no gateway: the pod's
/// answers keep the normal path). No gateway has the address 0.0.0.0, and a packet from the
/// tunnel never matches it.
pub const INBOUND: u32 = 0;

impl FlowEntry4 {
    /// A flow the peer opened towards the pod.
    pub const fn inbound(policy_id: u32) -> Self {
        Self {
            gateway_ip4: INBOUND,
            policy_id,
        }
    }

    /// Whether the peer opened this flow.
    pub const fn is_inbound(&self) -> bool {
        self.gateway_ip4 == INBOUND
    }
}
