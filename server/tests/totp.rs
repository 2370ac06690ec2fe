//! TOTP against RFC 6238 Appendix B, the replay and tolerance rules, hostile input,
//! the enrolment URI, and the reference implementation `oathtool` on random secrets.

mod support;

use std::process::Command;

use onetrip_server::otp::totp::{
    code_at, generate_secret, otpauth_uri, qr_terminal, verify, Algorithm, SecretError, TotpError, TotpParams,
    TotpSecret,
};
use rand_core::{OsRng, RngCore};

const SEED_SHA1: &[u8] = b"12345678901234567890";
const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

fn params(algorithm: Algorithm, digits: u32) -> TotpParams {
    TotpParams { algorithm, digits, step_secs: 30 }
}

#[test]
fn rfc6238_appendix_b_vectors() {
    // (time, SHA1, SHA256, SHA512), 8 digits, X = 30, T0 = 0.
    let table: [(u64, &str, &str, &str); 6] = [
        (59, "94287082", "46119246", "90693936"),
        (1111111109, "07081804", "68084774", "25091201"),
        (1111111111, "14050471", "67062674", "99943326"),
        (1234567890, "89005924", "91819424", "93441116"),
        (2000000000, "69279037", "90698825", "38618901"),
        (20000000000, "65353130", "77737706", "47863826"),
    ];
    for (time, sha1, sha256, sha512) in table {
        for (algorithm, seed, want) in [
            (Algorithm::Sha1, SEED_SHA1, sha1),
            (Algorithm::Sha256, SEED_SHA256, sha256),
            (Algorithm::Sha512, SEED_SHA512, sha512),
        ] {
            let secret = TotpSecret::from_bytes(seed);
            let p = params(algorithm, 8);
            assert_eq!(code_at(&secret, &p, time).as_str(), want, "{algorithm:?} at {time}");
            assert_eq!(verify(&secret, &p, want, time, None), Ok(time / 30), "{algorithm:?} at {time}");
        }
    }
}

#[test]
fn one_step_of_tolerance_either_way_and_no_more() {
    let secret = TotpSecret::from_bytes(SEED_SHA1);
    let p = TotpParams::default();
    let now = 1_800_000_015; // step 60_000_000
    let step = now / 30;
    for (offset, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
        let at = (now as i64 + offset * 30) as u64;
        let code = code_at(&secret, &p, at);
        let result = verify(&secret, &p, &code, now, None);
        if accepted {
            assert_eq!(result, Ok((step as i64 + offset) as u64), "offset {offset}");
        } else {
            assert_eq!(result, Err(TotpError::Wrong), "offset {offset}");
        }
    }
}

#[test]
fn an_accepted_code_is_refused_for_the_rest_of_its_window() {
    let secret = generate_secret(&mut OsRng);
    let p = TotpParams::default();
    let now = 1_800_000_000;
    let code = code_at(&secret, &p, now);
    let step = verify(&secret, &p, &code, now, None).unwrap();
    // Same code, same step, and while it is still inside the ±1 window.
    for later in [now, now + 10, now + 30, now + 59] {
        assert_eq!(verify(&secret, &p, &code, later, Some(step)), Err(TotpError::Replayed), "at {later}");
    }
    // An older code (step - 1) is refused too once a newer step was used.
    let older = code_at(&secret, &p, now - 30);
    if older != code {
        assert_eq!(verify(&secret, &p, &older, now, Some(step)), Err(TotpError::Replayed));
    }
    // The next step's code is fresh.
    let next = code_at(&secret, &p, now + 30);
    assert_eq!(verify(&secret, &p, &next, now + 30, Some(step)), Ok(step + 1));
}

#[test]
fn wrong_codes_are_wrong() {
    let secret = TotpSecret::from_bytes(SEED_SHA1);
    let p = TotpParams::default();
    let now = 1_800_000_000;
    let window: Vec<_> = [now - 30, now, now + 30].iter().map(|&t| code_at(&secret, &p, t)).collect();
    let wrong = (0..1_000_000u32).map(|n| format!("{n:06}")).find(|c| !window.iter().any(|w| w.as_str() == c)).unwrap();
    assert_eq!(verify(&secret, &p, &wrong, now, None), Err(TotpError::Wrong));
}

#[test]
fn malformed_input_is_a_typed_error_not_a_panic() {
    let secret = TotpSecret::from_bytes(SEED_SHA1);
    let p = TotpParams::default();
    let malformed = Err(TotpError::Malformed { digits: 6 });
    let huge = "1".repeat(1 << 20);
    let huge_spaces = " ".repeat(1 << 20);
    for input in [
        "",
        " ",
        "12345",
        "1234567",
        "12345a",
        "12 34 5",
        "１２３４５６",
        "123456\0",
        "-12345",
        "+12345",
        &huge,
        &huge_spaces,
    ] {
        assert_eq!(verify(&secret, &p, input, 1_800_000_000, None), malformed, "{:?}", &input[..input.len().min(12)]);
    }
    // Grouping spaces and surrounding whitespace are fine.
    let code = code_at(&secret, &p, 1_800_000_000);
    let spaced = format!(" {} {}\n", &code[..3], &code[3..]);
    assert!(verify(&secret, &p, &spaced, 1_800_000_000, None).is_ok());
    // Out-of-range parameters are refused by verify and never panic code_at.
    for bad in [params(Algorithm::Sha1, 5), params(Algorithm::Sha1, 9), TotpParams { step_secs: 0, ..p }] {
        assert!(matches!(verify(&secret, &bad, "123456", 100, None), Err(TotpError::InvalidParams { .. })));
        assert!((6..=8).contains(&code_at(&secret, &bad, 100).len()));
    }
    // Time at the ends of the range.
    assert!(verify(&secret, &p, "123456", 0, None).is_err());
    assert!(verify(&secret, &p, "123456", u64::MAX, None).is_err());
    assert_eq!(code_at(&secret, &p, u64::MAX).len(), 6);
}

