//! Arbitrary bytes into the JSON event decoder and the validator: no panic, and whatever
//! decodes survives the protobuf round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pitboss_model::{ValidationConfig, decode_event, decode_proto, encode_proto, validate};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode_event(data) {
        let _ = validate(&event, &ValidationConfig::default(), 1_795_870_800_000);
        // Compare encodings, not values: a NaN property is equal to itself only bit for bit.
        let bytes = encode_proto(&event);
        let back = decode_proto(&bytes).expect("an encoded event decodes");
        assert_eq!(encode_proto(&back), bytes);
    }
});
