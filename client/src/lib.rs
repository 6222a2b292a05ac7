//! Fovea's Rust SDK: a client for the public gRPC API `fovea.v1` with typed requests, typed
//! streamed events and typed errors.
//!
//! It speaks only the public API and must not depend on the server's crates; calls refused with
//! UNAVAILABLE before any token are retried (see [`RetryPolicy`]), a stream that has delivered
//! tokens never is.
//!
//! ```no_run
//! # async fn run() -> Result<(), fovea_client::ClientError> {
//! use fovea_client::{Client, GenerateRequestBuilder};
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let completion = client
//!     .generate_text(GenerateRequestBuilder::new().user_text("What is 17 * 23?").max_tokens(64))
//!     .await?;
//! println!("{}", completion.answer);
//! # Ok(())
//! # }
//! ```

mod error;
mod event;
mod request;
mod retry;
mod stream;

use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::v1::{self as wire, ListModelsRequest};
use tonic::transport::{Channel, Endpoint};

pub use error::ClientError;
pub use event::{
    Completion, FinishReason, Finished, GenerationEvent, Segment, Timings, TokenLogprob,
    TokenLogprobs, Usage,
};
pub use fovea_proto::v1::{ModelInfo, TokenizeResponse};
pub use request::{GenerateRequestBuilder, Mode, Part};
pub use retry::RetryPolicy;
pub use stream::GenerationStream;

/// How a [`Client`] talks to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Largest message the client sends, in bytes (requests with big images need room).
    pub max_encoding_message_size: usize,
    /// Largest message the client accepts, in bytes.
    pub max_decoding_message_size: usize,
    /// How calls refused with UNAVAILABLE before any token are repeated.
    pub retry: RetryPolicy,
}

impl Default for ClientConfig {
    /// 64 MiB each way and the default [`RetryPolicy`].
    fn default() -> Self {
        ClientConfig {
            max_encoding_message_size: 64 << 20,
            max_decoding_message_size: 64 << 20,
            retry: RetryPolicy::default(),
        }
    }
}

/// A client of one Fovea server. Cheap to clone; clones share the connection, so one client can
/// run many generations at once.
#[derive(Debug, Clone)]
pub struct Client {
    inner: GenerationClient<Channel>,
    retry: RetryPolicy,
}

impl Client {
    /// A client of the server at `address` (e.g. `http://127.0.0.1:50051`) with the default
    /// [`ClientConfig`]. The connection is made on first use, so this succeeds while the server
    /// is still starting; the first call then waits for it within the retry policy.
    pub async fn connect(address: impl Into<String>) -> Result<Client, ClientError> {
        Client::connect_with(address, ClientConfig::default()).await
    }

    /// A client of the server at `address` with `config`.
    pub async fn connect_with(
        address: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let address = address.into();
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|source| ClientError::InvalidAddress { address, source })?;
        let inner = GenerationClient::new(endpoint.connect_lazy())
            .max_encoding_message_size(config.max_encoding_message_size)
            .max_decoding_message_size(config.max_decoding_message_size);
        Ok(Client {
            inner,
            retry: config.retry,
        })
    }

    /// The models the server serves, the default model first.
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>, ClientError> {
        let response = self
            .retry
            .run(|| {
                let mut inner = self.inner.clone();
                async move {
                    inner
                        .list_models(ListModelsRequest {})
                        .await
                        .map_err(ClientError::from)
                }
            })
            .await?;
        Ok(response.into_inner().models)
    }

    /// The prompt `request` would be given (chat template applied, tokenized), with where its
    /// images went; nothing is generated.
    pub async fn tokenize(
        &self,
        request: impl Into<wire::GenerateRequest>,
    ) -> Result<TokenizeResponse, ClientError> {
        let request = request.into();
        let tokenize = wire::TokenizeRequest {
            model: request.model,
            messages: request.messages,
            mode: request.mode,
        };
        let response = self
            .retry
            .run(|| {
                let (mut inner, tokenize) = (self.inner.clone(), tokenize.clone());
                async move { inner.tokenize(tokenize).await.map_err(ClientError::from) }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Starts a generation and returns its event stream. Errors before the first token (a bad
    /// request, a full queue, an unreachable server after retries) come back here, typed.
    pub async fn generate(
        &self,
        request: impl Into<wire::GenerateRequest>,
    ) -> Result<GenerationStream, ClientError> {
        let request = request.into();
        let response = self
            .retry
            .run(|| {
                let (mut inner, request) = (self.inner.clone(), request.clone());
                async move { inner.generate(request).await.map_err(ClientError::from) }
            })
            .await?;
        Ok(GenerationStream::new(response.into_inner()))
    }

    /// Runs a generation to its end and returns the whole [`Completion`].
    pub async fn generate_text(
        &self,
        request: impl Into<wire::GenerateRequest>,
    ) -> Result<Completion, ClientError> {
        self.generate(request).await?.collect_completion().await
    }
}
