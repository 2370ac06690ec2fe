//! The `onetrip` binary: see `onetrip --help`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = onetrip_server::cli::Cli::parse();
    // The long-running server must not keep ONETRIP_PASSPHRASE in /proc/PID/environ.
    if matches!(cli.command, onetrip_server::cli::Command::Serve(_)) {
        if let Err(e) = onetrip_server::environ::reexec_without_passphrase() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    std::process::exit(onetrip_server::cli::main_with(cli));
}
