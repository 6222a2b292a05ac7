//! `fovea generate`: one completion, in-process, streamed as text or printed as JSON.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::DType;
use clap::{Args, ValueEnum};
use fovea_model::generate::{GenerationRequest, SequenceRank, generate};
use fovea_model::input::RequestPreparer;
use fovea_model::sampling::SamplingParams;
use fovea_model::text::{ChatMessage, Detokenizer, IMAGE_MARKER, Mode};
use fovea_model::{DeviceSpec, Phi4VisionModel};
use serde_json::json;

use crate::tensor_parallel::TensorParallelArgs;

/// Compute precision.
#[derive(Clone, Copy, ValueEnum)]
pub enum ComputeDtype {
    F32,
    Bf16,
}

impl From<ComputeDtype> for DType {
    fn from(d: ComputeDtype) -> DType {
        match d {
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::Bf16 => DType::BF16,
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (Hugging Face format).
    #[arg(long)]
    model: PathBuf,
    /// One user message; `<image>` marks where each --image goes (without any marker, the images
    /// come first, one per line, before the text).
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    prompt: Option<String>,
    /// A JSON file with an array of {"role", "content"} messages.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// An image file, once per `<image>` marker, in order.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// auto (the model decides), think (`<think>`) or nothink.
    #[arg(long, default_value = "auto")]
    mode: Mode,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Generate max-new-tokens tokens even after the end-of-turn token.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: ComputeDtype,
    #[command(flatten)]
    tensor_parallel: TensorParallelArgs,
    /// Where the model runs: cpu, cuda or cuda:N (a GPU needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

fn messages(args: &GenerateArgs) -> Result<Vec<ChatMessage>, String> {
    match (&args.prompt, &args.messages) {
        (Some(prompt), _) => {
            let content = if prompt.contains(IMAGE_MARKER) {
                prompt.clone()
            } else {
                format!(
                    "{}{prompt}",
                    format!("{IMAGE_MARKER}\n").repeat(args.images.len())
                )
            };
            Ok(vec![ChatMessage {
                role: "user".into(),
                content,
            }])
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{}: expected a JSON array of {{\"role\", \"content\"}} objects: {e}",
                    path.display()
                )
            })
        }
        (None, None) => Err("give --prompt or --messages".into()),
    }
}

pub fn run(args: GenerateArgs) -> Result<(), String> {
    let device = args.device.open().map_err(|e| e.to_string())?;
    let messages = messages(&args)?;
    let images = args
        .images
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let preparer = RequestPreparer::from_model_dir(&args.model).map_err(|e| e.to_string())?;
    let request = preparer
        .prepare(&messages, &images, args.mode)
        .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let options = args.tensor_parallel.options()?;
    let mut ranks =
        Phi4VisionModel::load_ranks(&args.model, args.dtype.into(), &device, options, |model| {
            Ok(SequenceRank::new(Arc::new(model)))
        })
        .map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let eos_token_ids = ranks.local().model().config().eos_token_ids.clone();

    let generation_request = GenerationRequest {
        prompt_ids: &request.prompt_ids,
        images: &request.images,
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
            logprobs: None,
        },
        stop_token_ids: &eos_token_ids,
        ignore_eos: args.ignore_eos,
    };
    let mut detokenizer = Detokenizer::new(preparer.tokenizer().as_ref(), false);
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    let mut stream_error = None;
    let generation = generate(&mut ranks, &generation_request, |token| {
        match detokenizer.push(token) {
            Ok(delta) => {
                if !args.json {
                    let _ = stdout.write_all(delta.as_bytes());
                    let _ = stdout.flush();
                }
                text.push_str(&delta);
            }
            Err(e) => stream_error = Some(e.to_string()),
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(error) = stream_error {
        return Err(error);
    }
    text.push_str(&detokenizer.finish());
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    if args.json {
        let output = json!({
            "prompt_token_ids": request.prompt_ids,
            "token_ids": generation.token_ids,
            "text": text,
            "finish_reason": generation.finish_reason.as_str(),
            "timings": {
                "load_ms": load_ms,
                "vision_ms": ms(generation.timings.vision),
                "prefill_ms": ms(generation.timings.prefill),
                "decode_ms": ms(generation.timings.decode),
                "prompt_tokens": request.prompt_ids.len(),
                "generated_tokens": generation.token_ids.len(),
                "tp": ranks.world(),
                "decode_collectives_ms": ms(generation.timings.decode_collectives),
            }
        });
        writeln!(stdout, "{output}").map_err(|e| e.to_string())?;
    } else {
        writeln!(stdout).map_err(|e| e.to_string())?;
    }
    Ok(())
}
