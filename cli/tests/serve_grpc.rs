//! `fovea serve` as a client sees it: a real server process, real gRPC over loopback.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::v1::{
    ChatMessage, ContentPart, FinishReason, GenerateRequest, Image, ReasoningMode, Role, SamplingParams,
    content_part, generate_response,
};
use fovea_proto::worker::v1::WatchLoadRequest;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use tonic::Code;
use tonic::transport::Channel;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `fovea serve` process, killed when dropped.
struct Server {
    child: Child,
    grpc: String,
    worker: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let (grpc_port, worker_port) = (free_port(), free_port());
        let grpc_addr = format!("127.0.0.1:{grpc_port}");
        let worker_addr = format!("127.0.0.1:{worker_port}");
        let model = golden_dir().join("model");
        let child = Command::new(env!("CARGO_BIN_EXE_fovea"))
            .args(["serve", "--model", model.to_str().unwrap(), "--grpc-addr", &grpc_addr, "--worker-addr", &worker_addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fovea serve starts");
        Server {
            child,
            grpc: format!("http://{grpc_addr}"),
            worker: format!("http://{worker_addr}"),
        }
    }

    async fn client(&self) -> GenerationClient<Channel> {
        let started = Instant::now();
        loop {
            match GenerationClient::connect(self.grpc.clone()).await {
                Ok(client) => return client.max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20),
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("server did not come up: {e}"),
            }
        }
    }

