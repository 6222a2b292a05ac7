//! The disaggregated cluster as separate processes on loopback with membership in a real etcd:
//! `fovea coordinator` splitting every request over a vision, a prefill and two decode
//! `fovea worker` processes (golden checkpoint, f32, greedy). Every golden case gives its golden
//! tokens through vision → prefill (at TP 2) → decode (at TP 1); a decode worker killed mid-stream (`kill -9`) is
//! replaced with no token repeated or missing, and with no decode worker left requests are
//! UNAVAILABLE; the only prefill worker killed mid-prompt ends the request with UNAVAILABLE, as
//! every request after it until a new prefill worker registers, which is used at once (a
//! coordinator with `--prefill-fallback` has the decode workers compute the prompts meanwhile); a
//! client cancel during the KV transfer leaves every block free on both sides; a paused decode
//! worker gets no work once its lease expires, and work again once it registers again; and a
//! paused vision worker, still registered, gets no images once its load reports stop while a
//! second vision worker encodes them, gets images again once resumed, and drains on SIGTERM.
//!
//! What each worker did is read from its own API: load reports (forward passes, running requests,
//! free KV blocks) and, for the vision worker, which images' features its cache holds; what the
//! coordinator saw from its log of workers joining and leaving.

mod support;

use std::time::{Duration, Instant};

use fovea_model::testing::{GoldenCase, golden_case, golden_cases};
use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::v1::{
    ChatMessage, ContentPart, FinishReason, GenerateRequest, GenerateResponse, Image,
    ReasoningMode, Role, SamplingParams, content_part, generate_response,
};
use fovea_proto::worker::v1::{WorkerRole, WorkerState};
use support::cluster::{Coordinator, Etcd, Scratch, Worker};
use support::{collect, golden_request};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a test waits for something the cluster does within seconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a request about two small images may take before it is given up as waiting on a
/// paused worker (answered, it takes well under a second).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(10);

/// Makes the coordinator split every prompt (the shortest golden prompt has 435 tokens).
const SPLIT_EVERY_PROMPT: [&str; 2] = ["--disagg-min-prompt-tokens", "1"];

/// A coordinator and its vision, prefill and two decode workers, on their own etcd. Dropped in
/// field order: processes first, the scratch directory last.
struct Cluster {
    coordinator: Coordinator,
    vision: Worker,
    prefill: Worker,
    decode: [Worker; 2],
    etcd: Etcd,
    scratch: Scratch,
}

impl Cluster {
    /// Starts etcd, the workers (with `worker_flags`, and the prefill worker with
    /// `prefill_flags` too) and a coordinator splitting every request, and waits until the
    /// coordinator has seen every worker join.
    async fn start(name: &str, worker_flags: &[&str], prefill_flags: &[&str]) -> Cluster {
        let scratch = Scratch::new(name);
        let mut etcd = Etcd::new(&scratch);
        etcd.start().await;
        let url = etcd.url();
        let worker = |role, id| Worker::start_in_role(role, &scratch, &url, id, worker_flags);
        let prefill_flags = [worker_flags, prefill_flags].concat();
        let (vision, prefill) = (
            worker(WorkerRole::Vision, "vision"),
            Worker::start_in_role(
                WorkerRole::Prefill,
                &scratch,
                &url,
                "prefill",
                &prefill_flags,
            ),
        );
        let decode = [
            worker(WorkerRole::Decode, "decode-a"),
            worker(WorkerRole::Decode, "decode-b"),
        ];
        let coordinator = Coordinator::start(&scratch, &url, &SPLIT_EVERY_PROMPT);
        let cluster = Cluster {
            coordinator,
            vision,
            prefill,
            decode,
            etcd,
            scratch,
        };
        cluster.wait_until_known_to(&cluster.coordinator).await;
        cluster
    }

