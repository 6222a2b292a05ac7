//! The cluster roles over real gRPC on loopback, golden checkpoint, f32, greedy: a vision worker's
//! features equal a local encoding bit for bit and give the golden tokens, and its Worker service
//! describes it, reports its encoder's load and refuses Generate; every golden case
//! prefilled on a prefill worker and decoded on a decode worker gives its golden tokens, also
//! when the two split the decoder over different numbers of tensor-parallel ranks; a transfer
//! laid out for other KV heads is refused naming what differs; a transfer cut off from either
//! side, or a dead decode peer, leaves every block free and ends with a clear status.

mod common;

use std::sync::Arc;

use candle_core::DType;
use fovea_model::ModelConfig;
use fovea_model::preprocess::PreprocessConfig;
use fovea_proto::v1::FinishReason;
use fovea_proto::worker::FAILED_PEER_METADATA;
use fovea_proto::worker::v1::kv_transfer_client::KvTransferClient;
use fovea_proto::worker::v1::prefiller_client::PrefillerClient;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use fovea_proto::worker::v1::{
    AbortRequest, DescribeRequest, EncodedImage, GenerateEvent, GenerateJob, KvCacheLayout,
    KvChunk, KvTransferHeader, KvTransferMessage, PrefillJob, WatchLoadRequest, WorkerRole,
    WorkerState, generate_event, kv_transfer_message,
};
use fovea_worker::job::JobContext;
use fovea_worker::node::kv_cache_layout;
use fovea_worker::peers::PeerChannels;
use fovea_worker::vision_client::fetch_features;
use tonic::{Code, Streaming};

use common::GoldenCase;
use common::nodes::{Node, golden_job, wait_idle};
use common::runtime;

/// The tokens of a worker job's stream and its final event.
async fn collect(
    mut stream: Streaming<GenerateEvent>,
) -> (Vec<u32>, fovea_proto::worker::v1::GenerateFinished) {
    let mut tokens = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            generate_event::Event::Tokens(t) => tokens.extend(t.token_ids),
            generate_event::Event::Finished(finished) => return (tokens, finished),
        }
    }
    panic!("the stream ended without a final event after {tokens:?}");
}

