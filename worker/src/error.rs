//! The worker's errors: why one request failed or was refused ([`RequestError`], delivered in its
//! final event), and why the engine could not start ([`EngineError`]).

/// Why a request ended in error. Every variant names what the caller can change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request is malformed (an empty prompt, a token id outside the vocabulary, an image
    /// whose placement does not fit, out-of-range sampling parameters, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Prompt plus `max_new_tokens` is longer than the model's context.
    #[error(
        "prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} exceeds the context length {context_len}"
    )]
    ExceedsContext {
        prompt_tokens: usize,
        max_new_tokens: usize,
        context_len: usize,
    },
    /// The request could never fit the KV cache, even alone.
    #[error(
        "prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} needs {needed_tokens} cached tokens \
         but the whole KV cache holds {capacity_tokens}; lower max_new_tokens or start the engine with more KV blocks"
    )]
    ExceedsKvCache {
        prompt_tokens: usize,
        max_new_tokens: usize,
        needed_tokens: usize,
        capacity_tokens: usize,
    },
    /// Encoding an image, the forward pass or detokenization failed.
    #[error("model failure: {0}")]
    Model(String),
    /// The prompt's keys and values could not be received from the prefill worker (no room to
    /// reserve their blocks, a malformed or broken-off transfer).
    #[error("KV transfer failed: {0}")]
    KvTransfer(String),
    /// A decode worker had to preempt the sequence for KV blocks, and cannot recompute it: its
    /// prompt's keys and values came from a prefill worker and include images it has no
    /// features of. The request can go on elsewhere from its prompt plus the tokens generated.
    #[error(
        "preempted for KV blocks after its prompt's keys and values came from a prefill worker, \
         and this worker has no features of its images to recompute them; send the prompt plus \
         the tokens generated so far again"
    )]
    GivenBack,
    /// The engine stopped before the request could finish.
    #[error("the engine has stopped")]
    EngineStopped,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A setting of [`EngineConfig`](crate::config::EngineConfig) is out of range.
    #[error("invalid engine config: {0}")]
    Config(String),
    /// The model could not be loaded (or split over its ranks).
    #[error("cannot load the model: {0}")]
    Model(#[from] fovea_model::ModelError),
    /// The operating system refused the engine thread.
    #[error("cannot start the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
}
