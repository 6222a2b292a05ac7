//! `fovea bench`: a load generator against a running server. It sends a fixed number of text
//! and image requests through the client SDK, at a fixed concurrency or at Poisson-distributed
//! arrivals, and reports throughput, latency percentiles and goodput as vLLM's benchmark does,
//! in all and per kind of request.

mod dump;
mod metrics;
mod runner;
mod workload;

use std::path::PathBuf;

use clap::Args;
use fovea_client::{Client, ClientError};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;

use dump::DumpError;
use metrics::{Slo, Summary};
use runner::Pace;
use workload::{ImageSource, Mix, WorkloadError, WorkloadSpec};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("pace").required(true).multiple(true).args(["concurrency", "request_rate"]))]
pub struct BenchArgs {
    /// The server's public gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Requests to send in all.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Most requests in flight at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// Mean request arrivals per second (Poisson process, seeded by --seed).
    #[arg(long)]
    request_rate: Option<f64>,
    /// Kinds of request: text prompts, image questions, or both (spread evenly at --image-share).
    #[arg(long, value_enum, default_value = "text")]
    mix: Mix,
    /// With `--mix mixed`: the share of image requests, 0 to 1, spread evenly among the text
    /// requests (0.5, the default: they take turns; 0.25: every fourth request is an image one).
    #[arg(long, value_parser = parse_share)]
    image_share: Option<f64>,
    /// Images in each image request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    images_per_request: u32,
    /// Image files for image requests, used in turn (repeatable); default: generated PNGs.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Size of generated images, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720", value_parser = parse_size)]
    image_size: (u32, u32),
    /// Approximate prompt length of text requests, in tokens.
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    /// Tokens generated per request (end of turn is ignored, so every request generates this many).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Ask for each token's log probability and this many alternatives (0 to 20), as
    /// vLLM's `--logprobs`; unset: none.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=20))]
    logprobs: Option<u32>,
    /// Time-to-first-token target for goodput, in milliseconds.
    #[arg(long)]
    ttft_slo_ms: Option<f64>,
    /// Time-per-output-token target for goodput, in milliseconds.
    #[arg(long)]
    tpot_slo_ms: Option<f64>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the prompts, images and arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Before sending, write the requests (and the server's prompt ids for each) to this
    /// directory as workload.json plus image files, for other clients to replay.
    #[arg(long)]
    dump_workload: Option<PathBuf>,
}

/// Why a benchmark could not run or report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--request-rate must be a positive number, not {0}")]
    RequestRate(f64),
    #[error("--image-share needs --mix mixed")]
    ImageShareWithoutMixed,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error("cannot write {path}: {source}")]
    Json {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no request succeeded")]
    NothingSucceeded,
}

/// Parses a share, 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share from 0 to 1")),
    }
}

/// Parses `WIDTHxHEIGHT`, each 1 to 16384.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parse = |side: &str| {
        side.trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| (1..=16384).contains(&n))
    };
    match text.split_once(['x', 'X']) {
        Some((width, height)) => match (parse(width), parse(height)) {
            (Some(width), Some(height)) => Ok((width, height)),
            _ => Err(format!("{text:?}: each side must be 1 to 16384 pixels")),
        },
        None => Err(format!("{text:?} is not WIDTHxHEIGHT")),
    }
}

pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    if let Some(rate) = args
        .request_rate
        .filter(|rate| !(rate.is_finite() && *rate > 0.0))
    {
        return Err(BenchError::RequestRate(rate));
    }
    if args.image_share.is_some() && args.mix != Mix::Mixed {
        return Err(BenchError::ImageShareWithoutMixed);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let summary = runtime.block_on(bench(&args))?;
    print!("{summary}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&summary).map_err(std::io::Error::from);
        json.and_then(|json| std::fs::write(path, json + "\n"))
            .map_err(|source| BenchError::Json {
                path: path.clone(),
                source,
            })?;
    }
    if summary.totals.completed == 0 {
        return Err(BenchError::NothingSucceeded);
    }
    Ok(())
}

async fn bench(args: &BenchArgs) -> Result<Summary, BenchError> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (width, height) = args.image_size;
    let spec = WorkloadSpec {
        requests: args.requests as usize,
        image_share: args.mix.image_share(args.image_share.unwrap_or(0.5)),
        images_per_request: args.images_per_request as usize,
        images: if args.image.is_empty() {
            ImageSource::Generated { width, height }
        } else {
            ImageSource::Files(args.image.clone())
        },
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        logprobs: args.logprobs,
    };
    let requests = workload::build(&spec, &mut rng)?;
    let client = Client::connect(args.addr.clone()).await?;
    if let Some(dir) = &args.dump_workload {
        dump::write(&client, &requests, dir).await?;
    }
    let progress = ProgressBar::new(requests.len() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests [{elapsed_precise}]")
    {
        progress.set_style(style);
    }
    let pace = Pace {
        concurrency: args.concurrency.map(|c| c as usize),
        request_rate: args.request_rate,
    };
    let (outcomes, duration) = runner::run(&client, requests, pace, &mut rng, &progress).await;
    progress.finish_and_clear();
    let slo = Slo {
        ttft_ms: args.ttft_slo_ms,
        tpot_ms: args.tpot_slo_ms,
    };
    Ok(Summary::new(&outcomes, duration, slo))
}

#[cfg(test)]
mod tests {
    use super::{parse_share, parse_size};

    #[test]
    fn image_sizes_parse_as_width_by_height_within_limits() {
        assert_eq!(parse_size("1280x720"), Ok((1280, 720)));
        assert_eq!(parse_size("16X9"), Ok((16, 9)));
        for bad in ["1280", "0x10", "10x16385", "axb", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_shares_parse_from_zero_to_one() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert_eq!(parse_share("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "NaN", "half", ""] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }
}
