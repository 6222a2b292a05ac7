//! The `fovea` command line: offline generation, demo checkpoints, and the serving cluster.

mod demo_model;
mod generate;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fovea", version, about = "Serving cluster for Phi-4-reasoning-vision models")]
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::DemoModel(args) => demo_model::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
