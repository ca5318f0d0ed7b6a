//! The `portcullis` binary.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    portcullis::run(portcullis::cli::Cli::parse()).await
}
