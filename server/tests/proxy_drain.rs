//! Behind a load balancer: PROXY protocol v2 from trusted peers only (the client's
//! address drives the per-IP limits and the logs), checked directly and through a
//! real HAProxy running the shipped `deploy/haproxy.cfg`; and the drain on SIGTERM
//! (`/healthz` answers `draining` while requests are still served, then the listener
//! closes, requests in flight finish and the process exits 0).

mod common;
mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{connect_from, get_from, read_answer, request_bytes, Server};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v2 header (PROXY command, TCP) for `src` → `dst`.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    block.extend_from_slice(&src.port().to_be_bytes());
    block.extend_from_slice(&dst.port().to_be_bytes());
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, family]);
    h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&block);
    h
}

/// A LOCAL header (a proxy's own connection, e.g. a health check).
fn local_header() -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

/// Sends `prefix` then `GET path` on a connection from `source`; the status, or `None`
/// when the server closed the connection without an answer.
fn get_after(source: Ipv4Addr, port: u16, prefix: &[u8], path: &str) -> Option<u16> {
    let mut s = connect_from(source, port, None).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(&request_bytes("GET", path, &[], b"", true));
    // The server may close before reading it all.
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    (!raw.is_empty()).then(|| common::parse_response(&raw).status)
}

fn header_from(ip: &str) -> Vec<u8> {
    v2_header(SocketAddr::new(ip.parse().unwrap(), 40000), "127.0.0.1:7420".parse().unwrap())
}

fn header_from6(ip: &str) -> Vec<u8> {
    v2_header(SocketAddr::new(ip.parse().unwrap(), 40000), "[::1]:7420".parse().unwrap())
}

const LOOP: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// An untrusted loopback client (all of 127/8 is loopback on Linux).
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// `/metrics` from an untrusted loopback address (no header needed).
fn metric(server: &Server, name: &str) -> u64 {
    let mut s = connect_from(OTHER, server.port, None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request_bytes("GET", "/metrics", &[], b"", true)).unwrap();
    let text = String::from_utf8(common::read_response(&mut s).body).unwrap();
    common::metric_in(&text, name)
}

/// Requests `/v1/server-key` as `header`'s client until one is limited (429).
fn exhaust(port: u16, header: &[u8]) {
    for _ in 0..50 {
        if get_after(LOOP, port, header, "/v1/server-key") == Some(429) {
            return;
        }
    }
    panic!("never limited");
}

#[test]
fn a_trusted_peers_header_names_the_client_for_limits_and_logs() {
    let server = Server::start(&[
        "--proxy-protocol-from",
        "127.0.0.1/32,::1/128",
        "--auth-rate-per-ip",
        "3",
        "--log",
        "onetrip_server=debug",
    ]);
    // IPv4: the client named in the header is limited; another client behind the same
    // proxy (same peer address) is not.
    exhaust(server.port, &header_from("192.0.2.7"));
    assert_eq!(get_after(LOOP, server.port, &header_from("192.0.2.8"), "/v1/server-key"), Some(200));
    // IPv6 sources, counted per /64.
    exhaust(server.port, &header_from6("2001:db8:0:1::7"));
    assert_eq!(get_after(LOOP, server.port, &header_from6("2001:db8:0:1::9"), "/v1/server-key"), Some(429));
    assert_eq!(get_after(LOOP, server.port, &header_from6("2001:db8:0:2::7"), "/v1/server-key"), Some(200));
    let log = server.stderr();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("request refused")).collect();
    assert!(refused.iter().any(|l| l.contains("client=192.0.2.7")), "{log}");
    assert!(refused.iter().any(|l| l.contains("client=2001:db8:0:1::")), "{log}");
    assert!(!refused.iter().any(|l| l.contains("client=127.0.0.1")), "the proxy is never the client: {log}");
    assert_eq!(metric(&server, "onetrip_proxy_headers_invalid_total"), 0);
}

