//! What the server-backed tests share: a `fovea serve` process on the golden checkpoint, on free
//! loopback ports, killed when dropped; the golden cases (`fovea_model::testing`) as gRPC requests;
//! a gRPC stream collector; and ([`cluster`]) etcd, coordinator and worker processes for the
//! cluster tests.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod cluster;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fovea_model::testing::{GoldenCase, golden_model_dir};
use fovea_model::text::Mode;
use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::v1::{
    ChatMessage, ContentPart, GenerateFinal, GenerateRequest, Image, ReasoningMode, Role,
    SamplingParams, TokenDelta, content_part, generate_response,
};
use fovea_proto::worker::v1::WatchLoadRequest;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use tonic::transport::Channel;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let [addr] = free_addrs();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// `N` distinct loopback addresses nobody listens on now and none handed out before in this test
/// process: a port is let go when chosen, and the system would soon offer it again, to another
/// server of the same test or of a test running beside it, before the first has bound it.
pub fn free_addrs<const N: usize>() -> [String; N] {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // Every listener stays open until the pick ends, so the system offers a new port each time.
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    while held.len() < N {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        if handed_out.insert(listener.local_addr().unwrap().port()) {
            held.push(listener);
        } else {
            refused.push(listener);
        }
    }
    std::array::from_fn(|i| held[i].local_addr().unwrap().to_string())
}

/// The public API's address on `port`.
pub fn address(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A `fovea serve` process, killed when dropped.
pub struct Server {
    child: Child,
    port: u16,
    worker: String,
    /// The OpenAI-compatible HTTP API's `host:port`.
    pub http: String,
}

impl Server {
    /// Starts `fovea serve` on the golden checkpoint with its public API on `port`.
    pub fn start_on(port: u16) -> Server {
        Self::launch(port, &[])
    }

    /// Starts `fovea serve` on the golden checkpoint, on free ports, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Server {
        Self::launch(free_port(), extra)
    }

    fn launch(port: u16, extra: &[&str]) -> Server {
        let [worker, http] = free_addrs();
        let model = golden_model_dir();
        let child = Command::new(env!("CARGO_BIN_EXE_fovea"))
            .args(["serve", "--model", model.to_str().unwrap()])
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{port}"),
                "--worker-addr",
                &worker,
                "--http-addr",
                &http,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fovea serve starts");
        Server {
            child,
            port,
            worker: format!("http://{worker}"),
            http,
        }
    }

    /// Waits until the public API accepts connections (at most a minute).
    pub fn wait_until_listening(&self) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "fovea serve did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A gRPC client, once the server accepts connections.
    pub async fn client(&self) -> GenerationClient<Channel> {
        let started = Instant::now();
        loop {
            match GenerationClient::connect(address(self.port)).await {
                Ok(client) => {
                    return client
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20);
                }
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
pub fn golden_request(case: &GoldenCase, max_tokens: u32) -> GenerateRequest {
    let mut images = case.image_bytes().into_iter();
    let messages = case
        .messages
        .iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                _ => Role::System,
            };
            let mut content = Vec::new();
            for (i, piece) in m.content.split("<image>").enumerate() {
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
    let mode = match case.mode() {
        Mode::Think => ReasoningMode::Think,
        Mode::NoThink => ReasoningMode::Nothink,
        Mode::Auto => ReasoningMode::Auto,
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

/// Every delta of a stream and its final message, checking that exactly one final message ends it.
pub async fn collect_deltas(
    client: &mut GenerationClient<Channel>,
    request: GenerateRequest,
) -> (Vec<TokenDelta>, GenerateFinal) {
    let mut stream = client
        .generate(request)
        .await
        .expect("accepted")
        .into_inner();
    let (mut deltas, mut last) = (Vec::new(), None);
    while let Some(message) = stream.message().await.expect("stream stays healthy") {
        assert!(last.is_none(), "nothing may follow the final message");
        match message.event {
            Some(generate_response::Event::Delta(delta)) => deltas.push(delta),
            Some(generate_response::Event::Final(done)) => last = Some(done),
            None => panic!("empty response message"),
        }
    }
    (deltas, last.expect("a final message ends every stream"))
}

/// A stream's token ids, its text and its final message.
pub async fn collect(
    client: &mut GenerationClient<Channel>,
    request: GenerateRequest,
) -> (Vec<u32>, String, GenerateFinal) {
    let (deltas, last) = collect_deltas(client, request).await;
    let tokens = deltas
        .iter()
        .flat_map(|delta| delta.token_ids.iter().copied())
        .collect();
    let text = deltas.iter().map(|delta| delta.text.as_str()).collect();
    (tokens, text, last)
}
