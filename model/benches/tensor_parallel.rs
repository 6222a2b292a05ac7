//! Decode speed with the decoder split over two ranks against one rank, on the same cores:
//! `cargo bench -p fovea-model --bench tensor_parallel`.
//!
//! Writes the `bench` demo checkpoint (231M parameters, f32) to a temporary directory, then decodes
//! 64 tokens after a short prompt at TP 1 with 2 threads and at TP 2 with one thread per rank,
//! alternating the two for 5 rounds so that both see the same machine load, and prints the median
//! decode tokens/s of each, their ratio, and the time rank 0 spent in collectives per step.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use fovea_model::Phi4VisionModel;
use fovea_model::demo::{DemoPreset, write_demo_checkpoint};
use fovea_model::generate::{GenerationRequest, SequenceRank, generate};
use fovea_model::sampling::SamplingParams;
use fovea_model::tp::{RankGroup, RankOptions};

const TOKENS: usize = 64;
const ROUNDS: usize = 5;

struct Setup {
    name: &'static str,
    ranks: RankGroup<SequenceRank>,
    tokens_per_second: Vec<f64>,
    collectives_per_step: Vec<Duration>,
}

fn setup(
    dir: &std::path::Path,
    name: &'static str,
    world: usize,
    threads_per_rank: usize,
) -> Setup {
    let options = RankOptions {
        threads_per_rank,
        ..RankOptions::new(world)
    };
    let ranks = Phi4VisionModel::load_ranks(dir, DType::F32, &Device::Cpu, options, |model| {
        Ok(SequenceRank::new(Arc::new(model)))
    })
    .expect("the bench checkpoint loads");
    Setup {
        name,
        ranks,
        tokens_per_second: Vec::new(),
        collectives_per_step: Vec::new(),
    }
}

fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    sorted[sorted.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("fovea-tp-bench-{}", std::process::id()));
    write_demo_checkpoint(DemoPreset::Bench, &dir, 0).expect("the bench checkpoint is written");
    let prompt: Vec<u32> = (0..32).map(|i| 1000 + i).collect();
    let request = GenerationRequest {
        prompt_ids: &prompt,
        images: &[],
        max_new_tokens: TOKENS + 1,
        sampling: SamplingParams::default(),
        stop_token_ids: &[],
        ignore_eos: true,
    };
    // The single rank runs on rayon's global pool, sized by RAYON_NUM_THREADS (2 here).
    let mut setups = [
        setup(&dir, "TP 1, 2 threads", 1, 2),
        setup(&dir, "TP 2, 1 thread per rank", 2, 1),
    ];
    for round in 0..=ROUNDS {
        for setup in &mut setups {
            let generation = generate(&mut setup.ranks, &request, |_| {}).expect("generation runs");
            if round == 0 {
                continue; // warm-up
            }
            let steps = (generation.token_ids.len() - 1) as u32;
            setup
                .tokens_per_second
                .push(steps as f64 / generation.timings.decode.as_secs_f64());
            setup
                .collectives_per_step
                .push(generation.timings.decode_collectives / steps);
        }
    }
    for setup in &setups {
        println!(
            "{:<26} decode {:>6.1} tok/s (median of {ROUNDS}), collectives {:>7.1} µs/step",
            setup.name,
            median(&setup.tokens_per_second),
            median(&setup.collectives_per_step).as_secs_f64() * 1e6,
        );
    }
    let ratio = median(&setups[1].tokens_per_second) / median(&setups[0].tokens_per_second);
    println!("TP 2 / TP 1 decode speed: {ratio:.3}x");
    let _ = std::fs::remove_dir_all(&dir);
}
