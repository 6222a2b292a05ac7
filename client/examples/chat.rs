//! Asks a running `fovea serve` a text question and prints the answer as it streams.
//!
//! ```sh
//! cargo run --example chat -p fovea-client -- http://127.0.0.1:50051 "What is 17 * 23?"
//! ```

use std::io::Write;

use fovea_client::{Client, ClientError, GenerateRequestBuilder, GenerationEvent, Mode, Segment};
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "What is 17 * 23? Answer briefly.".into());

    let client = Client::connect(address).await?;
    let request = GenerateRequestBuilder::new()
        .user_text(prompt)
        .mode(Mode::NoThink)
        .max_tokens(256);
    let mut stream = client.generate(request).await?;
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta {
                text,
                segment: Segment::Answer,
                ..
            } => {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            GenerationEvent::Delta { .. } => {}
            GenerationEvent::Finished(finished) => {
                let usage = &finished.usage;
                println!(
                    "\n[{:?}, {} tokens; prompt {} tokens, {} of them from the prefix cache]",
                    finished.finish_reason,
                    usage.completion_tokens,
                    usage.prompt_tokens,
                    usage.cached_tokens
                );
            }
        }
    }
    Ok(())
}
