//! The egress gateway agent: loads the tc datapath, programs its maps, and keeps them in step
//! with the configuration.

pub mod agent;
pub mod config;
pub mod datapath;
pub mod fault;
pub mod inspect;
pub mod kube_source;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod nat_check;
pub mod nat_gc;
pub mod netdev;
pub mod reconcile;
pub mod spf;
pub mod status;
pub mod table;

// The binary's log output; the library only emits through `tracing`.
use tracing_subscriber as _;
