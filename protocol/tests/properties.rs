//! Property tests over random secrets, keys, timestamps and request fields.

mod common;

use common::*;
use onetrip_protocol::api_key::{ApiKey, KeyId};
use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::{ClientHandshake, DefaultBackend, Outcome, Secret};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn any_key_timestamp_and_fields_round_trip(
        seed in any::<u64>(),
        id in any::<[u8; 16]>(),
        secret in any::<[u8; 24]>(),
        offset in 0u64..240,
        audience in "[a-z0-9.:-]{0,64}",
        scopes in "[a-z:]{1,10}( [a-z:]{1,10}){0,5}",
        wrong_bit in 0usize..192,
    ) {
        let fx = Fixture::<DefaultBackend>::new(seed);
        let key = ApiKey::from_parts(KeyId::from_bytes(id), Secret::new(secret));
        prop_assert_eq!(ApiKey::parse(&key.encode()).unwrap().id(), key.id());
        let client = ClientHandshake::new(fx.backend, &key, &fx.document, NOW).unwrap();
        let now = NOW - 60 + offset;
        let mut rng = TestRng::new(seed ^ 1);
        let mut request = [0u8; REQUEST_LEN];
        let req = ClientRequest { audience: &audience, scopes: &scopes, second_factor: None };
        let pending = client.start(&req, now, &mut rng, &mut request).unwrap();
        let opened = fx.responder.open_request(&request, NOW).unwrap();
        prop_assert_eq!(opened.key_id(), Some(key.id()));
        let ss = fx.responder.static_static(opened.server_key_id(), &key.verifier(&fx.backend).unwrap()).unwrap();
        let auth = opened.authenticate(&ss).unwrap();
        prop_assert_eq!(auth.timestamp(), now);
        prop_assert_eq!(auth.audience(), audience.as_str());
        prop_assert_eq!(auth.scopes(), scopes.as_str());
        prop_assert_eq!(auth.timestamp_acceptable(NOW, 60, 0), offset <= 120);
        let mut response = [0u8; RESPONSE_LEN];
        auth.respond(&Reply::ClockSkew, NOW, &mut rng, &mut response);
        let is_clock_skew = matches!(pending.finish(&response).unwrap(), Outcome::ClockSkew { server_time } if server_time == NOW);
        prop_assert!(is_clock_skew);

        // The same key id with one secret bit changed never authenticates.
        let mut wrong = secret;
        wrong[wrong_bit / 8] ^= 1 << (wrong_bit % 8);
        let impostor = ApiKey::from_parts(KeyId::from_bytes(id), Secret::new(wrong));
        let client = ClientHandshake::new(fx.backend, &impostor, &fx.document, NOW).unwrap();
        client.start(&req, NOW, &mut rng, &mut request).unwrap();
        let opened = fx.responder.open_request(&request, NOW).unwrap();
        prop_assert!(opened.authenticate(&ss).is_err());
    }
}