    /// Waits until `coordinator` has seen every worker of the cluster join.
    async fn wait_until_known_to(&self, coordinator: &Coordinator) {
        let workers = [
            &self.vision,
            &self.prefill,
            &self.decode[0],
            &self.decode[1],
        ];
        for worker in workers {
            coordinator.wait_until_joined(&worker.id, 1, PATIENCE).await;
        }
    }

    /// Starts another worker in `role` on the cluster's etcd.
    fn start_worker(&self, role: WorkerRole, id: &str, flags: &[&str]) -> Worker {
        Worker::start_in_role(role, &self.scratch, &self.etcd.url(), id, flags)
    }

    /// Forward passes run by both decode workers together.
    async fn decode_steps(&self) -> u64 {
        self.decode[0].steps().await + self.decode[1].steps().await
    }

    /// Waits until the prefill and decode workers are idle with every KV block free.
    async fn wait_until_idle(&self) {
        self.prefill.wait_until_idle(PATIENCE).await;
        for decode in &self.decode {
            decode.wait_until_idle(PATIENCE).await;
        }
    }
}

/// The tokens of `case` greedily up to `max_tokens` (end-of-turn ignored), checking that the
/// stream ends by length having counted every token once.
async fn generate(
    client: &mut GenerationClient<Channel>,
    case: &GoldenCase,
    max_tokens: u32,
) -> Vec<u32> {
    let name = &case.name;
    let (tokens, _, last) =
        tokio::time::timeout(PATIENCE, collect(client, golden_request(case, max_tokens)))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer within {PATIENCE:?}"));
    assert_eq!(
        last.finish_reason(),
        FinishReason::Length,
        "{name}: {}",
        last.error
    );
    assert_eq!(last.usage.unwrap().completion_tokens, max_tokens, "{name}");
    tokens
}

