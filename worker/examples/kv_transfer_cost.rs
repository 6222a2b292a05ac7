//! What disaggregation costs one request: the same text prompt run whole on a decode worker, then
//! prefilled on a prefill worker whose KV goes to the decode worker over gRPC on loopback. Prints
//! the time to the first token both ways, their ratio, and the transfer's share of the prefill.
//!
//! ```sh
//! cargo run --release -p fovea-worker --example kv_transfer_cost -- /tmp/fovea-bench 2048
//! ```

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use fovea_model::Phi4VisionModel;
use fovea_model::input::RequestPreparer;
use fovea_model::preprocess::PreprocessConfig;
use fovea_proto::worker::v1::prefiller_client::PrefillerClient;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use fovea_proto::worker::v1::{
    GenerateJob, PrefillJob, SamplingParams, WorkerInfo, WorkerRole, generate_event,
};
use fovea_worker::EngineConfig;
use fovea_worker::node::WorkerNode;

/// Starts a `role` worker on a free loopback port; its address.
async fn start(dir: &std::path::Path, model: &Arc<Phi4VisionModel>, role: WorkerRole) -> String {
    let preparer = RequestPreparer::from_model_dir(dir).unwrap();
    let preprocess = PreprocessConfig::from_file(dir.join("preprocessor_config.json")).unwrap();
    let info = WorkerInfo {
        role: role as i32,
        ..Default::default()
    };
    let node = WorkerNode::start(
        Arc::clone(model),
        Arc::clone(preparer.tokenizer()),
        preprocess,
        EngineConfig::new(1024),
        info,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(node.serve(listener, std::future::pending()));
    address
}

/// Seconds from sending `job` to `decode` (and, with a transfer id, the prefill to `prefill`)
/// to its first token, and the prefill's report.
async fn time_to_first_token(
    decode: &str,
    prefill: Option<&str>,
    job: GenerateJob,
) -> (f64, Option<fovea_proto::worker::v1::PrefillResult>) {
    let started = Instant::now();
    let mut stream = WorkerClient::connect(format!("http://{decode}"))
        .await
        .unwrap()
        .generate(job.clone())
        .await
        .unwrap()
        .into_inner();
    let result = match prefill {
        Some(prefill) => {
            let mut client = PrefillerClient::connect(format!("http://{prefill}"))
                .await
                .unwrap();
            let prefill_job = PrefillJob {
                transfer_id: job.kv_transfer_id.clone(),
                decode_worker: decode.to_string(),
                job: Some(job),
            };
            Some(client.prefill(prefill_job).await.unwrap().into_inner())
        }
        None => None,
    };
    loop {
        let event = stream.message().await.unwrap().expect("a token");
        if let Some(generate_event::Event::Tokens(_)) = event.event {
            return (started.elapsed().as_secs_f64(), result);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .expect("usage: kv_transfer_cost MODEL_DIR PROMPT_TOKENS"),
    );
    let tokens: usize = args
        .next()
        .map_or(2048, |n| n.parse().expect("PROMPT_TOKENS is a number"));
    let model = Arc::new(Phi4VisionModel::load(&dir, DType::F32, &Device::Cpu).unwrap());
    let decode = start(&dir, &model, WorkerRole::Decode).await;
    let prefill = start(&dir, &model, WorkerRole::Prefill).await;
    // Distinct prompts, so that no prefix cache helps either run.
    let job = |run: u32, transfer: bool| GenerateJob {
        request_id: format!("run-{run}"),
        prompt_token_ids: (0..tokens as u32)
            .map(|i| 1000 + (i * 7 + run * 13) % 50_000)
            .collect(),
        sampling: Some(SamplingParams {
            top_p: 1.0,
            ..Default::default()
        }),
        max_tokens: 2,
        kv_transfer_id: if transfer {
            format!("run-{run}/kv")
        } else {
            String::new()
        },
        ..Default::default()
    };
    // A warm-up each way, then the measured runs.
    time_to_first_token(&decode, None, job(0, false)).await;
    time_to_first_token(&decode, Some(&prefill), job(1, true)).await;
    let (whole, _) = time_to_first_token(&decode, None, job(2, false)).await;
    let (split, result) = time_to_first_token(&decode, Some(&prefill), job(3, true)).await;
    let result = result.unwrap();
    println!(
        "{tokens}-token prompt, {} MB of KV",
        result.bytes_sent as f64 / 1e6
    );
    println!("time to first token, whole on one worker: {whole:.3} s");
    println!("time to first token, prefill worker -> decode worker: {split:.3} s");
    println!("split / whole: {:.3}", split / whole);
    println!(
        "transfer / prefill compute on the prefill worker: {:.3}",
        result.transfer_us as f64 / result.prefill_us as f64
    );
}
