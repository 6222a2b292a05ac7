//! The `fovea` command line: offline generation, demo checkpoints, and (later) the serving cluster.

mod demo_model;
mod generate;

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::DemoModel(args) => demo_model::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
