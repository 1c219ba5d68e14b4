//! The network-namespace lab and helpers for end-to-end tests, the demo and the benchmarks,
//! and the scaffolding of the packet tests and the datapath micro-benchmark.

#![cfg_attr(
    test,
    expect(
        unused_crate_dependencies,
        reason = "the dev-dependencies are the test binaries'; the library's own tests use none"
    )
)]

pub mod agent;
pub mod attack;
pub mod config;
pub mod demo;
pub mod dns;
pub mod fake_api;
pub mod lab;
pub mod microbench;
pub mod neighbours;
pub mod net;
pub mod packet;
pub mod progs;
pub mod rawbpf;
