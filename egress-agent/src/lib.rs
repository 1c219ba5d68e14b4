//! The egress gateway agent: loads the tc datapath, programs its maps, and keeps them in step
//! with the configuration.

pub mod datapath;
