//! The fuzz seed corpus (`fuzz/seeds/<target>/`) and dictionaries (`fuzz/dicts/`),
//! built from `vectors/v1.json` in each target's input layout (documented on the
//! functions of `onetrip_protocol::fuzzing`). Every seed is run through its property
//! here, so a plain `cargo test --all-features` checks them all, and the committed
//! files are compared with what the vectors give.
//!
//! After changing a layout or the vectors: `ONETRIP_WRITE_FUZZ_SEEDS=1 cargo test -p
//! onetrip-protocol --features fuzzing --test fuzz_seeds` rewrites them.
#![cfg(feature = "fuzzing")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onetrip_protocol::fuzzing;
use serde_json::Value;

type Property = fn(&[u8]);

const TARGETS: &[(&str, Property)] = &[
    ("request_parse", fuzzing::request_parse),
    ("request_process", fuzzing::request_process),
    ("request_mutate", fuzzing::request_mutate),
    ("response_open", fuzzing::response_open),
    ("token_verify", fuzzing::token_verify),
    ("server_key_document", fuzzing::server_key_document),
    ("api_key_string", fuzzing::api_key_string),
    ("backend_differential", fuzzing::backend_differential),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Builds one input in the fuzzing layout: fixed fields, length-prefixed strings,
/// 4-byte mutations.
#[derive(Default, Clone)]
struct Seed(Vec<u8>);

impl Seed {
    fn new(mode: u8) -> Self {
        Self(vec![mode])
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn byte(self, b: u8) -> Self {
        self.raw(&[b])
    }
    fn u16(self, v: u16) -> Self {
        self.raw(&v.to_be_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.raw(&v.to_be_bytes())
    }
    fn lp(self, b: &[u8]) -> Self {
        let len = u8::try_from(b.len()).expect("short field");
        self.byte(len).raw(b)
    }
    fn mutation(self, target: u8, set: bool, pos: u16, value: u8) -> Self {
        self.byte(target << 1 | u8::from(set)).u16(pos).byte(value)
    }
}

struct Vectors(Value);

impl Vectors {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/v1.json");
        Self(serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file")).expect("JSON"))
    }
    fn hex(&self, v: &Value) -> Vec<u8> {
        hex::decode(v.as_str().expect("hex string")).expect("hex")
    }
    fn input(&self, name: &str) -> Vec<u8> {
        self.hex(&self.0["inputs"][name])
    }
    fn handshakes(&self) -> &[Value] {
        self.0["handshakes"].as_array().expect("handshakes")
    }
    fn case(&self, name: &str) -> &Value {
        self.handshakes().iter().find(|c| c["name"] == name).expect("case")
    }
}

fn str_of(v: &Value) -> &[u8] {
    v.as_str().unwrap_or_default().as_bytes()
}

fn seeds() -> BTreeMap<(&'static str, String), Vec<u8>> {
    let v = Vectors::load();
    let now = v.0["now"].as_u64().expect("now");
    let mut out = BTreeMap::new();
    let mut add = |target: &'static str, name: &str, seed: Seed| {
        out.insert((target, name.to_owned()), seed.0);
    };

    let mut mutate_ok = Seed::default();
    for case in v.handshakes() {
        let name = case["name"].as_str().expect("name");
        let request = v.hex(&case["request"]);
        let response = v.hex(&case["response"]);
        add("request_parse", name, Seed::default().raw(&request));
        add("request_process", &format!("raw-{name}"), Seed::new(0).raw(&request));
        add("response_open", &format!("raw-{name}"), Seed::new(0).raw(&response));
        if name == "server_key_changed" {
            continue; // made for a retired server key id: request_mutate builds for the current one
        }
        let (id, secret) = match case["api_key"].as_str() {
            Some("unknown") => (v.input("unknown_key_id"), v.input("unknown_key_secret")),
            Some("wrong_secret") => (v.input("api_key_id"), v.input("wrong_secret")),
            _ => (v.input("api_key_id"), v.input("api_key_secret")),
        };
        let code = str_of(&case["second_factor_code"]);
        let seed = Seed::default()
            .raw(&id)
            .raw(&secret)
            .raw(&v.hex(&case["ephemeral_private"]))
            .raw(&v.hex(&case["request_nonce"]))
            .u64(case["timestamp"].as_u64().expect("timestamp"))
            .byte(if code.is_empty() { 0 } else { 2 })
            .byte(out_len_hint(name))
            .lp(str_of(&case["audience"]))
            .lp(str_of(&case["scopes"]))
            .raw(&v.input("operation_id"))
            .lp(code);
        if name == "ok" {
            mutate_ok = seed.clone();
        }
        add("request_mutate", name, seed);
    }
    let ok = v.case("ok");
    let ok_request = v.hex(&ok["request"]);
    let short = &ok_request[..ok_request.len() - 1];
    add("request_parse", "short", Seed::default().raw(short));
    add("request_parse", "version-2", Seed::default().byte(2).raw(&ok_request[1..]));
    add("request_parse", "type-2", Seed::default().byte(1).byte(2).raw(&ok_request[2..]));
    for i in 0..3u8 {
        let seed = Seed::new(1).byte(i).raw(&v.hex(&ok["ephemeral_private"])).raw(&v.hex(&ok["request_nonce"]));
        add("request_process", &format!("impostor-{i}"), seed.clone());
        add("request_process", &format!("impostor-{i}-payload"), seed.raw(&ok_request[74..]));
    }
    add("request_mutate", "ok-flip-tag", mutate_ok.clone().mutation(0, false, 383, 1));
    // Flags byte (offset 96 of the layout) bit 2: mutate the payload plaintext instead.
    let resealed = |seed: &Seed| {
        let mut s = seed.clone();
        s.0[96] |= 4;
        s
    };
    add("request_mutate", "ok-resealed", resealed(&mutate_ok));
    add("request_mutate", "ok-resealed-unknown-flag", resealed(&mutate_ok).mutation(0, true, 24, 2));
    add("request_mutate", "ok-resealed-padding", resealed(&mutate_ok).mutation(0, true, 250, 1));
    add("request_mutate", "ok-resealed-scopes-length", resealed(&mutate_ok).mutation(0, true, 90, 200));
    add("request_mutate", "ok-key-id-staged", {
        let mut s = mutate_ok;
        for (i, b) in b"staged00".iter().enumerate() {
            s = s.mutation(0, true, 2 + i as u16, *b);
        }
        s
    });
    for which in 0..11u8 {
        add("response_open", &format!("genuine-{which}"), Seed::new(1).byte(which));
    }
    add("response_open", "genuine-0-flip", Seed::new(1).byte(0).mutation(0, false, 200, 0x80));
    let response_nonce = v.hex(&ok["response_nonce"]);
    for kind in 0..9u8 {
        add("response_open", &format!("body-{kind}"), Seed::new(2).byte(kind).byte(0).raw(&response_nonce));
    }
    add("response_open", "body-failure-key-auth-failed", Seed::new(2).byte(1).byte(1).raw(&response_nonce));
    add("response_open", "body-failure-key-ok", Seed::new(2).byte(0).byte(1).raw(&response_nonce));
    add(
        "response_open",
        "body-ok-bad-token-version",
        Seed::new(2).byte(0).byte(0).raw(&response_nonce).mutation(0, true, 49, 2),
    );
    add("response_open", "body-status-5", Seed::new(2).byte(1).byte(0).raw(&response_nonce).mutation(0, true, 0, 5));
    add(
        "response_open",
        "body-bad-channel",
        Seed::new(2).byte(2).byte(0).raw(&response_nonce).mutation(0, true, 25, 9),
    );

    // Tokens and proofs of possession.
    let pop = &v.0["pop"];
    let (method, path, body) = (str_of(&pop["method"]), str_of(&pop["path"]), v.hex(&pop["body"]));
    let token = v.hex(&ok["token"]);
    let raw = Seed::new(0).u64(now).byte(60).lp(method).lp(path).lp(&body).lp(str_of(&pop["header"]));
    add("token_verify", "raw-vector-token", raw.clone().raw(&token));
    add("token_verify", "raw-vector-token-base64", raw.raw(token_base64(&token).as_bytes()));
    let sealed = |flags: u8| {
        Seed::new(1)
            .raw(&v.hex(&ok["token_id"]))
            .raw(&v.input("api_key_id"))
            .raw(&v.hex(&ok["session_key"]))
            .raw(&v.hex(&ok["token_nonce"]))
            .raw(&v.hex(&pop["nonce"]))
            .raw(&[0; 4])
            .u16(0)
            .u16(900)
            .u16(10)
            .u16(10)
            .byte(60)
            .byte(flags)
            .lp(str_of(&ok["scopes"]))
            .lp(method)
            .lp(path)
            .lp(&body)
    };
    add("token_verify", "sealed", sealed(0));
    add("token_verify", "sealed-previous-key-second-factor", sealed(3));
    for target in 0..5u8 {
        add("token_verify", &format!("sealed-mutate-{target}"), sealed(0).mutation(target, false, 30, 4));
    }
    add("token_verify", "resealed", sealed(8));
    add("token_verify", "resealed-reserved", sealed(8).mutation(0, true, 276, 1));
    add("token_verify", "resealed-flags", sealed(8).mutation(0, true, 48, 2));
    add("token_verify", "resealed-audience", sealed(8).mutation(0, false, 50, 1));
    add("token_verify", "resealed-expiry", sealed(8).mutation(0, true, 41, 0));
    add("token_verify", "resealed-session-key", sealed(8).mutation(0, false, 250, 1));

    // Server key documents, fingerprints, API keys.
    let derived = &v.0["derived"];
    let document = v.hex(&derived["server_key_document"]);
    add("server_key_document", "raw-vector", Seed::new(0).raw(&document));
    add("server_key_document", "raw-fingerprint", Seed::new(0).raw(str_of(&derived["fingerprint"])));
    let entry = |s: Seed, id: &[u8]| {
        s.raw(id)
            .raw(&v.hex(&derived["server_static_public"]))
            .u64(v.0["inputs"]["server_key_not_before"].as_u64().expect("nb"))
            .u64(v.0["inputs"]["server_key_not_after"].as_u64().expect("na"))
    };
    let expires_at = derived["server_key_document_expires_at"].as_u64().expect("expires_at");
    let head = |count: u8| Seed::new(1).raw(&v.input("identity_seed")).u64(now).u64(expires_at).u64(now).byte(count);
    let one = entry(head(1), &v.input("server_key_id"));
    add("server_key_document", "signed-one-entry", one.clone());
    add("server_key_document", "signed-one-entry-mutated", one.mutation(0, false, 60, 1));
    add("server_key_document", "signed-two-entries", entry(entry(head(2), &v.input("server_key_id")), b"retired0"));
    add("server_key_document", "signed-same-validity", entry(entry(head(2), &v.input("server_key_id")), b"successr"));
    add("server_key_document", "signed-duplicate-ids", entry(entry(head(2), b"samekey0"), b"samekey0"));
    let expired = Seed::new(1).raw(&v.input("identity_seed")).u64(now).u64(now).u64(now + 1).byte(1);
    add("server_key_document", "signed-expired", entry(expired, &v.input("server_key_id")));
    let small_order = v.hex(&v.0["ed25519_small_order"]["server_key_document"]);
    add("server_key_document", "raw-small-order-identity", Seed::new(0).raw(&small_order));
    let api_key = str_of(&derived["api_key_string"]);
    add("api_key_string", "vector", Seed::default().raw(api_key));
    add("api_key_string", "vector-pasted", Seed::default().raw(b"  ").raw(api_key).raw(b"\r\n"));
    add("api_key_string", "vector-truncated", Seed::default().raw(&api_key[..api_key.len() - 1]));
    add("api_key_string", "key-id-hex", Seed::default().raw(hex::encode(v.input("api_key_id")).as_bytes()));

    // Backends.
    let server_public = v.hex(&derived["server_static_public"]);
    add(
        "backend_differential",
        "x25519-vector",
        Seed::new(0).raw(&v.hex(&ok["ephemeral_private"])).raw(&server_public),
    );
    // The points of small order (RFC 7748 §6.1 / cr.yp.to/ecdh.html) and non-canonical
    // encodings of some of them (u + p): both backends must refuse all alike.
    let low_order = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
        "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
        "d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ];
    for (i, point) in low_order.iter().enumerate() {
        let point = hex::decode(point).expect("hex");
        add(
            "backend_differential",
            &format!("x25519-low-order-{i}"),
            Seed::new(0).raw(&v.hex(&ok["ephemeral_private"])).raw(&point),
        );
    }
    let k1 = v.hex(&ok["k1"]);
    add(
        "backend_differential",
        "seal-key-id",
        Seed::new(1).raw(&k1).raw(&[0; 12]).lp(&ok_request[..42]).raw(&v.input("api_key_id")),
    );
    add(
        "backend_differential",
        "open-key-id",
        Seed::new(2).raw(&k1).raw(&[0; 12]).lp(&ok_request[..42]).raw(&ok_request[58..74]).raw(&ok_request[42..58]),
    );
    let handshake = |flags: u8, kind: u8| {
        Seed::new(3)
            .raw(&v.input("identity_seed"))
            .raw(&v.input("server_static_private"))
            .raw(&v.input("server_key_id"))
            .raw(&v.input("dummy_secret"))
            .raw(&v.input("api_key_id"))
            .raw(&v.input("api_key_secret"))
            .raw(&v.hex(&ok["ephemeral_private"]))
            .raw(&v.hex(&ok["request_nonce"]))
            .raw(&v.input("token_master_key"))
            .raw(&v.hex(&ok["token_nonce"]))
            .raw(&v.hex(&ok["session_key"]))
            .raw(&response_nonce)
            .byte(flags)
            .byte(kind)
            .lp(str_of(&ok["audience"]))
            .lp(str_of(&ok["scopes"]))
    };
    add("backend_differential", "handshake-granted", handshake(1, 0));
    add("backend_differential", "handshake-second-factor", handshake(1, 2));
    add("backend_differential", "handshake-unregistered", handshake(0, 0));
    out
}

/// The reply kind a `request_mutate` seed asks for: the vector case's own status.
fn out_len_hint(name: &str) -> u8 {
    match name {
        "ok" | "ok_with_second_factor" => 0,
        "second_factor_required" => 2,
        "second_factor_failed" => 3,
        "clock_skew" => 4,
        "rate_limited" => 5,
        "scope_denied" => 7,
        "server_error" => 8,
        _ => 1,
    }
}

fn token_base64(token: &[u8]) -> String {
    onetrip_protocol::Token::from_slice(token).expect("vector token").to_base64().to_string()
}

/// libFuzzer dictionaries: the magic values and fixed ids a mutator cannot guess.
fn dicts() -> BTreeMap<&'static str, String> {
    let v = Vectors::load();
    let esc = |b: &[u8]| b.iter().map(|x| format!("\\x{x:02x}")).collect::<String>();
    let header = "# Generated by protocol/tests/fuzz_seeds.rs from vectors/v1.json.\n";
    let request = format!(
        "{header}version_type=\"\\x01\\x01\"\nserver_key_id=\"{}\"\nexpired_key_id=\"expired0\"\nstaged_key_id=\"staged00\"\napi_key_id=\"{}\"\n",
        esc(&v.input("server_key_id")),
        esc(&v.input("api_key_id")),
    );
    let derived = &v.0["derived"];
    let mut out = BTreeMap::new();
    out.insert("request_parse", request.clone());
    out.insert("request_process", request.clone());
    out.insert("request_mutate", request);
    out.insert(
        "response_open",
        format!(
            "{header}sealed=\"\\x01\\x02\"\nkey_changed=\"\\x01\\x03\"\nserver_key_id=\"{}\"\n",
            esc(&v.input("server_key_id"))
        ),
    );
    out.insert(
        "token_verify",
        format!(
            "{header}version_key_id=\"\\x01{}\"\nold_key_id=\"\\x01old0\"\naudience_tag=\"{}\"\nmethod=\"POST\"\npath=\"/v1/query\"\n",
            esc(&v.input("token_key_id")),
            esc(&v.hex(&derived["audience_tag"])),
        ),
    );
    out.insert(
        "server_key_document",
        format!("{header}magic=\"OTSK\"\nheader=\"OTSK\\x02\\x01\\x00\\x00\"\nfingerprint=\"SHA256:\"\n"),
    );
    out.insert("api_key_string", format!("{header}prefix=\"otk_\"\nnewline=\"\\x0a\"\ndash=\"-\"\nunderscore=\"_\"\n"));
    out
}

#[test]
fn every_seed_holds_its_property() {
    for ((target, name), bytes) in seeds() {
        let (_, property) = TARGETS.iter().find(|(t, _)| *t == target).expect("known target");
        let run = std::panic::catch_unwind(|| property(&bytes));
        assert!(run.is_ok(), "seed {target}/{name} breaks its property");
    }
}

#[test]
fn every_fuzz_target_is_one_line_calling_its_property() {
    let dir = fuzz_dir().join("fuzz_targets");
    let found: Vec<String> = std::fs::read_dir(&dir)
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("entry").path().file_stem().expect("name").to_string_lossy().into_owned())
        .collect();
    for (t, _) in TARGETS {
        assert!(found.iter().any(|f| f == t), "no fuzz/fuzz_targets/{t}.rs for protocol property {t}");
    }
    // Every target, the server's and the client's too, is a one-line call into the
    // `fuzzing` module of its crate, where the property is written and documented.
    for t in &found {
        let src = std::fs::read_to_string(dir.join(format!("{t}.rs"))).expect("target source");
        let calls = ["onetrip_protocol", "onetrip_server", "onetrip_client"]
            .iter()
            .any(|krate| src.contains(&format!("{krate}::fuzzing::{t}(data)")));
        assert!(calls, "{t}.rs does not call a crate's fuzzing::{t}");
        assert_eq!(
            src.lines().filter(|l| !l.trim().is_empty()).count(),
            2,
            "{t}.rs is more than #![no_main] and one call"
        );
    }
}