#[test]
fn base32_roundtrips_and_is_lenient_only_where_people_are() {
    for _ in 0..200 {
        let mut raw = vec![0u8; 16 + (OsRng.next_u32() % 113) as usize];
        OsRng.fill_bytes(&mut raw);
        let secret = TotpSecret::from_bytes(&raw);
        let text = secret.to_base32();
        assert!(text.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)), "no padding");
        assert_eq!(TotpSecret::from_base32(&text).unwrap().as_bytes(), &raw[..]);
        assert_eq!(TotpSecret::from_base32(&text.to_lowercase()).unwrap().as_bytes(), &raw[..]);
    }
    let generated = generate_secret(&mut OsRng);
    assert_eq!(generated.as_bytes().len(), 20, "160 bits");
    assert_eq!(generated.to_base32().len(), 32);
    let grouped = "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ";
    assert_eq!(TotpSecret::from_base32(grouped).unwrap().as_bytes(), SEED_SHA1);
    assert_eq!(TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====").unwrap().as_bytes(), SEED_SHA1);
    assert_eq!(TotpSecret::from_base32("GEZDGNBVGY3TQOJ1").unwrap_err(), SecretError::Character { position: 15 });
    assert_eq!(TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQG").unwrap_err(), SecretError::Truncated);
    assert_eq!(TotpSecret::from_base32("").unwrap_err(), SecretError::Length(0));
    assert_eq!(TotpSecret::from_base32("GEZDGNBV").unwrap_err(), SecretError::Length(5));
    assert!(TotpSecret::from_base32(&"A".repeat(1 << 16)).is_err());
    assert_eq!(format!("{generated:?}"), "TotpSecret(<redacted>)");
}

#[test]
fn otpauth_uri_follows_the_key_uri_format() {
    let secret = TotpSecret::from_bytes(SEED_SHA1);
    let uri = otpauth_uri(&secret, &TotpParams::default(), "Example Co", "alice@example.com");
    assert_eq!(
        uri,
        "otpauth://totp/Example%20Co:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
         &issuer=Example%20Co&algorithm=SHA1&digits=6&period=30"
    );
    let uri = otpauth_uri(&secret, &params(Algorithm::Sha512, 8), "a:b&c", "x/y?z");
    assert!(uri.starts_with("otpauth://totp/a%3Ab%26c:x%2Fy%3Fz?"), "{uri}");
    assert!(uri.ends_with("&issuer=a%3Ab%26c&algorithm=SHA512&digits=8&period=30"), "{uri}");
    let uri = otpauth_uri(&secret, &TotpParams::default(), "", "bob");
    assert!(uri.starts_with("otpauth://totp/bob?secret="), "{uri}");
    assert!(!uri.contains("issuer="));
}

#[test]
fn qr_code_renders_for_a_terminal() {
    let secret = generate_secret(&mut OsRng);
    let qr = qr_terminal(&otpauth_uri(&secret, &TotpParams::default(), "onetrip", "ci-deploy"));
    let lines: Vec<&str> = qr.lines().collect();
    assert!(lines.len() > 15, "{} lines", lines.len());
    assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()), "square");
    assert!(qr.chars().all(|c| matches!(c, ' ' | '▀' | '▄' | '█' | '\n')), "unicode half blocks only");
    assert!(qr_terminal(&"x".repeat(10_000)).starts_with("(no QR code"));
}

/// `oathtool --totp[=ALG] -d DIGITS -b BASE32 -N @TIME`, or `None` if it is not installed.
fn oathtool(algorithm: Algorithm, digits: u32, base32: &str, time: u64) -> Option<String> {
    let mode = match algorithm {
        Algorithm::Sha1 => "--totp=sha1",
        Algorithm::Sha256 => "--totp=sha256",
        Algorithm::Sha512 => "--totp=sha512",
    };
    let out = Command::new("oathtool")
        .args([mode, "-d", &digits.to_string(), "-b", base32, "-N", &format!("@{time}")])
        .output()
        .ok()?;
    assert!(out.status.success(), "oathtool failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).expect("oathtool prints ASCII").trim().to_owned())
}

#[test]
fn agrees_with_oathtool_on_random_secrets_and_times() {
    if Command::new("oathtool").arg("--version").output().is_err() {
        support::missing_tool("oathtool", "apt-get install -y oathtool");
        return;
    }
    let cases = [
        (Algorithm::Sha1, 20, 6),
        (Algorithm::Sha1, 20, 8),
        (Algorithm::Sha256, 32, 6),
        (Algorithm::Sha256, 32, 8),
        (Algorithm::Sha512, 64, 7),
    ];
    for (algorithm, len, digits) in cases {
        for _ in 0..4 {
            let mut raw = vec![0u8; len];
            OsRng.fill_bytes(&mut raw);
            let secret = TotpSecret::from_bytes(&raw);
            let time = OsRng.next_u64() % 4_000_000_000;
            let p = params(algorithm, digits);
            let theirs = oathtool(algorithm, digits, &secret.to_base32(), time).expect("oathtool ran before");
            assert_eq!(code_at(&secret, &p, time).as_str(), theirs, "{algorithm:?}/{digits} at {time}");
            assert!(verify(&secret, &p, &theirs, time, None).is_ok());
        }
    }
}
