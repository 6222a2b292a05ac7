//! The disaggregated cluster end to end over real gRPC on loopback, golden checkpoint, f32,
//! greedy: a coordinator splitting requests over 1 vision, 1 prefill and 2 decode workers, each
//! worker in its own runtime in this process and registered with its role in an in-process
//! registry the coordinator follows, so a worker can be killed: its runtime stops at once and
//! every connection it had drops, as with `kill -9` of a process.
//!
//! Every golden case gives its golden tokens, whether it is disaggregated or, below the prompt
//! threshold, prefilled on the decode worker itself; every image is encoded once across
//! requests; a decode worker killed mid-stream is replaced with no token repeated or missing; and
//! with the vision and prefill workers killed, the decode workers encode and prefill themselves
//! only under `prefill_fallback`, while by default the request ends with UNAVAILABLE, or runs
//! whole on a full worker if the cluster has one.

mod support;
#[path = "../../worker/tests/common/mod.rs"]
mod worker_common;

use std::time::Duration;

use fovea_coordinator::admission::AdmissionLimits;
use fovea_coordinator::health::HealthPolicy;
use fovea_coordinator::split::SplitPolicy;
use fovea_coordinator::{CoordinatorConfig, Listeners};
use fovea_membership::{LocalRegistry, Registration, Registry, WorkerCapacity, WorkerRecord};
use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::v1::{FinishReason, generate_response};
use fovea_proto::worker::v1::WorkerRole;
use fovea_worker::EngineConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use worker_common::nodes::{Node, wait_idle};
use worker_common::runtime;

use fovea_model::testing::{golden_case, golden_cases};
use support::{collect, golden_request};

/// The coordinator and its workers.
struct Cluster {
    vision: Node,
    prefill: Node,
    decode: [Node; 2],
    /// Runs the coordinator; shut down when the cluster is dropped.
    coordinator: Option<tokio::runtime::Runtime>,
    grpc: String,
    registry: LocalRegistry,
    registrations: Vec<Registration>,
}

impl Cluster {
    /// Starts the workers and a coordinator splitting by `policy`; the first decode worker is
    /// reached at the address `first_decode_address` gives for its own (a proxy, or itself).
    /// Every worker is registered but the second decode worker, unless `both_decode_workers`.
    fn start(
        policy: SplitPolicy,
        first_decode_address: impl FnOnce(&str) -> String,
        both_decode_workers: bool,
    ) -> Cluster {
        Cluster::start_behind(
            policy,
            first_decode_address,
            str::to_string,
            both_decode_workers,
            EngineConfig::new(1024),
        )
    }

    /// [`Cluster::start`] with the prefill worker reached at the address `prefill_address`
    /// gives for its own, and decode workers whose engines run with `decode_engine`.
    fn start_behind(
        policy: SplitPolicy,
        first_decode_address: impl FnOnce(&str) -> String,
        prefill_address: impl FnOnce(&str) -> String,
        both_decode_workers: bool,
        decode_engine: EngineConfig,
    ) -> Cluster {
        let model = worker_common::load_model();
        let vision = Node::start(&model, WorkerRole::Vision, 0);
        let prefill = Node::start(&model, WorkerRole::Prefill, 1024);
        let decode = [
            Node::start_with(&model, WorkerRole::Decode, decode_engine.clone()),
            Node::start_with(&model, WorkerRole::Decode, decode_engine),
        ];
        let first_decode = first_decode_address(&decode[0].address);
        let prefill_address = prefill_address(&prefill.address);
        let coordinator = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listeners = coordinator.block_on(async {
            Listeners {
                grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
                http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            }
        });
        let grpc = format!("http://{}", listeners.grpc.local_addr().unwrap());
        let registry = LocalRegistry::new();
        let config = CoordinatorConfig {
            model_dir: worker_common::model_dir(),
            model_name: "golden".into(),
            members: registry.members(),
            // A worker held behind a closed gate stays ready, however long a test holds it.
            health: HealthPolicy {
                silence_limit: Duration::from_secs(60),
                ..HealthPolicy::default()
            },
            split: policy,
            admission: AdmissionLimits {
                max_requests: 64,
                max_prompt_tokens: 1 << 20,
            },
            max_images: 4,
            max_image_bytes: 8 << 20,
        };
        coordinator.spawn(fovea_coordinator::serve(
            config,
            listeners,
            std::future::pending(),
        ));
        let mut cluster = Cluster {
            vision,
            prefill,
            decode,
            coordinator: Some(coordinator),
            grpc,
            registry,
            registrations: Vec::new(),
        };
        let vision_address = cluster.vision.address.clone();
        cluster.register("vision-0", WorkerRole::Vision, &vision_address);
        cluster.register("prefill-0", WorkerRole::Prefill, &prefill_address);
        cluster.register("decode-0", WorkerRole::Decode, &first_decode);
        if both_decode_workers {
            cluster.register_second_decode();
        }
        cluster
    }