#[test]
fn committed_seeds_and_dictionaries_match_the_vectors() {
    let root = fuzz_dir();
    let seeds = seeds();
    let dicts = dicts();
    if std::env::var_os("ONETRIP_WRITE_FUZZ_SEEDS").is_some() {
        for (target, _) in TARGETS {
            let dir = root.join("seeds").join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("seed dir");
        }
        for ((target, name), bytes) in &seeds {
            std::fs::write(root.join("seeds").join(target).join(name), bytes).expect("write seed");
        }
        std::fs::create_dir_all(root.join("dicts")).expect("dict dir");
        for (target, text) in &dicts {
            std::fs::write(root.join("dicts").join(format!("{target}.dict")), text).expect("write dict");
        }
    }
    for (target, _) in TARGETS {
        let dir = root.join("seeds").join(target);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; run with ONETRIP_WRITE_FUZZ_SEEDS=1", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let expected: Vec<String> = seeds.keys().filter(|(t, _)| t == target).map(|(_, n)| n.clone()).collect();
        assert_eq!(on_disk, expected, "fuzz/seeds/{target} is stale; run with ONETRIP_WRITE_FUZZ_SEEDS=1");
    }
    for ((target, name), bytes) in &seeds {
        let committed = std::fs::read(root.join("seeds").join(target).join(name)).expect("seed file");
        assert!(committed == *bytes, "fuzz/seeds/{target}/{name} is stale; run with ONETRIP_WRITE_FUZZ_SEEDS=1");
    }
    for (target, text) in &dicts {
        let committed = std::fs::read_to_string(root.join("dicts").join(format!("{target}.dict"))).expect("dict");
        assert_eq!(&committed, text, "fuzz/dicts/{target}.dict is stale; run with ONETRIP_WRITE_FUZZ_SEEDS=1");
    }
}
