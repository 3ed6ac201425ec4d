//! aer: the command-line client of auraed. The library part holds what
//! other clients (tests, xtask) share: the config file and the mTLS
//! connection.

pub mod client;
pub mod confine_args;
pub mod meta_args;
pub mod output;
pub mod pod_args;
pub mod process_args;
pub mod spawn_args;
pub mod text;
pub mod tree;
pub mod units;
pub mod vm_args;
