//! What the server puts on disk is private from the first instant: the data directory
//! (or the server does not start) and the admin socket, also at a custom path.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_data_directory_that_cannot_be_made_private_stops_the_server() {
    // procfs refuses chmod to everyone, root included: a directory that exists but
    // whose mode cannot be set, as one owned by another user would be.
    let dir = std::path::Path::new("/proc/self/fdinfo");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("ONETRIP_PASSPHRASE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started on a data directory it could not make private");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot make the data directory private") && stderr.contains("/proc/"), "{stderr}");
}

#[test]
fn the_admin_socket_is_never_accessible_to_others_even_for_an_instant() {
    // A custom socket path in a directory other users can read, as /run/… would be.
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("run");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = shared.join("admin.sock");
    // A watcher looks at the path as fast as it can while the socket is bound 300
    // times: a bind followed by a chmod shows the umask's mode for a few microseconds.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (stop, seen, path) = (stop.clone(), seen.clone(), path.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    looks += 1;
                    if m.permissions().mode() & 0o077 != 0 {
                        seen.lock().unwrap().push(m.permissions().mode() & 0o777);
                    }
                }
            }
            looks
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for _ in 0..300 {
            drop(onetrip_server::admin::bind_socket(&path).unwrap());
        }
    });
    stop.store(true, Ordering::Relaxed);
    let looks = watcher.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen.is_empty(),
        "the socket was seen with modes {:?} ({} of {looks} looks)",
        seen.iter().take(5).map(|m| format!("{m:o}")).collect::<Vec<_>>(),
        seen.len()
    );
    assert!(looks > 0, "the watcher never saw the socket");
    // Nothing is left beside it.
    let left: Vec<_> = std::fs::read_dir(&shared).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("admin.sock")]);
}

#[test]
fn a_server_with_a_custom_admin_socket_serves_it_with_mode_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("run");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = shared.join("onetrip.sock");
    let server = Server::start_in(&tmp.path().join("data"), &["--admin-socket", socket.to_str().unwrap()]).unwrap();
    assert_eq!(std::fs::symlink_metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&server.data_dir).unwrap().permissions().mode() & 0o777, 0o700);
    // The renamed socket is the one the server listens on.
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"{\"op\":\"keys_list\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.starts_with("{\"data\":[]") || line.contains("\"ok\":true"), "{line}");
}

#[test]
fn the_passphrase_variable_is_not_left_in_the_servers_environ() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sealed");
    let passphrase = "a passphrase no one should read in /proc";
    let server = Server::start_with_env(&dir, &[], &[("ONETRIP_PASSPHRASE", passphrase)]).unwrap();
    // The server really got it: the store is sealed, and a handshake works.
    let (key, _) = server.create_key(&["--name", "k"]);
    assert!(matches!(
        server.handshake(&key, &onetrip_protocol::handshake::ClientRequest::default()),
        onetrip_protocol::Outcome::Granted(_)
    ));
    let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains(passphrase), "the passphrase is readable in /proc/PID/environ");
    assert!(!environ.contains("ONETRIP_PASSPHRASE="), "{environ}");
    drop(server);
    // And the store needs it: without it, no start.
    let err = Server::start_in(&dir, &[]).err().expect("a sealed store needs its passphrase");
    assert!(err.contains("ONETRIP_PASSPHRASE"), "{err}");
}
