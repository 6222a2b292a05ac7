//! The `fovea` command line: offline generation, demo checkpoints, the serving cluster, and a
//! load generator against it.

mod api_args;
mod bench;
mod coordinator;
mod demo_model;
mod engine_args;
mod etcd_args;
mod generate;
mod model_args;
mod process;
mod serve;
mod tensor_parallel;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fovea",
    version,
    about = "Serving cluster for Phi-4-reasoning-vision models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion offline, in this process.
    Generate(generate::GenerateArgs),
    /// Write a random-weight checkpoint in the real model's directory format.
    DemoModel(demo_model::DemoModelArgs),
    /// Run the coordinator and a worker in one process (gRPC API on 127.0.0.1:50051).
    Serve(serve::ServeArgs),
    /// Run the coordinator alone, routing to the workers registered in etcd.
    Coordinator(coordinator::CoordinatorArgs),
    /// Run one worker, registered in etcd for coordinators to find.
    Worker(worker::WorkerArgs),
    /// Benchmark a running server: throughput, TTFT, TPOT, ITL and goodput, as vLLM reports them.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::DemoModel(args) => demo_model::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Coordinator(args) => coordinator::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Bench(args) => bench::run(args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
