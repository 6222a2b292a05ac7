//! Everything that can go wrong on the text side, with messages that say what to fix.

use std::path::PathBuf;

/// An error from loading, rendering, tokenizing or detokenizing text.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A model file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// `tokenizer.json` did not parse as a Hugging Face tokenizer.
    #[error("{origin} is not a valid Hugging Face tokenizer.json: {source}")]
    TokenizerParse {
        /// Where the JSON came from (a path, or a description for in-memory JSON).
        origin: String,
        /// The parser's error.
        source: tokenizers::Error,
    },

    /// The tokenizer's decoder is not byte-level, so token ids cannot be mapped to bytes.
    #[error(
        "{origin}: the tokenizer's decoder must be `ByteLevel` (byte-level BPE, as in every Phi-4 \
         checkpoint); this tokenizer.json belongs to a different model family"
    )]
    UnsupportedDecoder {
        /// Where the tokenizer came from.
        origin: String,
    },

    /// `tokenizer_config.json` exists but does not parse.
    #[error("{path} is not valid tokenizer_config.json: {source}")]
    TokenizerConfigParse {
        /// The config file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },

    /// The tokenizer failed on a piece of prompt text.
    #[error("tokenizing prompt text failed: {source}")]
    Encode {
        /// The tokenizer's error.
        source: tokenizers::Error,
    },

    /// The tokenizer failed to decode ids.
    #[error("decoding token ids failed: {source}")]
    Decode {
        /// The tokenizer's error.
        source: tokenizers::Error,
    },

    /// A token id outside the tokenizer's vocabulary was given to decode.
    #[error("token id {id} is not in the tokenizer's vocabulary of {vocab_size} tokens")]
    UnknownTokenId {
        /// The offending id.
        id: u32,
        /// The vocabulary size, added tokens included.
        vocab_size: usize,
    },

    /// A reasoning mode name that is not one of the known modes.
    #[error("unknown reasoning mode `{given}`: expected one of `auto`, `think`, `nothink`")]
    UnknownMode {
        /// The name that was given.
        given: String,
    },

    /// The chat template is not valid Jinja (after HF's `{% generation %}` tags are rewritten).
    #[error("the chat template does not compile: {source}")]
    TemplateCompile {
        /// The template engine's error, with the line it points at.
        source: minijinja::Error,
    },

    /// The chat template failed while rendering these messages (including `raise_exception`).
    #[error("the chat template failed to render the messages: {source}")]
    TemplateRender {
        /// The template engine's error.
        source: minijinja::Error,
    },

    /// The prompt's `<image>` markers and the images given do not pair up one to one.
    #[error(
        "the prompt has {markers} `<image>` marker(s) but {images} image(s) were given; put exactly \
         one `<image>` in the messages for each image, in the order the images are passed"
    )]
    ImageCountMismatch {
        /// `<image>` markers found in the rendered prompt.
        markers: usize,
        /// Images given by the caller.
        images: usize,
    },

    /// Building the built-in Phi-4 tokenizer from the cl100k_base ranks failed.
    #[error("building the Phi-4 tokenizer from cl100k_base failed: {detail}")]
    TokenizerBuild {
        /// What went wrong.
        detail: String,
    },
}
