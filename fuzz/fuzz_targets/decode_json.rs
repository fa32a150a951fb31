//! Arbitrary bytes into the JSON event decoder and the validator: no panic, the one-pass
//! decoder answers exactly what the reference decoder answers, and whatever decodes survives
//! the protobuf round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pitboss_model::{
    ValidationConfig, decode_event, decode_event_exact, decode_proto, encode_proto, validate,
};

fuzz_target!(|data: &[u8]| {
    let decoded = decode_event(data);
    let exact = decode_event_exact(data);
    match (&decoded, &exact) {
        // Compare encodings, not values: a NaN property is equal to itself only bit for bit.
        (Ok(a), Ok(b)) => assert_eq!(encode_proto(a), encode_proto(b)),
        (a, b) => assert_eq!(a, b),
    }
    if let Ok(event) = decoded {
        let _ = validate(&event, &ValidationConfig::default(), 1_795_870_800_000);
        let bytes = encode_proto(&event);
        let back = decode_proto(&bytes).expect("an encoded event decodes");
        assert_eq!(encode_proto(&back), bytes);
    }
});
