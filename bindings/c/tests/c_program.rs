//! Builds `tests/c/onetrip_test.c` with `gcc -Wall -Wextra -Werror -std=c11` against
//! the committed header, links it to the freshly built `libonetrip.so`, and runs it
//! against a real `onetrip serve` (temporary data directory, 127.0.0.1:0, killed by
//! pid on drop), first plainly and then under valgrind with leak checking: definite
//! or indirect leaks and memory errors fail the test.
//!
//! gcc, valgrind and the `onetrip` binary are outside tools here: without them the
//! test prints why and passes, unless `ONETRIP_REQUIRE_TOOLS=1` (CI), where it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn require_tools() -> bool {
    std::env::var("ONETRIP_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Skips (or, in CI, fails) for a missing outside tool.
fn missing(what: &str) {
    assert!(!require_tools(), "ONETRIP_REQUIRE_TOOLS=1 and {what}");
    eprintln!("SKIPPED: {what}");
}

fn has(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// `target/<profile>`: this test runs from `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_owned()
}

/// The `onetrip` binary of this build: `ONETRIP_BIN`, else built next to this test.
fn onetrip_bin(profile: &Path) -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("ONETRIP_BIN") {
        return Some(bin.into());
    }
    let target = profile.parent()?;
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-p", "onetrip-server", "--bin", "onetrip", "--target-dir"]).arg(target);
    if profile.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let ok = build.status().is_ok_and(|s| s.success());
    let bin = profile.join("onetrip");
    (ok && bin.exists()).then_some(bin)
}

struct Server {
    child: Child,
    port: u16,
    fingerprint: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(bin: &Path, dir: &Path) -> Server {
    let log = dir.join("server.log");
    let mut child = Command::new(bin)
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--otp-console-codes"])
        .env_remove("ONETRIP_PASSPHRASE")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("onetrip serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut port, mut fingerprint) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while port.is_none() || fingerprint.is_none() {
        assert!(Instant::now() < deadline, "server did not start in 20 s");
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("server exited: {}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        if let Some(addr) = line.split("listening on http://").nth(1) {
            port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
        }
        if let Some(fp) = line.strip_prefix("identity fingerprint: ") {
            fingerprint = Some(fp.trim().to_owned());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server { child, port: port.unwrap(), fingerprint: fingerprint.unwrap(), log }
}

fn cli(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("ONETRIP_PASSPHRASE")
        .output()
        .unwrap();
    assert!(out.status.success(), "onetrip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Creates a key; returns (api key, id).
fn create_key(bin: &Path, dir: &Path, args: &[&str]) -> (String, String) {
    let mut full = vec!["keys", "create", "--json"];
    full.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_str(&cli(bin, dir, &full)).unwrap();
    (v["api_key"].as_str().unwrap().to_owned(), v["id"].as_str().unwrap().to_owned())
}

/// Runs `cmd` with a deadline; returns (success, stdout + stderr).
fn run(mut cmd: Command, limit: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "{}{}{}",
        std::fs::read_to_string(out).unwrap_or_default(),
        std::fs::read_to_string(err).unwrap_or_default(),
        if status.is_none() { "\n(killed: over the time limit)" } else { "" }
    );
    (status.is_some_and(|s| s.success()), text)
}

#[test]
fn c_program_passes_against_a_real_server_without_leaks() {
    if !has("gcc") {
        return missing("gcc is not installed (apt-get install -y gcc)");
    }
    let profile = profile_dir();
    let lib = profile.join("libonetrip.so");
    assert!(lib.exists(), "{} was not built with the test", lib.display());
    let Some(bin) = onetrip_bin(&profile) else {
        return missing("the onetrip binary could not be built (cargo build -p onetrip-server)");
    };
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("onetrip_test");
    let (ok, text) = run(
        {
            let mut gcc = Command::new("gcc");
            gcc.args(["-Wall", "-Wextra", "-Werror", "-std=c11", "-g", "-pthread", "-I"])
                .arg(crate_dir.join("include"))
                .arg(crate_dir.join("tests/c/onetrip_test.c"))
                .arg("-L")
                .arg(&profile)
                .arg(format!("-Wl,-rpath,{}", profile.display()))
                .args(["-lonetrip", "-o"])
                .arg(&exe);
            gcc
        },
        Duration::from_secs(120),
    );
    assert!(ok, "gcc failed:\n{text}");

    let server = serve(&bin, tmp.path());
    let (api_key, _) = create_key(&bin, tmp.path(), &["--name", "app", "--scope", "db:read", "--audience", "db"]);
    let (revoked, revoked_id) = create_key(&bin, tmp.path(), &["--name", "gone", "--audience", "db"]);
    cli(&bin, tmp.path(), &["keys", "revoke", &revoked_id]);
    let (stepup, _) = create_key(
        &bin,
        tmp.path(),
        &["--name", "admin", "--scope", "db:read", "--audience", "db", "--require-otp", "--otp-to", "console:alice"],
    );
    let audience_key = cli(&bin, tmp.path(), &["audience-key", "db"]);
    let other_audience_key = cli(&bin, tmp.path(), &["audience-key", "reports"]);
    let env = [
        ("ONETRIP_URL", format!("http://127.0.0.1:{}", server.port)),
        ("ONETRIP_PORT", server.port.to_string()),
        ("ONETRIP_PIN", server.fingerprint.clone()),
        ("ONETRIP_API_KEY", api_key),
        ("ONETRIP_REVOKED_KEY", revoked),
        ("ONETRIP_STEPUP_KEY", stepup),
        ("ONETRIP_SERVER_LOG", server.log.display().to_string()),
        ("ONETRIP_AUDIENCE_KEY", audience_key),
        ("ONETRIP_OTHER_AUDIENCE_KEY", other_audience_key),
    ];

    let mut plain = Command::new(&exe);
    plain.envs(env.iter().map(|(k, v)| (k, v)));
    let (ok, text) = run(plain, Duration::from_secs(120));
    assert!(ok, "the C test failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");

    if !has("valgrind") {
        return missing("valgrind is not installed (apt-get install -y valgrind)");
    }
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args(["--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=1", "-q"])
        .arg(&exe)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let (ok, text) = run(valgrind, Duration::from_secs(600));
    assert!(ok, "the C test failed under valgrind:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
    eprintln!("valgrind: no errors, no definite or indirect leaks\n{text}");
    drop(server);
}
