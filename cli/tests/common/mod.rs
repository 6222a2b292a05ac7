//! What the `fovea serve` tests share: a real server process on free ports, the golden cases as
//! gRPC requests, and a gRPC stream collector.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::v1::{
    ChatMessage, ContentPart, GenerateFinal, GenerateRequest, Image, ReasoningMode, Role, SamplingParams, content_part,
    generate_response,
};
use fovea_proto::worker::v1::WatchLoadRequest;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use tonic::transport::Channel;

/// `testdata/golden`: the golden model, images and cases.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

/// `N` distinct loopback addresses nobody listens on now (all are held until all are chosen, so
/// none is handed out twice).
pub fn free_addrs<const N: usize>() -> [String; N] {
    let listeners = [(); N].map(|()| TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|listener| listener.local_addr().unwrap().to_string())
}

/// A `fovea serve` process, killed when dropped.
pub struct Server {
    child: Child,
    grpc: String,
    worker: String,
    /// The OpenAI-compatible HTTP API's `host:port`.
    pub http: String,
}

impl Server {
    /// Starts `fovea serve` on the golden model, on free ports, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Server {
        let [grpc_addr, worker_addr, http_addr] = free_addrs();
        let model = golden_dir().join("model");
        let child = Command::new(env!("CARGO_BIN_EXE_fovea"))
            .args(["serve", "--model", model.to_str().unwrap(), "--grpc-addr", &grpc_addr, "--worker-addr", &worker_addr])
            .args(["--http-addr", &http_addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fovea serve starts");
        Server {
            child,
            grpc: format!("http://{grpc_addr}"),
            worker: format!("http://{worker_addr}"),
            http: http_addr,
        }
    }

    /// A gRPC client, once the server accepts connections.
    pub async fn client(&self) -> GenerationClient<Channel> {
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
    pub async fn free_blocks(&self) -> u32 {
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
pub fn golden_request(case: &serde_json::Value, max_tokens: u32) -> GenerateRequest {
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

/// The cases of `golden.json`.
pub fn golden_cases() -> Vec<serde_json::Value> {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("golden.json")).unwrap()).unwrap();
    golden["cases"].as_array().unwrap().clone()
}

/// A JSON array of token ids.
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Every message of a stream, checking that exactly one final message ends it.
pub async fn collect(
    client: &mut GenerationClient<Channel>,
    request: GenerateRequest,
) -> (Vec<u32>, String, GenerateFinal) {
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

