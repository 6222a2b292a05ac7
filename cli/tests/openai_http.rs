//! `fovea serve`'s OpenAI-compatible HTTP API as a client sees it: a real server process, plain
//! HTTP/1.1 over loopback, answers compared with the gRPC API's for the same golden requests.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fovea_model::testing::{
    GoldenCase, GoldenTensors, golden_cases, golden_model_dir, reference_log_softmax,
};
use fovea_model::text::{Mode, TextTokenizer};
use serde_json::{Value, json};
use support::{Server, collect, golden_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP response: status code and body (de-chunked).
struct HttpResponse {
    status: u16,
    body: String,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of a Server-Sent Events body, in order.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

/// A connection to the server's HTTP address, waiting for it to come up.
async fn connect(server: &Server) -> TcpStream {
    let started = Instant::now();
    loop {
        match TcpStream::connect(&server.http).await {
            Ok(stream) => return stream,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("HTTP server did not come up: {e}"),
        }
    }
}

/// Sends one request on a fresh connection, without reading the answer.
async fn send(server: &Server, method: &str, path: &str, body: &str) -> TcpStream {
    let mut stream = connect(server).await;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        server.http,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    stream
}

/// One request and its whole response.
async fn request(server: &Server, method: &str, path: &str, body: &str) -> HttpResponse {
    let mut stream = send(server, method, path, body).await;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse { status, body }
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut payload = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return payload;
        }
        payload.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// A golden case as a chat completion request: `<image>` markers become image parts in place.
fn golden_body(case: &GoldenCase, stream: bool) -> String {
    let mut images = case.images.iter().zip(case.image_bytes()).map(|(file, bytes)| {
        let mime = if file.ends_with(".jpg") { "image/jpeg" } else { "image/png" };
        json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{}", STANDARD.encode(bytes))}})
    });
    let messages: Vec<Value> = case
        .messages
        .iter()
        .map(|message| {
            let mut parts = Vec::new();
            for (i, piece) in message.content.split("<image>").enumerate() {
                if i > 0 {
                    parts.push(images.next().unwrap());
                }
                if !piece.is_empty() {
                    parts.push(json!({"type": "text", "text": piece}));
                }
            }
            json!({"role": message.role, "content": parts})
        })
        .collect();
    json!({
        "model": "phi-4-reasoning-vision",
        "messages": messages,
        "mode": case.mode_name,
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": true,
        "stream": stream,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_answer_as_the_grpc_api_does_whole_and_streamed() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    for case in &golden_cases() {
        let name = &case.name;
        let (tokens, grpc_text, _) = collect(&mut client, golden_request(case, 12)).await;
        assert_eq!(tokens, case.greedy_tokens, "{name}");
        assert_eq!(
            grpc_text, case.greedy_text,
            "{name}: the golden tokens' text"
        );
        let in_reasoning = case.mode() == Mode::Think;

        let whole = request(
            &server,
            "POST",
            "/v1/chat/completions",
            &golden_body(case, false),
        )
        .await;
        assert_eq!(whole.status, 200, "{name}: {}", whole.body);
        let whole = whole.json();
        assert_eq!(whole["object"], "chat.completion");
        let choice = &whole["choices"][0];
        assert_eq!(choice["finish_reason"], "length", "{name}");
        assert_eq!(choice["message"]["role"], "assistant");
        let reasoning = choice["message"]["reasoning_content"].as_str().unwrap();
        let answer = choice["message"]["content"].as_str().unwrap();
        assert_eq!(format!("{reasoning}{answer}"), grpc_text, "{name}");
        assert_eq!(
            if in_reasoning { answer } else { reasoning },
            "",
            "{name}: think mode answers in reasoning only"
        );
        let usage = &whole["usage"];
        assert_eq!(usage["completion_tokens"], 12, "{name}");
        assert_eq!(usage["prompt_tokens"], case.input_ids.len(), "{name}");
        assert_eq!(
            usage["total_tokens"],
            usage["prompt_tokens"].as_u64().unwrap() + 12
        );

        let streamed = request(
            &server,
            "POST",
            "/v1/chat/completions",
            &golden_body(case, true),
        )
        .await;
        assert_eq!(streamed.status, 200, "{name}: {}", streamed.body);
        let events = streamed.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{name}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .map(|chunk| {
                assert_eq!(chunk["object"], "chat.completion.chunk");
                let delta = &chunk["choices"][0]["delta"];
                let field = if in_reasoning {
                    "reasoning_content"
                } else {
                    "content"
                };
                delta[field].as_str().unwrap_or_default().to_string()
            })
            .collect();
        assert_eq!(text, grpc_text, "{name}");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length", "{name}");
        assert_eq!(last["usage"]["completion_tokens"], 12, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_a_stream_frees_its_kv_blocks() {
    let server = Server::start(&[]);
    let _ = server.client().await;
    let idle = server.free_blocks().await;
    let body = json!({
        "messages": [{"role": "user", "content": "Count forever."}],
        "max_tokens": 10_000,
        "ignore_eos": true,
        "stream": true,
    });
    let mut stream = send(&server, "POST", "/v1/chat/completions", &body.to_string()).await;
    let mut seen = Vec::new();
    while seen.windows(6).filter(|w| w == b"data: ").count() < 4 {
        let mut buffer = [0; 1024];
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(
            read > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }
    assert!(
        server.free_blocks().await < idle,
        "a running request holds blocks"
    );
    drop(stream);
    let started = Instant::now();
    while server.free_blocks().await != idle {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "blocks were not freed after the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_models_lists_the_model() {
    let server = Server::start(&[]);
    let models = request(&server, "GET", "/v1/models", "").await;
    assert_eq!(models.status, 200, "{}", models.body);
    let models = models.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "phi-4-reasoning-vision");

    let image = |url: &str| {
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}]})
    };
    let not_png = format!(
        "data:image/png;base64,{}",
        STANDARD.encode(b"\x89PNG\r\n\x1a\nnot a png")
    );
    let cases = [
        (image(&not_png), 400, "image 0"),
        (image("https://example.com/cat.png"), 400, "only data URIs"),
        (json!({"messages": "hello"}), 400, "invalid request body"),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "unknown model",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "top_p": 2.0}),
            400,
            "top_p",
        ),
    ];
    for (body, status, expected) in cases {
        let response = request(&server, "POST", "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(response.status, status, "{}", response.body);
        let error = &response.json()["error"];
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{message:?} should mention {expected:?}"
        );
        assert!(
            error["type"].is_string() && error["code"].is_string(),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_answer_with_finish_reason_stop() {
    let server = Server::start(&[]);
    let case = &golden_cases()[0];
    let greedy_text = case.greedy_text.as_str();
    let stop = " thesis";
    let before_stop = &greedy_text[..greedy_text.find(stop).unwrap()];
    let mut body: Value = serde_json::from_str(&golden_body(case, false)).unwrap();
    body["stop"] = json!([stop]);
    let response = request(&server, "POST", "/v1/chat/completions", &body.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let choice = &response.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["content"], before_stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    let server = Server::start(&["--max-requests", "1"]);
    let long = json!({
        "messages": [{"role": "user", "content": "Count forever."}],
        "max_tokens": 10_000,
        "ignore_eos": true,
        "stream": true,
    });
    let mut running = send(&server, "POST", "/v1/chat/completions", &long.to_string()).await;
    let mut first = [0; 1];
    running.read_exact(&mut first).await.unwrap();
    let short = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let refused = request(&server, "POST", "/v1/chat/completions", &short.to_string()).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "resource_exhausted");
}

/// A golden case's request for `top` log probabilities per token.
fn golden_body_with_logprobs(case: &GoldenCase, stream: bool, top: u32) -> String {
    let mut body: Value = serde_json::from_str(&golden_body(case, stream)).unwrap();
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(top);
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_come_whole_and_streamed_in_openai_format_and_match_the_reference() {
    let server = Server::start(&[]);
    let golden = GoldenTensors::load();
    let tokenizer = TextTokenizer::from_file(&golden_model_dir().join("tokenizer.json")).unwrap();
    for case in &golden_cases() {
        let name = &case.name;
        let whole = request(
            &server,
            "POST",
            "/v1/chat/completions",
            &golden_body_with_logprobs(case, false, 3),
        )
        .await;
        assert_eq!(whole.status, 200, "{name}: {}", whole.body);
        let whole = whole.json();
        let content = whole["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(
            content.len(),
            case.greedy_tokens.len(),
            "{name}: one entry per generated token"
        );
        for (entry, &token) in content.iter().zip(&case.greedy_tokens) {
            let bytes = tokenizer.token_bytes(token).unwrap();
            assert_eq!(entry["bytes"], json!(bytes), "{name}");
            assert_eq!(
                entry["token"],
                String::from_utf8_lossy(&bytes).into_owned(),
                "{name}"
            );
            let top = entry["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3, "{name}: exactly top_logprobs alternatives");
            assert_eq!(
                (&top[0]["token"], &top[0]["logprob"]),
                (&entry["token"], &entry["logprob"]),
                "{name}"
            );
            let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
            assert!(
                values.windows(2).all(|w| w[0] >= w[1]),
                "{name}: most likely first"
            );
        }
        let reference = reference_log_softmax(&golden.prefill_last_logits(name));
        let first = content[0]["logprob"].as_f64().unwrap();
        let expected = reference[case.greedy_tokens[0] as usize];
        assert!(
            (first - expected).abs() < 1e-4,
            "{name}: first logprob {first}, reference {expected}"
        );

        let streamed = request(
            &server,
            "POST",
            "/v1/chat/completions",
            &golden_body_with_logprobs(case, true, 3),
        )
        .await;
        assert_eq!(streamed.status, 200, "{name}: {}", streamed.body);
        let events = streamed.events();
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let streamed_content: Vec<Value> = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0]["logprobs"]["content"].as_array())
            .flatten()
            .cloned()
            .collect();
        // The second request reuses the first one's cached prefix: same tokens, values within rounding.
        assert_eq!(
            streamed_content.len(),
            content.len(),
            "{name}: the stream's chunks carry one entry per token"
        );
        for (streamed_entry, entry) in streamed_content.iter().zip(&content) {
            assert_eq!(streamed_entry["token"], entry["token"], "{name}");
            assert_eq!(
                streamed_entry["top_logprobs"].as_array().unwrap().len(),
                3,
                "{name}"
            );
            let difference =
                streamed_entry["logprob"].as_f64().unwrap() - entry["logprob"].as_f64().unwrap();
            assert!(
                difference.abs() < 1e-4,
                "{name}: {streamed_entry} against {entry}"
            );
        }
    }

    let plain = request(
        &server,
        "POST",
        "/v1/chat/completions",
        &golden_body(&golden_cases()[0], false),
    )
    .await;
    assert_eq!(
        plain.json()["choices"][0]["logprobs"],
        Value::Null,
        "no logprobs unless asked for"
    );
    let too_many: Value =
        serde_json::from_str(&golden_body_with_logprobs(&golden_cases()[0], false, 21)).unwrap();
    let mut without_logprobs = too_many.clone();
    without_logprobs["logprobs"] = json!(false);
    without_logprobs["top_logprobs"] = json!(2);
    for (body, expected) in [
        (too_many, "0 to 20"),
        (without_logprobs, "\"logprobs\": true"),
    ] {
        let refused = request(&server, "POST", "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(refused.status, 400, "{}", refused.body);
        let message = refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains(expected),
            "{message:?} should mention {expected:?}"
        );
    }
    let again = request(
        &server,
        "POST",
        "/v1/chat/completions",
        &golden_body(&golden_cases()[0], false),
    )
    .await;
    assert_eq!(
        again.status, 200,
        "still serving after the refusals: {}",
        again.body
    );
}
