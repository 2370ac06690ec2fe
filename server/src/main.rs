//! The `onetrip` binary: see `onetrip --help`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = onetrip_server::cli::Cli::parse();
    std::process::exit(onetrip_server::cli::main_with(cli));
}
