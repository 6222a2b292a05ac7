//! Fovea's gRPC contracts: the public API ([`v1`], package `fovea.v1`) and the internal worker
//! API ([`worker::v1`], package `fovea.worker.v1`), generated from `proto/fovea/**.proto`.
//!
//! It holds messages, tonic clients and server traits, the descriptor set for gRPC reflection and
//! the standard health service; it must not hold serving logic. Both sides build on it.

/// The public API, package `fovea.v1`: the `Generation` service (Generate, ListModels, Tokenize)
/// and its messages. Clients use `generation_client::GenerationClient`; the coordinator
/// implements `generation_server::Generation`.
pub mod v1 {
    tonic::include_proto!("fovea.v1");
}

/// The internal APIs between Fovea's processes.
pub mod worker {
    /// The worker API, package `fovea.worker.v1`, spoken by the coordinator to workers: the
    /// `Worker` service (Generate, Abort, Describe, WatchLoad), and for cluster mode the
    /// `VisionEncoder`, `Prefiller` and `KvTransfer` services.
    pub mod v1 {
        tonic::include_proto!("fovea.worker.v1");
    }

    /// Metadata key of a worker's error status that a peer caused (a vision worker that could not
    /// encode, a decode worker that could not take a KV transfer): the peer's address
    /// (`host:port`), so the coordinator retries elsewhere without it.
    pub const FAILED_PEER_METADATA: &str = "fovea-failed-peer";
}

pub mod content_hash;
pub use content_hash::image_content_hash;

/// The standard health service `grpc.health.v1`, re-exported so that servers and probes use the
/// same version: `health::server::health_reporter()` for a server, `health::pb::health_client`
/// for a client.
pub use tonic_health as health;

/// The encoded `FileDescriptorSet` of every Fovea package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fovea_descriptor");

/// A gRPC reflection service (`grpc.reflection.v1`) describing Fovea's services and the health
/// service, so tools like grpcurl can call a server without the .proto files.
///
/// ```no_run
/// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
/// let (_health, health_service) = fovea_proto::health::server::health_reporter();
/// tonic::transport::Server::builder()
///     .add_service(health_service)
///     .add_service(fovea_proto::reflection_service()?)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn reflection_service() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}
