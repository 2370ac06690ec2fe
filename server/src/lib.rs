//! # onetrip-server
//!
//! The `onetrip` server: a thin shell that moves bytes between HTTP and the
//! `onetrip-protocol` state machines, plus the embedded store and key management.
//!
//! | module | job |
//! |---|---|
//! | [`config`] | TOML file + `ONETRIP_*` environment + flags, with defaults |
//! | [`store`] | the state ports and their backends (embedded redb, PostgreSQL): keys, sealed secrets, OTP, audit |
//! | [`seal`] | argon2id passphrase sealing of private keys at rest |
//! | [`keys`] | in-memory key directory with the cached static-static DH per key |
//! | [`replay_cache`] | single-node replay cache: ids by expiry second, dropped a second at a time |
//! | [`replay_guard`] | accepted once across restarts: start-time rule, ids stamped ahead persisted before answering |
//! | [`retention`] | background deletion of old audit events and passed replay ids, in bounded batches |
//! | [`shared`] | state shared between replicas (replay cache, limits, revocations) behind one trait |
//! | [`state`] | `AppState`: everything a request handler needs, cheap to clone |
//! | [`change_feed`] | applies a shared store's changes (other replicas, the CLI) to this replica's memory |
//! | [`key_lifecycle`] | background task: handshake key rotation, destruction of retired keys, document re-signing |
//! | [`handshake`] | `POST /v1/auth`: request bytes → response bytes |
//! | [`http`] | routing, endpoints, problem+json errors |
//! | [`listener`] | accept loop, connection limits (total and per client), timeouts, TLS, graceful shutdown |
//! | [`deadline_io`] | write and idle timeouts on a connection's bytes |
//! | [`admin`] | the admin Unix socket and the key-management operations |
//! | [`otp`] | one-time passwords: verifications, the OTP API, lockout, TOTP, delivery |
//! | [`limits`] | OTP send budgets (key first, per key and destination, global per destination), address normalisation, the OTP API's per-key and failed-auth limits |
//! | [`metrics`] | Prometheus counters and histograms |
//! | [`process_metrics`] | the standard `process_*` metrics, from `/proc` |
//! | [`environ`] | keeps `ONETRIP_PASSPHRASE` out of the running server's `/proc/PID/environ` |
//! | [`cli`] | the `onetrip` command line |
//! | `fuzzing` | (feature `fuzzing`) the properties the server's `fuzz/` targets check |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod change_feed;
pub mod cli;
pub mod config;
pub mod deadline_io;
pub mod environ;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handshake;
pub mod http;
pub mod key_lifecycle;
pub mod keys;
pub mod limits;
pub mod listener;
pub mod low_priority;
pub mod metrics;
pub mod otp;
pub mod problem;
pub mod process_metrics;
pub mod proxy_protocol;
pub mod replay_cache;
pub mod replay_guard;
pub mod retention;
pub mod revocation;
pub mod seal;
pub mod shared;
pub mod shared_redis;
pub mod state;
pub mod store;
pub mod tls;
