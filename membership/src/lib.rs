//! Cluster membership: which workers are live. A worker registers a [`WorkerRecord`] (its id,
//! role, address, model, tensor-parallel size and capacity) that stays registered while the
//! worker lives; a coordinator follows the set of live records and routes only to them.
//!
//! [`Registry`] is the contract; [`LocalRegistry`] keeps the records in this process (what
//! `fovea serve` uses) and [`EtcdRegistry`] keeps them in etcd under leases with keep-alive, so
//! separate processes (and several coordinators) share one view. This crate knows nothing of
//! routing or of the worker API: it only says who is there.

mod backoff;
pub mod etcd;
pub mod local;
pub mod record;
pub mod registry;

pub use etcd::{EtcdConfig, EtcdRegistry};
pub use local::LocalRegistry;
pub use record::{WorkerCapacity, WorkerRecord, parse_role, role_name};
pub use registry::{Members, Registration, Registry};
