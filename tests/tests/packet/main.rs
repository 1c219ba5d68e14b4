//! The packet tests: every program run through `BPF_PROG_TEST_RUN` on crafted packets, with
//! the maps seeded as on a node. One test binary, so that the datapath is loaded (and its
//! programs verified) once and shared by every test in turn (`egress_tests::packet::datapath`):
//! under the kernel matrix's emulated kernels a load takes minutes.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

mod fragments;
mod from_pod;
mod from_wire;
mod fuzz_found;
mod icmp;
mod inbound;
mod ipv6;
mod mtu;
mod nat_table;
mod port_reuse;
mod snat;
mod tcp_window;
mod trust;
mod ttl;
mod verifier;
