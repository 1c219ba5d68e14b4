//! Flows that local pods opened through a gateway, kept on the source node (`EGW_FLOWS4`).
//!
//! `egw_from_pod` records each flow it sends into the tunnel, keyed by the pod's packet as it
//! left the pod (`NatKey4 {pod ip, remote ip, pod port, remote port, proto}`; ICMP echo: the
//! identifier as the pod port, remote port 0). A packet that comes out of the tunnel for a
//! local pod is delivered only if its reversed key (or, for an ICMP error, the quoted packet's
//! key) is in the table, from the gateway and with the VNI the flow was sent with: nothing
//! reaches a pod through the tunnel that the pod did not ask for.

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