    /// Registers the worker at `address` (`host:port`) as `id` with `role` for the coordinator.
    fn register(&mut self, id: &str, role: WorkerRole, address: &str) {
        let _runtime = self.coordinator.as_ref().unwrap().enter();
        self.registrations
            .push(self.registry.register(WorkerRecord {
                id: id.into(),
                role,
                address: format!("http://{address}"),
                model: "golden".into(),
                tensor_parallel_size: 1,
                capacity: WorkerCapacity {
                    kv_blocks: 1024,
                    max_batch_tokens: 512,
                },
            }));
    }

    fn register_second_decode(&mut self) {
        let address = self.decode[1].address.clone();
        self.register("decode-1", WorkerRole::Decode, &address);
    }

    async fn client(&self) -> GenerationClient<tonic::transport::Channel> {
        GenerationClient::connect(self.grpc.clone())
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20)
    }

    async fn wait_all_idle(&self) {
        wait_idle(self.prefill.engine.as_ref().unwrap(), "prefill worker").await;
        for (index, decode) in self.decode.iter().enumerate() {
            if let Some(engine) = &decode.engine {
                wait_idle(engine, &format!("decode worker {index}")).await;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(runtime) = self.coordinator.take() {
            runtime.shutdown_background();
        }
    }
}

fn policy(disagg_min_prompt_tokens: usize, job_retries: usize) -> SplitPolicy {
    SplitPolicy {
        disagg_min_prompt_tokens,
        job_retries,
        ..SplitPolicy::default()
    }
}

#[test]
fn every_golden_case_through_vision_prefill_and_decode_workers_gives_the_golden_tokens() {
    // Text cases (435 and 466 tokens) run whole on a decode worker; image cases are split.
    let cluster = Cluster::start(policy(600, 2), str::to_string, true);
    let cases = golden_cases();
    let prefill_cache = || {
        cluster
            .prefill
            .engine
            .as_ref()
            .unwrap()
            .stats()
            .cached_blocks
    };
    runtime().block_on(async {
        let mut client = cluster.client().await;
        for round in 0..2 {
            for case in &cases {
                let name = &case.name;
                let short = case.input_ids.len() < 600;
                let prefilled_before = prefill_cache();
                let (tokens, _, last) = collect(&mut client, golden_request(case, 12)).await;
                assert_eq!(tokens, case.greedy_tokens, "{name}, round {round}");
                assert_eq!(
                    last.finish_reason(),
                    FinishReason::Length,
                    "{name}: {}",
                    last.error
                );
                if round == 0 {
                    // The prefill worker's prefix cache grows only with the prompts it computed.
                    assert_eq!(
                        prefill_cache() > prefilled_before,
                        !short,
                        "{name}: prefilled apart iff long"
                    );
                }
            }
        }
        cluster.wait_all_idle().await;
    });
    let distinct_images = 4;
    let stats = cluster.vision.vision.as_ref().unwrap().stats();
    assert_eq!(
        stats.encoded, distinct_images,
        "each image encoded once over both rounds: {stats:?}"
    );
    for decode in &cluster.decode {
        assert_eq!(decode.engine.as_ref().unwrap().stats().images_encoded, 0);
    }
}

#[test]
fn a_prompt_that_starts_like_an_earlier_one_goes_to_the_worker_that_cached_it() {
    // Every request runs whole on one of the two decode workers.
    let cluster = Cluster::start(policy(1 << 20, 0), str::to_string, true);
    let cases = [
        golden_case("chart_nothink"),
        golden_case("screen_grounding"),
    ];
    runtime().block_on(async {
        let mut client = cluster.client().await;
        // The first request is still generating when the second is routed, so the two go to
        // different workers; then it is cancelled.
        let mut first = client
            .generate(golden_request(&cases[0], 8000))
            .await
            .unwrap()
            .into_inner();
        assert!(
            first.message().await.unwrap().is_some(),
            "the first request streams"
        );
        let (tokens, _, _) = collect(&mut client.clone(), golden_request(&cases[1], 12)).await;
        assert_eq!(tokens, cases[1].greedy_tokens);
        drop(first);
        cluster.wait_all_idle().await;
        let served = |engine: usize| {
            cluster.decode[engine]
                .engine
                .as_ref()
                .unwrap()
                .stats()
                .steps
                > 0
        };
        assert!(
            served(0) && served(1),
            "each decode worker ran one of the two"
        );
        // Both workers are idle now; each prompt again goes where its blocks are cached: all
        // but the block holding the last prompt token come from the cache.
        for round in 0..2 {
            for case in &cases {
                let (tokens, _, last) = collect(&mut client, golden_request(case, 12)).await;
                assert_eq!(tokens, case.greedy_tokens, "{}", case.name);
                let usage = last.usage.unwrap();
                let whole_blocks = (case.input_ids.len() - 1) / 16 * 16;
                assert_eq!(
                    usage.cached_tokens as usize, whole_blocks,
                    "{} (round {round}): prompt of {} tokens",
                    case.name, usage.prompt_tokens
                );
            }
        }
        cluster.wait_all_idle().await;
    });
}

#[test]
fn a_client_cancel_while_the_prompt_moves_leaves_every_worker_idle() {
    let cluster = Cluster::start(policy(0, 2), str::to_string, true);
    let cases = golden_cases();
    // The longest prompt: 4035 tokens, the largest transfer. Cancels land at different points:
    // during the vision fetch, the prefill, the transfer or the first decoding steps.
    let case = cases
        .iter()
        .find(|case| case.name == "screen_grounding")
        .unwrap();
    runtime().block_on(async {
        for delay_ms in [20, 60, 150, 400] {
            let mut client = cluster.client().await;
            let call = tokio::spawn(async move {
                let case = golden_case("screen_grounding");
                client
                    .generate(golden_request(&case, 12))
                    .await
                    .map(|r| r.into_inner())
            });
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            call.abort();
            cluster.wait_all_idle().await;
        }
        // The cluster still serves.
        let mut client = cluster.client().await;
        let (tokens, _, _) = collect(&mut client, golden_request(case, 12)).await;
        assert_eq!(tokens, case.greedy_tokens);
        cluster.wait_all_idle().await;
    });
}

#[test]
fn killed_vision_and_prefill_workers_are_worked_around_by_decode_workers_only_with_prefill_fallback()
 {
    let fallback = SplitPolicy {
        prefill_fallback: true,
        ..policy(0, 2)
    };
    let mut cluster = Cluster::start(fallback, str::to_string, true);
    cluster.vision.kill();
    cluster.prefill.kill();
    let cases = golden_cases();
    let case = |name: &str| cases.iter().find(|case| case.name == name).unwrap();
    runtime().block_on(async {
        let mut client = cluster.client().await;
        // The dead workers drop out of routing once their load streams break (or once a job to
        // them fails: a fetch from the vision worker, a prefill), and then the decode worker
        // encodes and prefills itself: at most three attempts, within the two retries.
        for name in ["chart_nothink", "two_images_compare"] {
            let (tokens, _, last) = collect(&mut client, golden_request(case(name), 12)).await;
            assert_eq!(tokens, case(name).greedy_tokens, "{name}");
            assert_eq!(
                last.finish_reason(),
                FinishReason::Length,
                "{name}: {}",
                last.error
            );
        }
        for decode in &cluster.decode {
            wait_idle(decode.engine.as_ref().unwrap(), "decode worker").await;
        }
    });
    let encoded: u64 = cluster
        .decode
        .iter()
        .map(|d| d.engine.as_ref().unwrap().stats().images_encoded)
        .sum();
    assert_eq!(
        encoded, 3,
        "the decode workers encoded the images themselves"
    );

    // By default a prompt sent to disaggregation needs a prefill worker: the request ends with a
    // clear status, however far it got before the coordinator saw the worker gone.
    let mut strict = Cluster::start(policy(0, 2), str::to_string, true);
    strict.vision.kill();
    strict.prefill.kill();
    let status = runtime().block_on(async {
        let mut client = strict.client().await;
        client
            .generate(golden_request(case("chart_nothink"), 12))
            .await
            .map(|_| ())
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("needs a prefill worker")
            && status.message().contains("--prefill-fallback"),
        "{}",
        status.message()
    );
}

#[test]
fn without_a_prefill_worker_prompts_sent_to_disaggregation_run_whole_on_a_full_worker() {
    // A full worker holds the prefill role too: a cluster that has one still serves long prompts.
    let mut cluster = Cluster::start(policy(0, 2), str::to_string, true);
    cluster.prefill.kill();
    let full = Node::start(&worker_common::load_model(), WorkerRole::Full, 1024);
    cluster.register("full-0", WorkerRole::Full, &full.address);
    let engine = full.engine.as_ref().unwrap();
    runtime().block_on(async {
        let mut client = cluster.client().await;
        for case in golden_cases().iter().take(2) {
            let steps = engine.stats().steps;
            let (tokens, _, last) = collect(&mut client, golden_request(case, 12)).await;
            assert_eq!(tokens, case.greedy_tokens, "{}: {}", case.name, last.error);
            assert!(
                engine.stats().steps > steps,
                "{}: the full worker ran the request",
                case.name
            );
        }
        wait_idle(engine, "full worker").await;
        for decode in &cluster.decode {
            wait_idle(decode.engine.as_ref().unwrap(), "decode worker").await;
        }
    });
}

/// A loopback proxy to `upstream`: each connection it takes, with its own to `upstream`, goes to
/// `relay(client, server)`, run as a task. Gives the proxy's address.
async fn loopback_proxy<F, R>(upstream: String, relay: F) -> String
where
    F: Fn(TcpStream, TcpStream) -> R + Send + 'static,
    R: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if let Ok(server) = TcpStream::connect(&upstream).await {
                tokio::spawn(relay(client, server));
            }
        }
    });
    address
}