async fn worker_client(address: &str) -> WorkerClient<tonic::transport::Channel> {
    WorkerClient::connect(format!("http://{address}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
}

/// The first load report of the worker at `address`.
async fn load_now(address: &str) -> fovea_proto::worker::v1::WorkerLoad {
    let request = WatchLoadRequest { interval_ms: 10 };
    let mut reports = worker_client(address)
        .await
        .watch_load(request)
        .await
        .unwrap()
        .into_inner();
    reports.message().await.unwrap().unwrap()
}

/// Sends the decode worker at `address` `job`, to await its prompt's keys and values over the
/// transfer `{request_id}/kv`; gives the job as sent and its event stream.
async fn await_transfer(
    address: &str,
    mut job: GenerateJob,
) -> (GenerateJob, Streaming<GenerateEvent>) {
    job.kv_transfer_id = format!("{}/kv", job.request_id);
    let events = worker_client(address)
        .await
        .generate(job.clone())
        .await
        .unwrap()
        .into_inner();
    (job, events)
}

#[test]
fn vision_worker_features_equal_a_local_encode_bit_for_bit_and_are_encoded_once() {
    let model = common::load_model();
    let cases = common::golden_cases(&common::preparer());
    let vision = Node::start(&model, WorkerRole::Vision, 0);
    let context = JobContext {
        preparing: Default::default(),
        preprocess: Arc::new(
            PreprocessConfig::from_file(common::model_dir().join("preprocessor_config.json"))
                .unwrap(),
        ),
        peers: Arc::new(PeerChannels::default()),
        hidden_size: model.config().text.hidden_size,
    };
    runtime().block_on(async {
        let mut distinct = std::collections::HashSet::new();
        for case in &cases {
            for ((_, prepared), file) in case.request.images.iter().zip(&case.image_files) {
                let hash = fovea_proto::image_content_hash(file);
                let image = EncodedImage {
                    data: file.clone().into(),
                    grid_rows: prepared.grid_h as u32,
                    grid_cols: prepared.grid_w as u32,
                    ..Default::default()
                };
                let remote = fetch_features(&context, &vision.address, &case.name, image)
                    .await
                    .unwrap();
                let local = model
                    .encode_image(prepared)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                assert_eq!(remote.dims(), local.dims(), "{}", case.name);
                let (remote, local) = (
                    remote.to_vec2::<f32>().unwrap(),
                    local.to_vec2::<f32>().unwrap(),
                );
                let same_bits = remote
                    .iter()
                    .flatten()
                    .zip(local.iter().flatten())
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same_bits,
                    "{}: features differ from a local encoding",
                    case.name
                );
                // By hash alone, the cache answers.
                let by_hash = EncodedImage {
                    content_hash: hash.to_vec().into(),
                    ..Default::default()
                };
                let cached = fetch_features(&context, &vision.address, &case.name, by_hash)
                    .await
                    .unwrap();
                assert_eq!(cached.to_vec2::<f32>().unwrap(), remote);
                distinct.insert(hash);
            }
        }
        let stats = vision.vision.as_ref().unwrap().stats();
        assert_eq!(
            stats.encoded,
            distinct.len() as u64,
            "each distinct image encoded once: {stats:?}"
        );
        let unknown = EncodedImage {
            content_hash: vec![7; 16].into(),
            ..Default::default()
        };
        let status = fetch_features(&context, &vision.address, "unknown", unknown)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let corrupt = EncodedImage {
            data: b"not an image".to_vec().into(),
            ..Default::default()
        };
        let status = fetch_features(&context, &vision.address, "corrupt", corrupt)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    });
}

#[test]
fn a_vision_worker_describes_itself_reports_its_encoders_load_and_refuses_generate() {
    let model = common::load_model();
    let cases = common::golden_cases(&common::preparer());
    let vision = Node::start(&model, WorkerRole::Vision, 0);
    let context = JobContext {
        preparing: Default::default(),
        preprocess: Arc::new(
            PreprocessConfig::from_file(common::model_dir().join("preprocessor_config.json"))
                .unwrap(),
        ),
        peers: Arc::new(PeerChannels::default()),
        hidden_size: model.config().text.hidden_size,
    };
    runtime().block_on(async {
        let mut worker = worker_client(&vision.address).await;
        let info = worker
            .describe(DescribeRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.role(), WorkerRole::Vision);
        let idle = load_now(&vision.address).await;
        assert_eq!(
            (idle.state(), idle.steps_completed, idle.total_kv_blocks),
            (WorkerState::Serving, 0, 0),
            "{idle:?}"
        );

        let case = cases
            .iter()
            .find(|case| !case.image_files.is_empty())
            .unwrap();
        let image = EncodedImage {
            data: case.image_files[0].clone().into(),
            ..Default::default()
        };
        fetch_features(&context, &vision.address, &case.name, image)
            .await
            .unwrap();
        let load = load_now(&vision.address).await;
        assert_eq!(
            (
                load.running_requests,
                load.queued_requests,
                load.queued_tokens
            ),
            (0, 0, 0),
            "nothing left to encode: {load:?}"
        );
        assert_eq!(load.steps_completed, 1, "one batch answered: {load:?}");

        let refused = worker
            .generate(golden_job(case, &case.name, ""))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let aborted = worker
            .abort(AbortRequest {
                request_id: case.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!aborted.found);
        let bad_interval = worker
            .watch_load(WatchLoadRequest { interval_ms: 5 })
            .await
            .unwrap_err();
        assert_eq!(
            bad_interval.code(),
            Code::InvalidArgument,
            "{bad_interval:?}"
        );
    });
}

#[test]
fn images_from_a_vision_worker_give_the_golden_tokens() {
    let model = common::load_model();
    let cases = common::golden_cases(&common::preparer());
    let vision = Node::start(&model, WorkerRole::Vision, 0);
    let decode = Node::start(&model, WorkerRole::Decode, 1024);
    runtime().block_on(async {
        let mut client = worker_client(&decode.address).await;
        for case in &cases {
            let stream = client
                .generate(golden_job(case, &case.name, &vision.address))
                .await
                .unwrap()
                .into_inner();
            let (tokens, finished) = collect(stream).await;
            assert_eq!(tokens, case.greedy_tokens, "{}", case.name);
            assert_eq!(
                finished.finish_reason(),
                FinishReason::Length,
                "{}",
                case.name
            );
        }
        let engine = decode.engine.as_ref().unwrap();
        assert_eq!(
            engine.stats().images_encoded,
            0,
            "every image came from the vision worker"
        );
        wait_idle(engine, "decode worker").await;
    });
    let with_images = cases
        .iter()
        .filter(|case| !case.image_files.is_empty())
        .count();
    assert!(with_images > 0 && vision.vision.as_ref().unwrap().stats().encoded > 0);
}

/// Sends `job` to the decode worker with a transfer id, then prefills it on the prefill worker.
async fn prefill_then_decode(
    prefill: &Node,
    decode: &Node,
    job: GenerateJob,
) -> (Vec<u32>, FinishReason) {
    let (job, stream) = await_transfer(&decode.address, job).await;
    let transfer_id = job.kv_transfer_id.clone();
    let mut prefiller = PrefillerClient::connect(format!("http://{}", prefill.address))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let result = prefiller
        .prefill(PrefillJob {
            job: Some(job),
            decode_worker: decode.address.clone(),
            transfer_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(result.bytes_sent > 0);
    let (tokens, finished) = collect(stream).await;
    (tokens, finished.finish_reason())
}

/// Runs every golden case prefilled on `prefill` and decoded on `decode` (`what` names the pair):
/// golden tokens, and both workers' blocks all free afterwards.
async fn golden_cases_through(prefill: &Node, decode: &Node, cases: &[GoldenCase], what: &str) {
    for case in cases {
        let (tokens, reason) =
            prefill_then_decode(prefill, decode, golden_job(case, &case.name, "")).await;
        assert_eq!(tokens, case.greedy_tokens, "{what}: {}", case.name);
        assert_eq!(reason, FinishReason::Length, "{what}: {}", case.name);
    }
    wait_idle(
        prefill.engine.as_ref().unwrap(),
        &format!("{what}: prefill worker"),
    )
    .await;
    wait_idle(
        decode.engine.as_ref().unwrap(),
        &format!("{what}: decode worker"),
    )
    .await;
}

#[test]
fn every_golden_case_prefilled_on_one_worker_and_decoded_on_another_gives_the_golden_tokens() {
    let model = common::load_model();
    let cases = common::golden_cases(&common::preparer());
    let prefill = Node::start(&model, WorkerRole::Prefill, 1024);
    let decode = Node::start(&model, WorkerRole::Decode, 1024);
    runtime().block_on(async {
        golden_cases_through(&prefill, &decode, &cases, "TP 1 → TP 1").await;
        assert_eq!(
            decode.engine.as_ref().unwrap().stats().images_encoded,
            0,
            "the decode worker encodes nothing"
        );
        // A prefill worker takes no whole jobs.
        let case = &cases[0];
        let status = worker_client(&prefill.address)
            .await
            .generate(golden_job(case, "whole", ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    });
}

#[test]
fn prefill_and_decode_workers_of_different_tp_sizes_give_the_golden_tokens() {
    // The golden decoder has 4 query heads over 2 KV heads: at TP 2 each rank holds one KV head,
    // at TP 4 ranks 0 and 1 hold copies of head 0 and ranks 2 and 3 of head 1.
    let cases = common::golden_cases(&common::preparer());
    runtime().block_on(async {
        for (prefill_tp, decode_tp) in [(2, 1), (1, 2), (2, 2), (4, 1), (1, 4)] {
            let prefill = Node::start_tp(prefill_tp, WorkerRole::Prefill, 1024);
            let decode = Node::start_tp(decode_tp, WorkerRole::Decode, 1024);
            let what = format!("TP {prefill_tp} → TP {decode_tp}");
            golden_cases_through(&prefill, &decode, &cases, &what).await;
        }
    });
}

#[test]
fn a_transfer_laid_out_for_other_kv_heads_is_refused_naming_what_differs() {
    let cases = common::golden_cases(&common::preparer());
    let text = ModelConfig::from_dir(&common::model_dir()).unwrap().text;
    let decode = Node::start_tp(2, WorkerRole::Decode, 1024);
    let decode_engine = decode.engine.as_ref().unwrap();
    let layout = kv_cache_layout(&text, 16);
    let wrong_layouts = [
        (
            "total_kv_heads",
            KvCacheLayout {
                num_kv_heads: 3,
                total_kv_heads: 3,
                ..layout
            },
        ),
        (
            // One rank's share, as a sender that does not gather its ranks' heads would send it.
            "first_kv_head",
            KvCacheLayout {
                num_kv_heads: 1,
                first_kv_head: 1,
                ..layout
            },
        ),
        (
            "head_dim",
            KvCacheLayout {
                head_dim: 8,
                ..layout
            },
        ),
    ];
    runtime().block_on(async {
        let mut kv_client = KvTransferClient::connect(format!("http://{}", decode.address))
            .await
            .unwrap();
        for (field, wrong) in wrong_layouts {
            let (job, decode_job) =
                await_transfer(&decode.address, golden_job(&cases[0], field, "")).await;
            let transfer = partial_transfer(wrong, &job);
            let status = kv_client
                .push_kv(tokio_stream::iter(transfer))
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{field}: {status:?}"
            );
            assert!(
                status.message().contains(field),
                "{field}: {}",
                status.message()
            );
            let (tokens, finished) = collect(decode_job).await;
            assert!(tokens.is_empty(), "{field}");
            assert_eq!(finished.finish_reason(), FinishReason::Error, "{field}");
            assert!(
                finished.error.contains(field),
                "{field}: {}",
                finished.error
            );
            wait_idle(decode_engine, field).await;
        }
    });
}

/// The header and first chunk of a transfer of `job` laid out as `layout`, zeros for keys and
/// values.
fn partial_transfer(layout: KvCacheLayout, job: &GenerateJob) -> Vec<KvTransferMessage> {
    let block_bytes = (layout.num_kv_heads * layout.block_size * layout.head_dim * 4) as usize;
    let header = kv_transfer_message::Part::Header(KvTransferHeader {
        transfer_id: job.kv_transfer_id.clone(),
        prompt_tokens: job.prompt_token_ids.len() as u32,
        layout: Some(layout),
    });
    let chunk = kv_transfer_message::Part::Chunk(KvChunk {
        layer: 0,
        first_block: 0,
        block_count: 1,
        keys: vec![0; block_bytes].into(),
        values: vec![0; block_bytes].into(),
    });
    [header, chunk]
        .into_iter()
        .map(|part| KvTransferMessage { part: Some(part) })
        .collect()
}

#[test]
fn cancel_mid_transfer_frees_blocks_on_both_sides() {
    let model = common::load_model();
    let cases = common::golden_cases(&common::preparer());
    let case = cases
        .iter()
        .find(|case| case.name == "chart_nothink")
        .unwrap();
    let prefill = Node::start(&model, WorkerRole::Prefill, 1024);
    let decode = Node::start(&model, WorkerRole::Decode, 1024);
    let decode_engine = decode.engine.as_ref().unwrap();
    let layout = kv_cache_layout(&model.config().text, 16);
    runtime().block_on(async {
        let mut kv_client = KvTransferClient::connect(format!("http://{}", decode.address))
            .await
            .unwrap();
        for cut in ["the decode job", "the push stream"] {
            let (job, decode_job) =
                await_transfer(&decode.address, golden_job(case, cut, "")).await;
            // The engine reserves the prompt's blocks when it takes the job, just after the call.
            let mut reserved = false;
            for _ in 0..200 {
                let stats = decode_engine.stats();
                reserved = stats.free_blocks < stats.total_blocks;
                if reserved {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(reserved, "{cut}: blocks reserved");
            // The transfer starts: header and one block run, then it stalls.
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            for message in partial_transfer(layout, &job) {
                tx.send(message).await.unwrap();
            }
            let mut push = kv_client.clone();
            let pushing = tokio::spawn(async move {
                push.push_kv(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if cut == "the decode job" {
                drop(decode_job);
                wait_idle(decode_engine, cut).await;
                // The next message finds the job gone: the sender is told to stop.
                tx.send(partial_transfer(layout, &job).pop().unwrap())
                    .await
                    .unwrap();
                let status = pushing.await.unwrap().unwrap_err();
                assert_eq!(status.code(), Code::Cancelled, "{status:?}");
            } else {
                pushing.abort();
                drop(tx);
                let (tokens, finished) = collect(decode_job).await;
                assert!(tokens.is_empty());
                assert_eq!(finished.finish_reason(), FinishReason::Error);
                assert!(finished.error.contains("broke off"), "{}", finished.error);
                wait_idle(decode_engine, cut).await;
            }
        }
        kv_client = KvTransferClient::connect(format!("http://{}", decode.address))
            .await
            .unwrap();
        drop(kv_client);

        // A prefill call dropped while it runs frees the prefill worker's blocks and ends the
        // decode job, however far the transfer got.
        let (job, decode_job) =
            await_transfer(&decode.address, golden_job(case, "dropped prefill", "")).await;
        let mut prefiller = PrefillerClient::connect(format!("http://{}", prefill.address))
            .await
            .unwrap();
        let prefill_job = PrefillJob {
            decode_worker: decode.address.clone(),
            transfer_id: job.kv_transfer_id.clone(),
            job: Some(job),
        };
        let call = tokio::spawn(async move { prefiller.prefill(prefill_job).await });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        call.abort();
        drop(decode_job);
        wait_idle(prefill.engine.as_ref().unwrap(), "prefill worker").await;
        wait_idle(decode_engine, "decode worker").await;
    });
}

#[test]
fn a_dead_decode_peer_fails_the_prefill_with_a_clear_status() {
    let model = common::load_model();
    let cases = common::golden_cases(&common::preparer());
    let prefill = Node::start(&model, WorkerRole::Prefill, 1024);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    runtime().block_on(async {
        let mut job = golden_job(&cases[0], "to a dead peer", "");
        job.kv_transfer_id = "dead/kv".into();
        let mut prefiller = PrefillerClient::connect(format!("http://{}", prefill.address))
            .await
            .unwrap();
        let status = prefiller
            .prefill(PrefillJob {
                job: Some(job),
                decode_worker: dead.clone(),
                transfer_id: "dead/kv".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(&dead), "{}", status.message());
        let blamed = status
            .metadata()
            .get(FAILED_PEER_METADATA)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(blamed, dead);
        wait_idle(prefill.engine.as_ref().unwrap(), "prefill worker").await;
    });
}

#[test]
fn a_prefill_worker_reports_a_prompt_whose_features_it_is_fetching_as_queued() {
    let model = common::load_model();
    let cases = common::golden_cases(&common::preparer());
    let case = cases
        .iter()
        .find(|case| !case.image_files.is_empty())
        .unwrap();
    let prefill = Node::start(&model, WorkerRole::Prefill, 1024);
    runtime().block_on(async {
        // A vision worker that takes connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_address = silent.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        let mut job = golden_job(case, "fetching", &silent_address);
        job.kv_transfer_id = "fetching/kv".into();
        let mut prefiller = PrefillerClient::connect(format!("http://{}", prefill.address))
            .await
            .unwrap();
        let call = tokio::spawn(async move {
            prefiller
                .prefill(PrefillJob {
                    job: Some(job),
                    decode_worker: "127.0.0.1:1".into(),
                    transfer_id: "fetching/kv".into(),
                })
                .await
        });
        let prompt_tokens = case.request.prompt_ids.len() as u64;
        let mut load = load_now(&prefill.address).await;
        for _ in 0..200 {
            if load.queued_requests == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            load = load_now(&prefill.address).await;
        }
        assert_eq!(
            (
                load.queued_requests,
                load.preparing_requests,
                load.queued_tokens,
                load.running_requests
            ),
            (1, 1, prompt_tokens, 0),
            "a prompt waiting for its features is queued, preparing: {load:?}"
        );
        call.abort();
        for _ in 0..200 {
            load = load_now(&prefill.address).await;
            if load.queued_requests == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert_eq!(
            (
                load.queued_requests,
                load.preparing_requests,
                load.queued_tokens
            ),
            (0, 0, 0),
            "a dropped call leaves nothing queued: {load:?}"
        );
    });
}