#[test]
fn a_local_header_keeps_the_peer_address() {
    let server = Server::start(&["--proxy-protocol-from", "127.0.0.1/32", "--log", "onetrip_server=debug"]);
    assert_eq!(get_after(LOOP, server.port, &local_header(), "/healthz"), Some(200));
    // /metrics answers loopback clients only: after LOCAL, the peer (127.0.0.1) is the client.
    assert_eq!(get_after(LOOP, server.port, &local_header(), "/metrics"), Some(200));
    assert_eq!(get_after(LOOP, server.port, &header_from("192.0.2.7"), "/metrics"), Some(404), "a remote client");
}

#[test]
fn an_untrusted_peer_sending_a_proxy_header_is_refused() {
    let server = Server::start(&["--proxy-protocol-from", "127.0.0.1/32"]);
    // 127.0.0.5 is not trusted: a header from it would let it pick its own address.
    assert_eq!(get_after(OTHER, server.port, &header_from("192.0.2.7"), "/healthz"), None);
    assert_eq!(get_after(OTHER, server.port, b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n", "/healthz"), None, "v1");
    // Sent in pieces, the signature is still recognised.
    let mut s = connect_from(OTHER, server.port, None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let header = header_from("192.0.2.7");
    s.write_all(&header[..3]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _ = s.write_all(&header[3..]);
    let _ = s.write_all(&request_bytes("GET", "/healthz", &[], b"", true));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    // Without a header it is served with its own address.
    assert_eq!(get_after(OTHER, server.port, b"", "/healthz"), Some(200));
    assert_eq!(metric(&server, "onetrip_proxy_headers_refused_total"), 3);
    let log = server.stderr();
    assert!(log.contains("refused a PROXY header from an address not in proxy_protocol_from"), "{log}");
}

#[test]
fn a_trusted_peer_without_a_valid_header_is_closed_cleanly() {
    let server = Server::start(&["--proxy-protocol-from", "127.0.0.1/32", "--header-timeout-ms", "500"]);
    // No header at all (a proxy without send-proxy-v2), garbage, a truncated header.
    assert_eq!(get_after(LOOP, server.port, b"", "/healthz"), None);
    assert_eq!(get_after(LOOP, server.port, &[0xAB; 64], "/healthz"), None);
    let header = header_from("192.0.2.7");
    let mut s = connect_from(LOOP, server.port, None).unwrap();
    s.write_all(&header[..20]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(raw.is_empty());
    // An address block longer than accepted.
    let mut long = SIGNATURE.to_vec();
    long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(get_after(LOOP, server.port, &long, "/healthz"), None);
    // A header that never ends is cut at the header timeout, not held.
    let started = Instant::now();
    let mut slow = connect_from(LOOP, server.port, None).unwrap();
    slow.write_all(&header[..10]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(slow.read(&mut byte).unwrap_or(0), 0, "closed");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(metric(&server, "onetrip_proxy_headers_invalid_total"), 5);
    // Still serving.
    assert_eq!(get_after(LOOP, server.port, &local_header(), "/healthz"), Some(200));
    assert!(!server.stderr().contains("panicked"));
}

#[test]
fn a_proxy_header_may_precede_a_tls_client_hello() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key, der) = common::self_signed(tmp.path());
    let data = tmp.path().join("data");
    let server = Server::start_in(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--proxy-protocol-from",
            "127.0.0.1/32",
            "--auth-rate-per-ip",
            "2",
        ],
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let get = |client: &str| -> u16 {
        let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(&header_from(client)).unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&request_bytes("GET", "/v1/server-key", &[], b"", true)).unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        common::parse_response(&raw).status
    };
    let mut statuses: Vec<u16> = (0..6).map(|_| get("192.0.2.7")).collect();
    statuses.dedup();
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");
    assert_eq!(get("192.0.2.8"), 200, "another client behind the same proxy");
}

#[test]
fn through_haproxy_one_limited_client_does_not_limit_the_others() {
    let server = Server::start(&[
        "--proxy-protocol-from",
        "127.0.0.1/32",
        "--auth-rate-per-ip",
        "3",
        "--log",
        "onetrip_server=debug",
    ]);
    let backend: SocketAddr = ([127, 0, 0, 1], server.port).into();
    let Some(lb) = support::haproxy::Haproxy::start(&[backend], "") else { return };
    assert!(lb.wait_all_up(Duration::from_secs(10)), "{:?}\n{}", lb.server_states(), lb.log());
    let port = lb.addr().port();
    let limited = Ipv4Addr::new(127, 0, 0, 2);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let status = get_from(limited, port, "/v1/server-key", Duration::from_secs(10)).unwrap();
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "127.0.0.2 is limited through HAProxy: {statuses:?}");
    assert_eq!(
        get_from(Ipv4Addr::new(127, 0, 0, 3), port, "/v1/server-key", Duration::from_secs(10)).unwrap(),
        200,
        "127.0.0.3 behind the same HAProxy has its own budget"
    );
    let log = server.stderr();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("request refused")).collect();
    assert!(refused.iter().any(|l| l.contains("client=127.0.0.2")), "{log}");
    assert!(!refused.iter().any(|l| l.contains("client=127.0.0.1")), "HAProxy's address is never the client: {log}");
    // HAProxy's health checks (LOCAL headers) and the relayed connections all had valid headers.
    assert_eq!(metric(&server, "onetrip_proxy_headers_invalid_total"), 0);
    assert_eq!(metric(&server, "onetrip_proxy_headers_refused_total"), 0);
}

fn sigterm(server: &Server) {
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

/// Waits for the server to exit; its status and how long that took.
fn wait_exit(server: &mut Server, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(started.elapsed() < limit, "server still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `/healthz` answers 503 `draining`.
fn wait_draining(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.get("/healthz");
        if r.status == 503 {
            assert_eq!(r.json()["code"], "draining", "{}", String::from_utf8_lossy(&r.body));
            return;
        }
        assert!(Instant::now() < deadline, "/healthz never answered draining");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_then_closes_the_listener_and_exits_0() {
    let mut server = Server::start(&["--drain-secs", "3"]);
    let (key, _) = server.create_key(&["--name", "drain"]);
    assert_eq!(server.get("/healthz").status, 200);
    // A kept-alive connection opened before the signal.
    let mut kept = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut kept_reader = BufReader::new(kept.try_clone().unwrap());
    kept.write_all(&request_bytes("GET", "/v1/server-key", &[], b"", false)).unwrap();
    assert_eq!(read_answer(&mut kept_reader).0, 200);
    let signalled = Instant::now();
    sigterm(&server);
    wait_draining(&server);
    assert_eq!(server.metric("onetrip_draining"), 1);
    // Everything else is still served, on new and on kept-alive connections.
    assert!(matches!(
        server.handshake(&key, &onetrip_protocol::ClientRequest::default()),
        onetrip_protocol::Outcome::Granted(_)
    ));
    kept.write_all(&request_bytes("GET", "/v1/server-key", &[], b"", false)).unwrap();
    assert_eq!(read_answer(&mut kept_reader).0, 200);
    let (status, _) = wait_exit(&mut server, Duration::from_secs(20));
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_millis(2900), "exited {took:?} after SIGTERM, before the drain ended");
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err(), "the port is closed");
    assert!(server.stderr().contains("SIGTERM: draining"));
}

#[test]
fn a_second_signal_ends_the_drain_early() {
    let mut server = Server::start(&["--drain-secs", "60"]);
    sigterm(&server);
    wait_draining(&server);
    sigterm(&server);
    let (status, took) = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(server.stderr().contains("drain ended early"));
}

#[test]
fn drain_secs_0_closes_at_once() {
    let mut server = Server::start(&["--drain-secs", "0"]);
    sigterm(&server);
    let (status, took) = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success() && took < Duration::from_secs(5), "{status:?} {took:?}");
    assert!(!server.stderr().contains("SIGTERM: draining"), "no drain phase");
}

#[test]
fn a_request_in_flight_when_the_listener_closes_completes() {
    let mut server = Server::start(&["--drain-secs", "1"]);
    let (key, _) = server.create_key(&["--name", "inflight"]);
    let (request, pending) = server.request(&key, &onetrip_protocol::ClientRequest::default());
    let bytes = request_bytes("POST", "/v1/auth", &[("content-type", "application/octet-stream")], &request, true);
    // Head and half the body now; the rest once the listener has closed.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let half = bytes.len() - request.len() / 2;
    s.write_all(&bytes[..half]).unwrap();
    sigterm(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
        assert!(Instant::now() < deadline, "the listener never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.child.try_wait().unwrap().is_none(), "still running: a request is in flight");
    s.write_all(&bytes[half..]).unwrap();
    let resp = common::read_response(&mut s);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert!(pending.finish(&resp.body).is_ok());
    let (status, _) = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_proxy_ranges_and_drain_times_are_refused_with_their_setting_named() {
    for (args, says) in [
        (&["--proxy-protocol-from", "127.0.0.1"][..], "proxy_protocol_from"),
        (&["--proxy-protocol-from", "127.0.0.1/32,::1/129"][..], "proxy_protocol_from"),
        (&["--drain-secs", "3601"][..], "drain_secs"),
    ] {
        let out = std::process::Command::new(common::BIN)
            .args(["serve", "--check"])
            .args(args)
            .env_remove("ONETRIP_PROXY_PROTOCOL_FROM")
            .env_remove("ONETRIP_DRAIN_SECS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--check", "--proxy-protocol-from", "127.0.0.1/32,::1/128", "--drain-secs", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A rolling restart's first step: behind the shipped HAProxy config, a replica that
/// gets SIGTERM is marked DOWN by the health checks while it still serves, and no
/// request of a steady client fails, before, during or after its exit.
#[test]
fn haproxy_takes_a_draining_replica_out_before_it_closes_and_no_request_fails() {
    let trusted = ["--proxy-protocol-from", "127.0.0.1/32"];
    let mut draining = Server::start(&[trusted[0], trusted[1], "--drain-secs", "3"]);
    let staying = Server::start(&trusted);
    let backends: Vec<SocketAddr> =
        [draining.port, staying.port].iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let Some(lb) = support::haproxy::Haproxy::start(&backends, "") else { return };
    assert!(lb.wait_all_up(Duration::from_secs(10)), "{:?}\n{}", lb.server_states(), lb.log());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = lb.addr().port();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // One kept-alive client connection, as a load generator holds.
            let (mut ok, mut failed) = (0u32, Vec::new());
            let connect = || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let r = BufReader::new(s.try_clone().unwrap());
                (s, r)
            };
            let (mut s, mut r) = connect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = s.write_all(&request_bytes("GET", "/v1/server-key", &[], b"", false));
                let answer = sent.ok().and_then(|()| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_answer(&mut r).0)).ok()
                });
                match answer {
                    Some(200) => ok += 1,
                    other => {
                        failed.push(other);
                        (s, r) = connect();
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    sigterm(&draining);
    assert!(lb.wait_server("onetrip1", "DOWN", Duration::from_secs(10)), "{:?}", lb.server_states());
    let down_after = signalled.elapsed();
    assert!(draining.child.try_wait().unwrap().is_none(), "HAProxy saw the drain before the replica stopped");
    let (status, _) = wait_exit(&mut draining, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "{} requests failed ({failed:?}), {ok} succeeded\n{}", failed.len(), lb.log());
    assert!(ok > 50, "{ok}");
    eprintln!("SIGTERM -> HAProxy DOWN: {down_after:?}; {ok} requests through the drain, none failed");
}
