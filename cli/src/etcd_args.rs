//! The etcd flags of `fovea coordinator` and `fovea worker`: which etcd, and which cluster in it.

use std::time::Duration;

use clap::Args;
use fovea_membership::EtcdConfig;

/// Where the cluster's membership lives.
#[derive(Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (e.g. `http://127.0.0.1:2379`).
    #[arg(long, env = "FOVEA_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Key prefix of this cluster, so that clusters can share an etcd; records live under
    /// `<prefix>/workers/<id>`.
    #[arg(long, env = "FOVEA_ETCD_PREFIX", default_value = "/fovea")]
    etcd_prefix: String,
}

impl EtcdArgs {
    /// The registry configuration, with leases of `lease_ttl`.
    pub fn config(&self, lease_ttl: Duration) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd.clone(),
            prefix: self.etcd_prefix.clone(),
            lease_ttl,
        }
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> String {
        self.etcd.join(",")
    }
}
