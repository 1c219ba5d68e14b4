//! The network-namespace lab and helpers for end-to-end tests, the demo and the benchmarks.

pub mod agent;
pub mod demo;
pub mod dns;
pub mod lab;
pub mod net;