/// A loopback proxy to `upstream` whose replies trickle (8 bytes every 25 ms: 12 token events
/// take most of a second), so that a stream through it is still going when the test cuts it,
/// however loaded the machine; `cut` drops every connection.
async fn trickling_proxy(upstream: String, cut: watch::Receiver<bool>) -> String {
    loopback_proxy(upstream, move |client, server| {
        let mut cut = cut.clone();
        async move {
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let requests = tokio::io::copy(&mut client_read, &mut server_write);
            let replies = async {
                let mut buffer = [0u8; 8];
                loop {
                    let n = server_read.read(&mut buffer).await?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    client_write.write_all(&buffer[..n]).await?;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            };
            tokio::select! {
                _ = requests => {}
                _ = replies => {}
                _ = cut.wait_for(|&cut| cut) => {}
            }
        }
    })
    .await
}

#[test]
fn killing_the_decode_worker_mid_stream_still_yields_the_golden_tokens() {
    let proxy_runtime = runtime();
    let (cut, cut_signal) = watch::channel(false);
    // Only the first decode worker is registered until the stream runs on it.
    let mut cluster = Cluster::start(
        policy(0, 2),
        |upstream| proxy_runtime.block_on(trickling_proxy(upstream.to_string(), cut_signal)),
        false,
    );
    let cases = golden_cases();
    let case = cases
        .iter()
        .find(|case| case.name == "chart_nothink")
        .unwrap();
    runtime().block_on(async {
        let mut client = cluster.client().await;
        let mut stream = client
            .generate(golden_request(case, 12))
            .await
            .unwrap()
            .into_inner();
        let (mut tokens, mut last, mut killed_after) = (Vec::new(), None, None);
        while let Some(message) = stream.message().await.unwrap() {
            assert!(last.is_none(), "nothing follows the final message");
            match message.event.unwrap() {
                generate_response::Event::Delta(delta) => {
                    tokens.extend(delta.token_ids);
                    if tokens.len() >= 3 && killed_after.is_none() {
                        // Mid-stream: a second decode worker joins, then the one serving the
                        // stream is killed and its link dropped.
                        cluster.register_second_decode();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        killed_after = Some(tokens.len());
                        cluster.decode[0].kill();
                        cluster.decode[0].engine = None;
                        cut.send(true).unwrap();
                    }
                }
                generate_response::Event::Final(done) => last = Some(done),
            }
        }
        let last = last.expect("one final message");
        assert_eq!(tokens, case.greedy_tokens, "no token repeated or missing");
        assert_eq!(last.finish_reason(), FinishReason::Length, "{}", last.error);
        assert_eq!(last.usage.unwrap().completion_tokens, 12);
        let killed_after = killed_after.unwrap();
        assert!(
            killed_after < 12,
            "killed after {killed_after} of 12 tokens: mid-stream"
        );
        let survivor = cluster.decode[1].engine.as_ref().unwrap();
        assert!(
            survivor.stats().cached_blocks > 0,
            "the second decode worker finished the stream"
        );
        cluster.wait_all_idle().await;
    });
}

/// A loopback proxy to `upstream` that forwards both ways while `open` holds true and holds
/// every byte while it is false, as a worker that stopped answering would (its connections stay
/// up).
async fn gated_proxy(upstream: String, open: watch::Receiver<bool>) -> String {
    loopback_proxy(upstream, move |client, server| {
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let requests = gated_copy(client_read, server_write, open.clone());
        let replies = gated_copy(server_read, client_write, open.clone());
        async move {
            tokio::join!(requests, replies);
        }
    })
    .await
}

/// Copies `from` to `to`, each read and each write waiting for `open`.
async fn gated_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        if open.wait_for(|&open| open).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.wait_for(|&open| open).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[test]
fn a_decode_worker_short_of_blocks_gives_back_a_transferred_image_prompt_and_its_stream_goes_on() {
    // Every prompt split at once. 106 blocks of 16 tokens per decode worker: the two prompts'
    // blocks (46 + 58) leave 2 free, so as both generate one must be preempted, and with no
    // prefix cache to resume from (as when other sequences evicted its blocks) the decode worker
    // cannot recompute it: it has its images' keys, not their features.
    let eager = SplitPolicy {
        max_prefill_backlog_tokens: u64::MAX,
        ..policy(600, 2)
    };
    let short_of_blocks = EngineConfig {
        prefix_caching: false,
        ..EngineConfig::new(106)
    };
    let mut cluster = Cluster::start_behind(
        eager,
        str::to_string,
        str::to_string,
        false,
        short_of_blocks,
    );
    let cases = [
        golden_case("chart_nothink"),
        golden_case("two_images_compare"),
    ];
    let max_tokens = 200;
    let runtime = runtime();
    let streams = runtime.block_on(async {
        let client = cluster.client().await;
        let streams: Vec<_> = cases
            .iter()
            .map(|case| {
                let (mut client, request) = (client.clone(), golden_request(case, max_tokens));
                tokio::spawn(async move { collect(&mut client, request).await })
            })
            .collect();
        let first_decode = cluster.decode[0].engine.as_ref().unwrap();
        for _ in 0..400 {
            let stats = first_decode.stats();
            if stats.running == 2 {
                return streams;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "both prompts reserve their blocks on the first decode worker: {:?}",
            first_decode.stats()
        );
    });
    // The second decode worker joins for the request given back.
    cluster.register_second_decode();
    runtime.block_on(async {
        for (case, stream) in cases.iter().zip(streams) {
            let (tokens, _, last) = stream.await.unwrap();
            assert_eq!(
                last.finish_reason,
                FinishReason::Length as i32,
                "{}: {}",
                case.name,
                last.error
            );
            assert_eq!(tokens.len(), max_tokens as usize, "{}", case.name);
            assert_eq!(tokens[..12], case.greedy_tokens[..], "{}", case.name);
        }
        let second_decode = cluster.decode[1].engine.as_ref().unwrap();
        assert!(
            second_decode.stats().steps > 0,
            "the request given back went on on the second decode worker"
        );
        cluster.wait_all_idle().await;
    });
}

/// A cluster whose prefill worker sits behind a gate (`open` sends true to open it), splitting
/// every prompt, none of them short enough to prefill on a busy decode worker.
fn cluster_with_gated_prefill(
    idle_decode_prefill: bool,
    max_local_prefill_tokens: usize,
    gate_runtime: &tokio::runtime::Runtime,
    open: watch::Receiver<bool>,
) -> Cluster {
    let conditional = SplitPolicy {
        max_prefill_backlog_tokens: 0,
        max_local_prefill_tokens,
        idle_decode_prefill,
        ..policy(0, 2)
    };
    Cluster::start_behind(
        conditional,
        str::to_string,
        |upstream| gate_runtime.block_on(gated_proxy(upstream.to_string(), open)),
        false,
        EngineConfig::new(1024),
    )
}

/// Sends the screen_grounding case (4035 prompt tokens), which goes to the (idle) prefill worker
/// behind the closed gate, and waits until the decode worker has reserved its blocks.
async fn start_a_prompt_stuck_behind_the_gate(
    cluster: &Cluster,
) -> tokio::task::JoinHandle<Vec<u32>> {
    let mut client = cluster.client().await;
    let stuck = tokio::spawn(async move {
        let case = golden_case("screen_grounding");
        collect(&mut client, golden_request(&case, 12)).await.0
    });
    let decode = cluster.decode[0].engine.as_ref().unwrap();
    for _ in 0..400 {
        if decode.stats().receiving == 1 {
            return stuck;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the decode worker never reserved the prompt: {:?}",
        decode.stats()
    );
}

#[test]
fn a_prompt_that_finds_the_prefill_worker_busy_runs_on_a_decode_worker_with_nothing_to_compute() {
    let gate_runtime = runtime();
    let (gate, open) = watch::channel(true);
    let cluster = cluster_with_gated_prefill(true, 0, &gate_runtime, open);
    let chart = golden_case("chart_nothink");
    runtime().block_on(async {
        gate.send(false).unwrap();
        let stuck = start_a_prompt_stuck_behind_the_gate(&cluster).await;
        // The prefill worker has a prompt to compute (as far as the coordinator knows); the only
        // decode worker holds blocks for that prompt's transfer but computes nothing, so it
        // takes the second prompt whole, encoding its fresh image itself.
        let mut client = cluster.client().await;
        let second = collect(&mut client, golden_request(&chart, 12));
        let (tokens, _, last) = tokio::time::timeout(Duration::from_secs(60), second)
            .await
            .expect("the second prompt ran while the prefill worker was held");
        assert_eq!(tokens, chart.greedy_tokens, "{}", last.error);
        let decode = cluster.decode[0].engine.as_ref().unwrap().stats();
        assert_eq!(
            decode.images_encoded, 1,
            "the decode worker encoded the image"
        );
        let prefill = cluster.prefill.engine.as_ref().unwrap().stats();
        assert_eq!(prefill.steps, 0, "the prefill worker computed nothing");
        assert!(!stuck.is_finished());
        gate.send(true).unwrap();
        let screen = golden_case("screen_grounding");
        assert_eq!(stuck.await.unwrap(), screen.greedy_tokens);
        cluster.wait_all_idle().await;
    });
}

#[test]
fn a_long_prompt_waits_for_a_prefill_worker_with_room_and_a_short_one_does_not() {
    let chart = golden_case("chart_nothink");
    for max_local_prefill_tokens in [0, chart.input_ids.len()] {
        let gate_runtime = runtime();
        let (gate, open) = watch::channel(true);
        let cluster =
            cluster_with_gated_prefill(false, max_local_prefill_tokens, &gate_runtime, open);
        let waits = max_local_prefill_tokens < chart.input_ids.len();
        runtime().block_on(async {
            gate.send(false).unwrap();
            let stuck = start_a_prompt_stuck_behind_the_gate(&cluster).await;
            let mut client = cluster.client().await;
            let second = tokio::spawn(async move {
                let case = golden_case("chart_nothink");
                collect(&mut client, golden_request(&case, 12)).await
            });
            let vision = cluster.vision.vision.as_ref().unwrap();
            if waits {
                // No decode worker may take it: it waits for the prefill worker's room, its
                // image encoded meanwhile (the stuck prompt's waits for the prefill worker).
                tokio::time::sleep(Duration::from_millis(1500)).await;
                assert!(!second.is_finished(), "the long prompt did not wait");
                assert_eq!(
                    vision.stats().encoded,
                    1,
                    "its image was encoded while it waited"
                );
                gate.send(true).unwrap();
            }
            let (tokens, _, last) = tokio::time::timeout(Duration::from_secs(60), second)
                .await
                .expect("the second prompt ran (after the gate opened if it waits)")
                .unwrap();
            assert_eq!(tokens, chart.greedy_tokens, "{}", last.error);
            if !waits {
                // Short enough: it ran on the decode worker at once, the gate still closed.
                assert!(!stuck.is_finished());
                gate.send(true).unwrap();
            }
            let screen = golden_case("screen_grounding");
            assert_eq!(stuck.await.unwrap(), screen.greedy_tokens);
            cluster.wait_all_idle().await;
            let stats = vision.stats();
            assert_eq!(
                (stats.encoded, stats.cache_hits),
                (2, u64::from(waits)),
                "each image encoded once; a prefetched one found in the cache"
            );
        });
    }
}
