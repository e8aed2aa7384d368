//! A record value on one of the Kafka topics between services (the first byte picks the
//! type): `decode` must never panic and a decoded message must re-encode to bytes that
//! decode again.
#![no_main]

use aifab_core::messages::*;
use libfuzzer_sys::fuzz_target;

fn roundtrip<T: Message>(bytes: &[u8]) {
    if let Ok(m) = decode::<T>(bytes) {
        let again = encode(&m);
        decode::<T>(&again).unwrap_or_else(|e| panic!("{} re-encoded does not decode: {e}", T::SCHEMA));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((first, payload)) = data.split_first() else { return };
    match first % 6 {
        0 => roundtrip::<IngestRecord>(payload),
        1 => roundtrip::<InferenceRequest>(payload),
        2 => roundtrip::<TrainingExample>(payload),
        3 => roundtrip::<Prediction>(payload),
        4 => roundtrip::<UsageRecord>(payload),
        _ => roundtrip::<DeadLetter>(payload),
    }
});
