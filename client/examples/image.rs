//! Asks a running `fovea serve` a question about an image file and prints the reasoning and the
//! answer once generation ends.
//!
//! ```sh
//! cargo run --example image -p fovea-client -- http://127.0.0.1:50051 chart.png "Which bar is the tallest?"
//! ```

use fovea_client::{Client, ClientError, GenerateRequestBuilder, Part};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let image = args
        .next()
        .unwrap_or_else(|| "testdata/golden/images/chart_320x240.png".into());
    let question = args
        .next()
        .unwrap_or_else(|| "What does this image show?".into());

    let client = Client::connect(address).await?;
    let request = GenerateRequestBuilder::new()
        .user([Part::image_file(&image)?, Part::Text(question)])
        .max_tokens(512);
    let completion = client.generate_text(request).await?;
    if !completion.reasoning.is_empty() {
        println!("reasoning: {}", completion.reasoning);
    }
    println!("answer: {}", completion.answer);
    println!(
        "[{:?}, {:?}]",
        completion.finished.finish_reason, completion.finished.usage
    );
    Ok(())
}