/// Reads `stream` until at least `count` tokens have come, appending them to `tokens`.
async fn read_tokens(
    stream: &mut tonic::Streaming<GenerateResponse>,
    tokens: &mut Vec<u32>,
    count: usize,
) {
    while tokens.len() < count {
        let message = stream.message().await.unwrap().expect("the stream goes on");
        match message.event.unwrap() {
            generate_response::Event::Delta(delta) => tokens.extend(delta.token_ids),
            generate_response::Event::Final(last) => panic!("the stream ended early: {last:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_case_split_over_vision_prefill_and_decode_processes_gives_the_golden_tokens()
{
    // The prefill worker splits its model over 2 tensor-parallel ranks, the decode workers do not:
    // the transfer reshapes the heads on the way.
    let cluster = Cluster::start("disagg-etcd-golden", &[], &["--tp", "2"]).await;
    let mut client = cluster.coordinator.client().await;
    let cases = golden_cases();
    for case in &cases {
        let name = &case.name;
        let images = case.image_bytes();
        for image in &images {
            assert!(
                !cluster.vision.has_image_features(image).await,
                "{name}: encoded before its request"
            );
        }
        let (prefill_steps, decode_steps) =
            (cluster.prefill.steps().await, cluster.decode_steps().await);
        assert_eq!(
            generate(&mut client, case, 12).await,
            case.greedy_tokens,
            "{name}"
        );
        assert!(
            cluster.prefill.steps().await > prefill_steps,
            "{name}: the prefill worker computed the prompt"
        );
        assert!(
            cluster.decode_steps().await > decode_steps,
            "{name}: a decode worker decoded"
        );
        for image in &images {
            assert!(
                cluster.vision.has_image_features(image).await,
                "{name}: the vision worker encoded the image"
            );
        }
    }
    // All at once, the images' features now from the vision worker's cache.
    let runs: Vec<_> = cases
        .iter()
        .map(|case| {
            let (mut client, case) = (client.clone(), case.clone());
            tokio::spawn(async move { (generate(&mut client, &case, 12).await, case) })
        })
        .collect();
    for run in runs {
        let (tokens, case) = run.await.unwrap();
        assert_eq!(
            tokens, case.greedy_tokens,
            "{} among concurrent requests",
            case.name
        );
    }
    cluster.wait_until_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_worker_killed_mid_stream_is_replaced_with_no_token_lost_or_repeated_and_with_none_left_requests_are_unavailable()
 {
    let cluster = Cluster::start("disagg-etcd-kill-decode", &["--lease-ttl-secs", "2"], &[]).await;
    let mut client = cluster.coordinator.client().await;
    let case = golden_case("chart_nothink");
    // Long enough that the stream still runs when the test has read a few tokens; an
    // uninterrupted run gives the tokens past the golden ones.
    let max_tokens = 200;
    let reference = generate(&mut client, &case, max_tokens).await;
    assert_eq!(reference[..12], case.greedy_tokens);
    cluster.wait_until_idle().await;

    let mut stream = client
        .generate(golden_request(&case, max_tokens))
        .await
        .unwrap()
        .into_inner();
    let mut tokens = Vec::new();
    read_tokens(&mut stream, &mut tokens, 3).await;
    let loads = [
        cluster.decode[0].load().await,
        cluster.decode[1].load().await,
    ];
    let running: Vec<usize> = (0..2)
        .filter(|&index| loads[index].running_requests > 0)
        .collect();
    let [serving] = running[..] else {
        panic!(
            "after {} tokens one decode worker runs the stream: {loads:?}",
            tokens.len()
        );
    };
    let survivor = &cluster.decode[1 - serving];
    let survivor_steps = loads[1 - serving].steps_completed;
    cluster.decode[serving].process.signal("KILL");
    let killed_after = tokens.len();

    let mut last = None;
    while let Some(message) = stream
        .message()
        .await
        .expect("the stream survives the kill")
    {
        assert!(last.is_none(), "nothing follows the final message");
        match message.event.unwrap() {
            generate_response::Event::Delta(delta) => tokens.extend(delta.token_ids),
            generate_response::Event::Final(done) => last = Some(done),
        }
    }
    let last = last.expect("a final message ends the stream");
    assert_eq!(last.finish_reason(), FinishReason::Length, "{}", last.error);
    assert_eq!(last.usage.unwrap().completion_tokens, max_tokens);
    assert_eq!(
        tokens[..12],
        case.greedy_tokens,
        "the golden tokens, killed after {killed_after}"
    );
    assert_eq!(
        tokens, reference,
        "no token repeated or missing, killed after {killed_after}"
    );
    assert!(
        survivor.steps().await > survivor_steps,
        "{} went on with the stream after {killed_after} tokens",
        survivor.id
    );
    cluster.prefill.wait_until_idle(PATIENCE).await;
    survivor.wait_until_idle(PATIENCE).await;

    survivor.process.signal("KILL");
    for decode in &cluster.decode {
        cluster
            .coordinator
            .wait_until_left(&decode.id, 1, PATIENCE)
            .await;
    }
    let refused = client
        .generate(golden_request(&case, 12))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(
        refused.message().contains("no live full or decode worker"),
        "{}",
        refused.message()
    );
}

/// Sends `case` through `client` and kills `prefill` (SIGKILL) while it computes the prompt; how
/// the request ended: its tokens, or the status that refused it.
async fn kill_mid_prompt(
    prefill: &Worker,
    client: &GenerationClient<Channel>,
    case: &GoldenCase,
) -> Result<Vec<u32>, Status> {
    let mut load = prefill.watch_load().await;
    let call = {
        let (mut client, request) = (client.clone(), golden_request(case, 12));
        tokio::spawn(async move {
            let mut stream = client.generate(request).await?.into_inner();
            let mut tokens = Vec::new();
            read_tokens(&mut stream, &mut tokens, 12).await;
            Ok(tokens)
        })
    };
    tokio::time::timeout(PATIENCE, load.wait_for(|load| load.running_requests > 0))
        .await
        .unwrap_or_else(|_| panic!("{} got no prompt", prefill.id))
        .unwrap();
    prefill.process.signal("KILL");
    assert!(
        !call.is_finished(),
        "{} killed while the request runs",
        prefill.id
    );
    tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the request ends")
        .unwrap()
}

/// Checks that `status` ends a request for want of a prefill worker, saying so and how to let
/// decode workers prefill instead.
fn assert_needs_a_prefill_worker(status: &Status) {
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("needs a prefill worker")
            && status.message().contains("--prefill-fallback"),
        "{}",
        status.message()
    );
}

/// Also: with no prefill worker registered requests are UNAVAILABLE too; a coordinator with
/// `--prefill-fallback` has the decode workers compute the prompts meanwhile; a new prefill
/// worker is used as soon as it registers; and with `--job-retries 0` a prefill worker killed
/// mid-prompt fails the request without a second try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_only_prefill_worker_ends_requests_with_unavailable_until_a_new_one_registers_unless_decode_workers_may_prefill()
 {
    // A killed prefill worker's record goes 2 s after its last keep-alive.
    let cluster = Cluster::start("disagg-etcd-kill-prefill", &[], &["--lease-ttl-secs", "2"]).await;
    // The fallback needs no retry: it applies when a job finds no prefill worker to start on.
    let fallback = Coordinator::start(
        &cluster.scratch,
        &cluster.etcd.url(),
        &[
            &SPLIT_EVERY_PROMPT[..],
            &["--prefill-fallback", "--job-retries", "0"],
        ]
        .concat(),
    );
    cluster.wait_until_known_to(&fallback).await;
    let mut client = cluster.coordinator.client().await;
    // The longest prompt: the longest prefill.
    let case = golden_case("screen_grounding");

    // The retry after the kill finds no prefill worker.
    let refused = kill_mid_prompt(&cluster.prefill, &client, &case)
        .await
        .expect_err("no prefill worker is left to retry on");
    assert_needs_a_prefill_worker(&refused);
    cluster
        .coordinator
        .wait_until_left(&cluster.prefill.id, 1, PATIENCE)
        .await;
    let refused = client
        .generate(golden_request(&case, 12))
        .await
        .expect_err("no prefill worker is registered");
    assert_needs_a_prefill_worker(&refused);
    assert!(
        refused.message().contains("no live prefill worker"),
        "{}",
        refused.message()
    );

    let mut fallback_client = fallback.client().await;
    for case in &golden_cases() {
        let decode_steps = cluster.decode_steps().await;
        assert_eq!(
            generate(&mut fallback_client, case, 12).await,
            case.greedy_tokens,
            "{}",
            case.name
        );
        assert!(
            cluster.decode_steps().await > decode_steps,
            "{}: a decode worker computed the prompt",
            case.name
        );
    }
    for decode in &cluster.decode {
        decode.wait_until_idle(PATIENCE).await;
    }

    let replacement = cluster.start_worker(WorkerRole::Prefill, "prefill-2", &[]);
    cluster
        .coordinator
        .wait_until_joined(&replacement.id, 1, PATIENCE)
        .await;
    let prefill_steps = replacement.steps().await;
    // Another prompt than the one killed below, which must not come from the prefix cache.
    let other = golden_case("chart_nothink");
    assert_eq!(generate(&mut client, &other, 12).await, other.greedy_tokens);
    assert!(
        replacement.steps().await > prefill_steps,
        "the new prefill worker computed the prompt"
    );
    replacement.wait_until_idle(PATIENCE).await;

    fallback
        .wait_until_joined(&replacement.id, 1, PATIENCE)
        .await;
    let refused = kill_mid_prompt(&replacement, &fallback_client, &case)
        .await
        .expect_err("no retry");
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(
        refused.message().contains("the job failed on 1 workers"),
        "{}",
        refused.message()
    );
    for decode in &cluster.decode {
        decode.wait_until_idle(PATIENCE).await;
    }
}

/// Where before its first token a request is cancelled, as the workers' load reports show it.
#[derive(Debug, Clone, Copy)]
enum CancelPoint {
    /// A decode worker has reserved the prompt's blocks: the prompt is being fetched, computed
    /// or shipped.
    BlocksReserved,
    /// The prefill worker has computed the prompt and let go of its blocks: the keys and values
    /// are being shipped (or have just arrived).
    PromptComputed,
}

/// `case` as a request whose prompt shares no cached prefix with other attempts', so that each
/// attempt computes and ships the whole prompt.
fn uncached_request(case: &GoldenCase, attempt: usize, max_tokens: u32) -> GenerateRequest {
    let mut request = golden_request(case, max_tokens);
    let first = ContentPart {
        part: Some(content_part::Part::Text(format!("Attempt {attempt}. "))),
    };
    request.messages[0].content.insert(0, first);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancel_during_the_kv_transfer_leaves_every_block_free_on_prefill_and_decode_workers()
 {
    let cluster = Cluster::start("disagg-etcd-cancel", &[], &[]).await;
    let mut client = cluster.coordinator.client().await;
    // The longest prompt (4035 tokens): the longest prefill and the largest transfer.
    let case = golden_case("screen_grounding");
    assert_eq!(generate(&mut client, &case, 12).await, case.greedy_tokens);
    cluster.wait_until_idle().await;
    let prefill = cluster.prefill.watch_load().await;
    let decode = [
        cluster.decode[0].watch_load().await,
        cluster.decode[1].watch_load().await,
    ];

    let points = [CancelPoint::BlocksReserved, CancelPoint::PromptComputed];
    let mut pending_at_cancel = Vec::new();
    for (attempt, point) in points.into_iter().cycle().take(6).enumerate() {
        let prefill_steps = prefill.borrow().steps_completed;
        let reached = || match point {
            CancelPoint::BlocksReserved => decode.iter().any(|load| {
                let load = load.borrow();
                load.free_kv_blocks < load.total_kv_blocks
            }),
            CancelPoint::PromptComputed => {
                let load = prefill.borrow();
                load.steps_completed > prefill_steps && load.running_requests == 0
            }
        };
        let (mut caller, request) = (client.clone(), uncached_request(&case, attempt, 12));
        let call =
            tokio::spawn(async move { caller.generate(request).await.map(|r| r.into_inner()) });
        let started = Instant::now();
        while !reached() && !call.is_finished() {
            assert!(
                started.elapsed() < PATIENCE,
                "attempt {attempt}: {point:?} never came"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The coordinator answers once the keys and values have reached the decode worker.
        pending_at_cancel.push((point, !call.is_finished()));
        call.abort();
        drop(call);
        cluster.wait_until_idle().await;
    }
    assert!(
        pending_at_cancel.iter().any(|(_, pending)| *pending),
        "no cancel came before the transfer had ended: {pending_at_cancel:?}"
    );

    // Cancels right after the first token.
    let mut stream = client
        .generate(golden_request(&case, 12))
        .await
        .unwrap()
        .into_inner();
    read_tokens(&mut stream, &mut Vec::new(), 1).await;
    drop(stream);
    cluster.wait_until_idle().await;

    assert_eq!(
        generate(&mut client, &case, 12).await,
        case.greedy_tokens,
        "the cluster still serves"
    );
    cluster.wait_until_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_decode_worker_gets_no_work_once_its_lease_expires_and_registers_again_when_resumed()
 {
    let cluster = Cluster::start("disagg-etcd-pause", &["--lease-ttl-secs", "2"], &[]).await;
    let mut client = cluster.coordinator.client().await;
    let [paused, other] = &cluster.decode;
    paused.process.signal("STOP");
    cluster
        .coordinator
        .wait_until_left(&paused.id, 1, PATIENCE)
        .await;
    let other_steps = other.steps().await;
    for case in golden_cases().iter().take(3) {
        assert_eq!(
            generate(&mut client, case, 12).await,
            case.greedy_tokens,
            "{}",
            case.name
        );
    }
    assert!(
        other.steps().await > other_steps,
        "the live decode worker took the work"
    );

    paused.process.signal("CONT");
    cluster
        .coordinator
        .wait_until_joined(&paused.id, 2, PATIENCE)
        .await;
    cluster
        .etcd
        .wait_for_workers(PATIENCE, "the resumed worker registers again", |ids| {
            ids.len() == 4
        })
        .await;
    // Both decode workers get work while one is busy: a request goes to the worker that a long
    // one does not occupy (once the coordinator has the resumed worker's load reports).
    let case = golden_case("chart_nothink");
    let paused_steps = paused.steps().await;
    for tries in 1.. {
        let mut long = client
            .generate(golden_request(&case, 2000))
            .await
            .unwrap()
            .into_inner();
        read_tokens(&mut long, &mut Vec::new(), 1).await;
        assert_eq!(generate(&mut client, &case, 12).await, case.greedy_tokens);
        drop(long);
        if paused.steps().await > paused_steps {
            break;
        }
        assert!(tries < 5, "the resumed worker got no work in {tries} tries");
    }
}

/// Two small PNG images that no other call's images equal (`attempt` sets their colours), so a
/// vision worker must encode them anew.
fn fresh_images(attempt: u32) -> [Vec<u8>; 2] {
    [0, 1].map(|which| {
        let seed = attempt * 2 + which;
        let image = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(seed % 251) as u8, (seed / 251) as u8, (x * 4 + y) as u8])
        });
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    })
}

/// A request comparing `images`, generating 4 tokens.
fn compare_request(images: &[Vec<u8>; 2]) -> GenerateRequest {
    let mut content: Vec<ContentPart> = images
        .iter()
        .map(|data| ContentPart {
            part: Some(content_part::Part::Image(Image {
                data: data.clone().into(),
                mime_type: String::new(),
            })),
        })
        .collect();
    content.push(ContentPart {
        part: Some(content_part::Part::Text("Compare these.".into())),
    });
    GenerateRequest {
        messages: vec![ChatMessage {
            role: Role::User as i32,
            content,
        }],
        mode: ReasoningMode::Nothink as i32,
        sampling: Some(SamplingParams {
            max_tokens: Some(4),
            ignore_eos: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Asks `client` to compare `images`; whether the answer (all 4 tokens) came within
/// `ATTEMPT_LIMIT`. A request given up is dropped, which cancels it.
async fn compared_in_time(client: &GenerationClient<Channel>, images: &[Vec<u8>; 2]) -> bool {
    let mut client = client.clone();
    let answer = tokio::time::timeout(ATTEMPT_LIMIT, collect(&mut client, compare_request(images)));
    let Ok((tokens, _, last)) = answer.await else {
        return false;
    };
    assert_eq!(last.finish_reason(), FinishReason::Length, "{}", last.error);
    assert_eq!(tokens.len(), 4);
    true
}

/// Which of `images` `worker` (a vision worker) has the features of.
async fn encoded_by(worker: &Worker, images: &[Vec<u8>; 2]) -> [bool; 2] {
    [
        worker.has_image_features(&images[0]).await,
        worker.has_image_features(&images[1]).await,
    ]
}

/// The coordinator watches vision workers' load reports as any worker's: a paused (SIGSTOPped)
/// vision worker, still registered (its lease outlives the test), stops reporting and gets no
/// images, not even those it encoded before, while the other vision worker encodes them all; once
/// resumed, it reports again and gets images again, and the request that waited on it is
/// answered. On SIGTERM it drains: its load reports say so and end, and it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_vision_worker_gets_no_images_while_another_encodes_them_and_gets_them_again_once_resumed()
 {
    let lease = ["--lease-ttl-secs", "600"];
    let mut cluster = Cluster::start("disagg-etcd-pause-vision", &lease, &[]).await;
    let other = cluster.start_worker(WorkerRole::Vision, "vision-2", &lease);
    cluster
        .coordinator
        .wait_until_joined(&other.id, 1, PATIENCE)
        .await;
    let paused = &cluster.vision;
    let client = cluster.coordinator.client().await;
    let mut attempt = 0;
    let mut next_images = || {
        attempt += 1;
        fresh_images(attempt)
    };

    // Both take images: the two of one request go to the two workers (the first one's counts
    // against its worker while the second is placed), and each worker's load counts its batch.
    let first_images = next_images();
    let steps = [paused.steps().await, other.steps().await];
    assert!(compared_in_time(&client, &first_images).await, "answered");
    let encoded = [
        encoded_by(paused, &first_images).await,
        encoded_by(&other, &first_images).await,
    ];
    assert!(
        encoded == [[true, false], [false, true]] || encoded == [[false, true], [true, false]],
        "each vision worker encoded one image: {encoded:?}"
    );
    for (worker, steps) in [paused, &other].into_iter().zip(steps) {
        let load = worker.load().await;
        assert!(
            load.steps_completed > steps && load.total_kv_blocks == 0,
            "{}: {load:?}",
            worker.id
        );
    }

    paused.process.signal("STOP");
    // Likely placed (in part) on the paused worker before the coordinator notices: it waits.
    let waiting = {
        let (mut client, request) = (client.clone(), compare_request(&next_images()));
        tokio::spawn(async move { collect(&mut client, request).await })
    };
    // Requests whose image goes to the paused worker wait for it, and are given up; once the
    // coordinator has found the worker silent, both images of a request go to the other one.
    let started = Instant::now();
    loop {
        let images = next_images();
        if compared_in_time(&client, &images).await {
            assert_eq!(
                encoded_by(&other, &images).await,
                [true, true],
                "{} encoded both images while {} was paused",
                other.id,
                paused.id
            );
            break;
        }
        assert!(
            started.elapsed() < 2 * PATIENCE,
            "while {} was paused, no request was answered without it in {:?}",
            paused.id,
            2 * PATIENCE
        );
    }
    // Its cache draws no image either: the one it encoded before goes to the other worker now.
    assert!(
        compared_in_time(&client, &first_images).await,
        "a request for an image {} encoded before is answered while it is paused",
        paused.id
    );
    assert_eq!(encoded_by(&other, &first_images).await, [true, true]);
    assert!(
        !cluster
            .coordinator
            .process
            .log()
            .contains(&format!("worker {} left", paused.id)),
        "the paused worker stayed registered: its load reports, not its lease, kept it out"
    );

    paused.process.signal("CONT");
    let (_, _, last) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the request that waited on the paused worker is answered once it resumes")
        .unwrap();
    assert_eq!(last.finish_reason(), FinishReason::Length, "{}", last.error);
    let started = Instant::now();
    loop {
        let images = next_images();
        if compared_in_time(&client, &images).await
            && encoded_by(paused, &images).await.contains(&true)
        {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{} got no image within {PATIENCE:?} of resuming",
            paused.id
        );
    }

    // Draining, its load reports say so and end, so it exits while a load stream is open.
    let resumed = &mut cluster.vision;
    let mut load = resumed.watch_load().await;
    resumed.process.signal("TERM");
    let exited = resumed.process.wait_for_exit(PATIENCE);
    assert!(
        exited.success(),
        "{} drained and exited: {exited}",
        resumed.id
    );
    let draining = load.wait_for(|load| load.state() == WorkerState::Draining);
    tokio::time::timeout(PATIENCE, draining)
        .await
        .expect("the stream ends")
        .expect("the last load report says DRAINING");
}
