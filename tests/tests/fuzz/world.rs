//! The world the fuzzer's packets live in: the nodes, pods and flows of the packet tests'
//! seeded maps (`egress_tests::packet::datapath`) plus a few of its own, and the model of the
//! flows the run knows to be legitimate.

use std::{collections::HashMap, net::Ipv4Addr};

use egress_agent::datapath::Datapath;
use egress_common::{
    endpoint::RemoteEndpoint,
    nat::{FragKey4, NatEntry4, NatKey4, CT_ESTABLISHED, CT_NEW, NAT_F_REVERSE},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use egress_tests::packet::{
    EGRESS, GATEWAY, INTERNET, POD_A, POD_A_IF, POD_B, POD_B_IF, POLICY, PORT_MAX, PORT_MIN,
    TUNNEL_MTU, WORKER,
};

use crate::wire::raw;

/// A second internet host.
pub const INTERNET2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// A selected pod on the worker, whose flows the gateway translates (seeded as the gateway's
/// `egw_from_tunnel` would have written them: a test run has no tunnel metadata).
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
pub const TUNNEL_PORT: u16 = egress_common::config::VXLAN_PORT;

/// The node the maps are seeded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The gateway: translates its own pod A's flows and the remote pod's, reverse-translates
    /// replies.
    Gateway,
    /// A worker: sends pod A's flows through the tunnel to the gateway.
    Worker,
}

impl Role {
    pub fn node(self) -> Ipv4Addr {
        match self {
            Role::Gateway => GATEWAY,
            Role::Worker => WORKER,
        }
    }
}

/// A flow the maps hold from the start: its pod side, remote side and egress port (the pod's
/// own ports lie in the NAT range and are kept, so every run of a seed sees the same ports).
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub proto: u8,
    pub pod: Ipv4Addr,
    /// Pod port, or echo identifier.
    pub pod_port: u16,
    pub remote: Ipv4Addr,
    /// 0 for echo.
    pub remote_port: u16,
    pub nat_port: u16,
}

/// Pod A's flows, opened through the datapath at the start of a round.
pub const POD_FLOWS: [Flow; 5] = [
    Flow {
        proto: IPPROTO_TCP,
        pod: POD_A,
        pod_port: 62000,
        remote: INTERNET,
        remote_port: 25,
        nat_port: 62000,
    },
    Flow {
        proto: IPPROTO_TCP,
        pod: POD_A,
        pod_port: 62010,
        remote: INTERNET2,
        remote_port: 443,
        nat_port: 62010,
    },
    Flow {
        proto: IPPROTO_UDP,
        pod: POD_A,
        pod_port: 62001,
        remote: INTERNET,
        remote_port: 53,
        nat_port: 62001,
    },
    Flow {
        proto: IPPROTO_UDP,
        pod: POD_A,
        pod_port: 62002,
        remote: INTERNET2,
        remote_port: 53,
        nat_port: 62002,
    },
    Flow {
        proto: IPPROTO_ICMP,
        pod: POD_A,
        pod_port: 62003,
        remote: INTERNET,
        remote_port: 0,
        nat_port: 62003,
    },
];

/// The remote pod's flows, written into the gateway's map.
pub const REMOTE_FLOWS: [Flow; 2] = [
    Flow {
        proto: IPPROTO_TCP,
        pod: REMOTE_POD,
        pod_port: 41000,
        remote: INTERNET,
        remote_port: 25,
        nat_port: 63000,
    },
    Flow {
        proto: IPPROTO_UDP,
        pod: REMOTE_POD,
        pod_port: 41001,
        remote: INTERNET,
        remote_port: 53,
        nat_port: 63001,
    },
];

/// A flow a peer opened towards pod A (`egw_to_pod` records it at the start of a round).
pub const INBOUND_PEER_PORT: u16 = 5555;
pub const INBOUND_POD_PORT: u16 = 8080;

impl Flow {
    pub fn all() -> impl Iterator<Item = &'static Flow> {
        POD_FLOWS.iter().chain(REMOTE_FLOWS.iter())
    }

    /// The forward key (as the pod's packets carry it).
    pub fn key(&self) -> NatKey4 {
        NatKey4 {
            saddr: raw(self.pod),
            daddr: raw(self.remote),
            sport: self.pod_port.to_be(),
            dport: self.remote_port.to_be(),
            proto: self.proto,
            kind: 0,
            _pad: [0; 2],
        }
    }

    /// The reverse key (as the replies carry it).
    pub fn reverse_key(&self) -> NatKey4 {
        self.key().reply_to(raw(EGRESS), self.nat_port.to_be())
    }
}

/// Writes the remote pod's flows into the gateway's NAT map, as the gateway's `egw_from_tunnel`
/// would have (reverse entry first), and the remote pod into the remote endpoints.
pub fn seed_remote_flows(dp: &mut Datapath, now_ns: u64) {
    let mut m = dp.maps();
    m.put_remote_endpoint(
        raw(REMOTE_POD),
        RemoteEndpoint {
            node_ip4: raw(WORKER),
            policy_id: POLICY,
        },
    )
    .expect("remote endpoint");
    for f in &REMOTE_FLOWS {
        let fwd = NatEntry4 {
            addr: raw(EGRESS),
            port: f.nat_port.to_be(),
            state: CT_NEW,
            node_ip4: raw(WORKER),
            policy_id: POLICY,
            last_seen_ns: now_ns,
            ..Default::default()
        };
        let rev = NatEntry4 {
            addr: raw(f.pod),
            port: f.pod_port.to_be(),
            flags: NAT_F_REVERSE,
            state: CT_ESTABLISHED,
            ..fwd
        };
        m.put_nat(f.reverse_key(), rev).expect("reverse entry");
        m.put_nat(f.key(), fwd).expect("forward entry");
    }
}

/// What the run knows to be legitimate: every translation the datapath made for a pod that
/// may open flows (pod A on its own interface, on the gateway), and the seeded flows. A
/// reply may only be reverse-translated to what this says.
#[derive(Default)]
pub struct Model {
    /// Reverse key -> the pod (address, port) its replies go to.
    pub reverse: HashMap<NatKey4, (Ipv4Addr, u16)>,
    /// Fragment key of a pod's datagram whose first fragment left translated -> the address
    /// it left with.
    pub frag_out: HashMap<FragKey4, Ipv4Addr>,
    /// Fragment key of a reply whose first fragment was reverse-translated -> the pod.
    pub frag_in: HashMap<FragKey4, Ipv4Addr>,
}

impl Model {
    pub fn new(role: Role) -> Model {
        let mut m = Model::default();
        if role == Role::Gateway {
            for f in &REMOTE_FLOWS {
                m.reverse.insert(f.reverse_key(), (f.pod, f.pod_port));
            }
        }
        m
    }
}

/// The ingress interfaces of the pods the world knows.
pub fn pod_if(pod: Ipv4Addr) -> u32 {
    if pod == POD_A {
        POD_A_IF
    } else if pod == POD_B {
        POD_B_IF
    } else {
        99
    }
}

/// The node configuration the oracle needs.
pub struct Cfg {
    pub node: Ipv4Addr,
    pub ports: (u16, u16),
    pub tunnel_mtu: u32,
}

impl Cfg {
    pub fn of(role: Role) -> Cfg {
        Cfg {
            node: role.node(),
            ports: (PORT_MIN, PORT_MAX),
            tunnel_mtu: TUNNEL_MTU,
        }
    }
}
