//! # onetrip-load
//!
//! The benchmark harness behind `bench/run.sh` (see `bench/README.md`): a closed-loop
//! HTTP/1.1 keep-alive load generator that verifies every answer, the reference
//! servers it is compared against, and in-process and process-level measurements.
//!
//! | module | job |
//! |---|---|
//! | [`http1`] | minimal keep-alive HTTP/1.1 client (status, length or chunked body) |
//! | [`drive`] | the closed loop: connections, deadline, HdrHistogram latency, errors |
//! | [`workloads`] | onetrip handshakes, snow Noise IK handshakes, fixed-body POST |
//! | [`servers`] | hyper "hello" (HTTP floor), "hello-dh" (floor + one X25519) and snow Noise IK responder servers |
//! | [`inproc`] | X25519 on both backends, token and PoP verify, snow steps |
//! | [`tools`] | bulk key creation, start-up time + RSS, cache warm-up wait, introspect body |
//! | [`rng`] | userspace CSPRNG for the client side |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod drive;
mod http1;
mod inproc;
mod rng;
mod servers;
mod tools;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use onetrip_protocol::api_key::ApiKey;

#[derive(Parser, Debug)]
#[command(name = "onetrip-load", about = "onetrip benchmark harness (see bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How the load is shaped (same for every target).
#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Server base URL, e.g. http://127.0.0.1:7420.
    #[arg(long)]
    url: String,
    /// Simultaneous keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Timed duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Load-generator threads [default: available cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Stop after this many requests, or at the deadline (0: deadline only).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Server process id: report its CPU time per answer during the timed loop.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// onetrip handshakes (POST /v1/auth), every response opened and checked.
    Handshake {
        #[command(flatten)]
        load: LoadArgs,
        /// File of API keys (one a line, as written by gen-keys).
        #[arg(long, conflicts_with = "key")]
        keys: Option<PathBuf>,
        /// A single API key.
        #[arg(long)]
        key: Option<String>,
        /// Use at most this many keys from the file (round robin).
        #[arg(long, default_value_t = 10_000)]
        max_keys: usize,
        /// Pinned server identity fingerprint (SHA256:…).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Build this many requests (ephemeral key + DH) before the clock starts; the
        /// run ends early if they are used up. 0: build each inside the timed loop.
        #[arg(long, default_value_t = 0)]
        pregenerate: usize,
    },
    /// snow Noise IK handshakes against `noise-server`, same HTTP shape.
    Noise {
        #[command(flatten)]
        load: LoadArgs,
        /// Distinct client static keys.
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        /// As for `handshake`.
        #[arg(long, default_value_t = 0)]
        pregenerate: usize,
    },
    /// POST a fixed body and check each answer.
    Http {
        #[command(flatten)]
        load: LoadArgs,
        /// Request path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Body as text.
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// Body from a file.
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Body of N bytes of 'x' (the default is 384, an onetrip request).
        #[arg(long, default_value_t = onetrip_protocol::REQUEST_LEN)]
        body_len: usize,
        /// Extra header line `name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Required status.
        #[arg(long, default_value_t = 200)]
        expect_status: u16,
        /// Required body length.
        #[arg(long)]
        expect_len: Option<usize>,
        /// Required substring of the body.
        #[arg(long)]
        expect_contains: Option<String>,
    },
    /// Hyper 1 HTTP/1.1 server answering 400 fixed bytes to any POST (the HTTP floor).
    HelloServer {
        /// Listen address (port 0: pick one; printed as `listening on http://…`).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The hello server plus one X25519 (aws-lc-rs) per request: the composed limit, measured.
    HelloDhServer {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// snow Noise_IK_25519_ChaChaPoly_BLAKE2s responder over HTTP POST.
    NoiseServer {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Create API keys in bulk directly in a store (server not running).
    GenKeys {
        /// Data directory (created and initialised if needed).
        #[arg(long)]
        data_dir: PathBuf,
        /// Number of keys.
        #[arg(long)]
        count: usize,
        /// Where the API key strings go, one a line.
        #[arg(long)]
        out: PathBuf,
        /// Threads for verifier derivation [default: available cores].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// In-process rates: X25519 (both backends), token and PoP verify, snow steps.
    Inproc {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Start-up time to first /healthz 200: `startup [--runs N] -- BIN ARGS…`
    /// (`--listen 127.0.0.1:PORT` is appended).
    Startup {
        /// Runs (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The server command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Wait until an onetrip server has every key's static-static DH cached.
    WaitWarm {
        /// Server base URL.
        #[arg(long)]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Print VmRSS (kB) of a process.
    Rss {
        /// Process id.
        pid: u32,
    },
    /// Do one handshake and write an introspection body (token + PoP) to a file.
    IntrospectBody {
        /// Server base URL.
        #[arg(long)]
        url: String,
        /// API key whose token is introspected.
        #[arg(long)]
        key: String,
        /// The resource server's API key (scope `introspect`, listing the token's audience).
        #[arg(long)]
        caller_key: String,
        /// Pinned fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn shape(load: &LoadArgs, path: &str, headers: &[String]) -> Result<drive::Shape, String> {
    let addr = http1::addr_of(&load.url)?;
    Ok(drive::Shape {
        addr,
        template: http1::Template::new("POST", path, &addr.to_string(), headers),
        connections: load.connections.max(1),
        duration: Duration::from_secs_f64(load.seconds),
        threads: load.threads.unwrap_or_else(cores),
        max_requests: load.requests,
        server_pid: load.server_pid,
    })
}

fn finish(mode: &str, shape: &drive::Shape, report: drive::Report) -> Result<(), String> {
    report.print(mode, shape.connections);
    if report.errors > 0 {
        return Err(format!("{} errors", report.errors));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Handshake { load, keys, key, max_keys, fingerprint, pregenerate } => {
            let s = shape(&load, "/v1/auth", &[])?;
            let keys = match (keys, key) {
                (Some(path), _) => tools::read_keys(&path, max_keys)?,
                (None, Some(k)) => vec![ApiKey::parse(&k).map_err(|e| format!("API key: {e}"))?],
                (None, None) => return Err("give --keys FILE or --key KEY".into()),
            };
            if keys.is_empty() {
                return Err("no API keys".into());
            }
            let doc = tools::server_document(s.addr, fingerprint.as_deref())?;
            let mut w = workloads::Onetrip::new(&keys, &doc, cores())?;
            if pregenerate > 0 {
                w.pregenerate(pregenerate, cores());
            }
            eprintln!(
                "handshake: {} keys, {} connections, {} threads, requests {}",
                keys.len(),
                s.connections,
                s.threads,
                if pregenerate > 0 { "pre-generated (not timed)" } else { "built in the timed loop" }
            );
            let mode = if pregenerate > 0 { "handshake-pregen" } else { "handshake" };
            let report = drive::run(&s, Arc::new(w))?;
            finish(mode, &s, report)
        }
        Cmd::Noise { load, keys, pregenerate } => {
            let s = shape(&load, "/v1/auth", &[])?;
            let resp = http1::get_blocking(s.addr, "/v1/server-key", Duration::from_secs(5))?;
            let mut w = workloads::Noise::new(resp.body, keys)?;
            if pregenerate > 0 {
                w.pregenerate(pregenerate, cores());
            }
            let mode = if pregenerate > 0 { "noise-pregen" } else { "noise" };
            let report = drive::run(&s, Arc::new(w))?;
            finish(mode, &s, report)
        }
        Cmd::Http { load, path, body, body_file, body_len, headers, expect_status, expect_len, expect_contains } => {
            let s = shape(&load, &path, &headers)?;
            let body = match (body, body_file) {
                (Some(b), _) => b.into_bytes(),
                (None, Some(p)) => std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?,
                (None, None) => vec![b'x'; body_len],
            };
            let w = workloads::Fixed {
                body,
                status: expect_status,
                len: expect_len,
                contains: expect_contains.map(String::into_bytes),
            };
            let report = drive::run(&s, Arc::new(w))?;
            finish("http", &s, report)
        }
        Cmd::HelloServer { listen } => servers::serve(servers::Kind::Hello, listen),
        Cmd::HelloDhServer { listen } => servers::serve(servers::Kind::HelloDh, listen),
        Cmd::NoiseServer { listen } => servers::serve(servers::Kind::Noise, listen),
        Cmd::GenKeys { data_dir, count, out, threads } => {
            tools::gen_keys(&data_dir, count, &out, threads.unwrap_or_else(cores))
        }
        Cmd::Inproc { seconds } => inproc::run(Duration::from_secs_f64(seconds)),
        Cmd::Startup { runs, cmd } => tools::startup(&cmd, runs),
        Cmd::WaitWarm { url, timeout } => tools::wait_warm(http1::addr_of(&url)?, Duration::from_secs(timeout)),
        Cmd::Rss { pid } => {
            println!("{}", tools::vm_rss_kb(pid).ok_or("no such process")?);
            Ok(())
        }
        Cmd::IntrospectBody { url, key, caller_key, fingerprint, out } => {
            let key = ApiKey::parse(&key).map_err(|e| format!("API key: {e}"))?;
            let caller = ApiKey::parse(&caller_key).map_err(|e| format!("caller API key: {e}"))?;
            tools::introspect_body(http1::addr_of(&url)?, &key, &caller, fingerprint.as_deref(), &out)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