    /// The worker's free KV blocks, from its WatchLoad stream.
    async fn free_blocks(&self) -> u32 {
        let mut worker = WorkerClient::connect(self.worker.clone()).await.unwrap();
        let mut load = worker
            .watch_load(WatchLoadRequest { interval_ms: 10 })
            .await
            .unwrap()
            .into_inner();
        load.message().await.unwrap().unwrap().free_kv_blocks
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A golden case as a request: `<image>` markers become image parts in place.
fn golden_request(case: &serde_json::Value, max_tokens: u32) -> GenerateRequest {
    let mut images = case["images"].as_array().unwrap().iter().map(|f| {
        std::fs::read(golden_dir().join("images").join(f.as_str().unwrap())).unwrap()
    });
    let messages = case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                _ => Role::System,
            };
            let text = m["content"].as_str().unwrap();
            let mut content = Vec::new();
            for (i, piece) in text.split("<image>").enumerate() {
                if i > 0 {
                    let data = images.next().unwrap();
                    content.push(ContentPart {
                        part: Some(content_part::Part::Image(Image {
                            data: data.into(),
                            mime_type: String::new(),
                        })),
                    });
                }
                if !piece.is_empty() {
                    content.push(ContentPart {
                        part: Some(content_part::Part::Text(piece.to_string())),
                    });
                }
            }
            ChatMessage {
                role: role as i32,
                content,
            }
        })
        .collect();
    let mode = match case["mode"].as_str().unwrap() {
        "think" => ReasoningMode::Think,
        "nothink" => ReasoningMode::Nothink,
        _ => ReasoningMode::Auto,
    };
    GenerateRequest {
        messages,
        mode: mode as i32,
        sampling: Some(SamplingParams {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn golden_cases() -> Vec<serde_json::Value> {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("golden.json")).unwrap()).unwrap();
    golden["cases"].as_array().unwrap().clone()
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Every message of a stream, checking that exactly one final message ends it.
async fn collect(client: &mut GenerationClient<Channel>, request: GenerateRequest) -> (Vec<u32>, String, fovea_proto::v1::GenerateFinal) {
    let mut stream = client.generate(request).await.expect("accepted").into_inner();
    let (mut tokens, mut text, mut last) = (Vec::new(), String::new(), None);
    while let Some(message) = stream.message().await.expect("stream stays healthy") {
        assert!(last.is_none(), "nothing may follow the final message");
        match message.event {
            Some(generate_response::Event::Delta(delta)) => {
                tokens.extend(delta.token_ids);
                text.push_str(&delta.text);
            }
            Some(generate_response::Event::Final(done)) => last = Some(done),
            None => panic!("empty response message"),
        }
    }
    (tokens, text, last.expect("a final message ends every stream"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_stream_golden_tokens_alone_and_sixteen_at_once() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let cases = golden_cases();
    for case in &cases {
        let (tokens, _, last) = collect(&mut client, golden_request(case, 12)).await;
        assert_eq!(tokens, ids(&case["greedy_tokens"]), "{}", case["name"]);
        assert_eq!(last.finish_reason(), FinishReason::Length);
        let usage = last.usage.unwrap();
        assert_eq!(usage.prompt_tokens as usize, case["input_ids"].as_array().unwrap().len());
        assert_eq!(usage.completion_tokens, 12);
    }
    let idle = server.free_blocks().await;
    let runs = (0..16).map(|i| {
        let case = cases[i % cases.len()].clone();
        let mut client = client.clone();
        tokio::spawn(async move {
            let (tokens, _, _) = collect(&mut client, golden_request(&case, 12)).await;
            (tokens, ids(&case["greedy_tokens"]))
        })
    });
    for run in runs.collect::<Vec<_>>() {
        let (tokens, expected) = run.await.unwrap();
        assert_eq!(tokens, expected, "concurrent requests keep their golden tokens");
    }
    assert_eq!(server.free_blocks().await, idle, "every block is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_stream_frees_its_kv_blocks() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let idle = server.free_blocks().await;
    let case = &golden_cases()[0];
    let mut stream = client.generate(golden_request(case, 10_000)).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    assert!(server.free_blocks().await < idle, "a running request holds blocks");
    drop(stream);
    let started = Instant::now();
    while server.free_blocks().await != idle {
        assert!(started.elapsed() < Duration::from_secs(10), "blocks were not freed after the cancel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_resource_exhausted() {
    let server = Server::start(&["--max-requests", "1"]);
    let mut client = server.client().await;
    let case = &golden_cases()[0];
    let mut long = client.generate(golden_request(case, 10_000)).await.unwrap().into_inner();
    long.message().await.unwrap().unwrap();
    let refused = client.generate(golden_request(case, 4)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_invalid_argument_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-images", "2"]);
    let mut client = server.client().await;
    let cases = golden_cases();
    let text_case = &cases[0];
    let image_case = cases.iter().find(|c| c["name"] == "chart_nothink").unwrap();

    let mut bad_image = golden_request(image_case, 4);
    if let Some(content_part::Part::Image(image)) = &mut bad_image.messages[0].content[0].part {
        image.data = b"\x89PNG\r\n\x1a\nnot a png".to_vec().into();
    }
    let mut too_many_images = golden_request(image_case, 4);
    let image_part = too_many_images.messages[0].content[0].clone();
    too_many_images.messages[0].content.extend([image_part.clone(), image_part]);
    let mut too_long = golden_request(text_case, 4);
    too_long.sampling.as_mut().unwrap().max_tokens = Some(40_000);
    let mut bad_top_p = golden_request(text_case, 4);
    bad_top_p.sampling.as_mut().unwrap().top_p = Some(2.0);
    let mut marker_in_text = golden_request(text_case, 4);
    marker_in_text.messages[0].content.push(ContentPart {
        part: Some(content_part::Part::Text("and <image>".into())),
    });
    let cases = [
        (bad_image, "image 0"),
        (too_many_images, "3 images exceed"),
        (too_long, "exceeds the context"),
        (bad_top_p, "top_p"),
        (marker_in_text, "<image>"),
    ];
    for (request, expected) in cases {
        let status = client.generate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains(expected), "{:?} should mention {expected:?}", status.message());
    }
    let (tokens, _, last) = collect(&mut client, golden_request(text_case, 12)).await;
    assert_eq!(tokens, ids(&text_case["greedy_tokens"]), "still serving after bad input");
    assert_eq!(last.finish_reason(), FinishReason::Length);
}
