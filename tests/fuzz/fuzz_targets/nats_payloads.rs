//! A payload on a NATS subject (the first byte picks the message type): `decode` must never
//! panic, a decoded message must re-encode to bytes that decode again, and what a service
//! derives from it at once (ingest's budget state from a budget event) must not panic.
#![no_main]

use aifab_core::messages::*;
use libfuzzer_sys::fuzz_target;

fn roundtrip<T: Message>(bytes: &[u8]) -> Option<T> {
    let m = decode::<T>(bytes).ok()?;
    let again = encode(&m);
    decode::<T>(&again).unwrap_or_else(|e| panic!("{} re-encoded does not decode: {e}", T::SCHEMA));
    Some(m)
}

fuzz_target!(|data: &[u8]| {
    let Some((first, payload)) = data.split_first() else { return };
    match first % 9 {
        0 => {
            if let Some(e) = roundtrip::<BudgetEvent>(payload) {
                let _ = aifab_ingest::budget::period_end_ms(&e.period);
                let _ = aifab_ingest::budget::Exceeded::from_event(&e, aifab_core::now_ms());
            }
        }
        1 => drop(roundtrip::<BudgetSet>(payload)),
        2 => drop(roundtrip::<TrainRequest>(payload)),
        3 => drop(roundtrip::<ModelEvent>(payload)),
        4 => drop(roundtrip::<LagReading>(payload)),
        5 => drop(roundtrip::<ScaleDecision>(payload)),
        6 => drop(roundtrip::<ReplicaReport>(payload)),
        7 => drop(roundtrip::<Alert>(payload)),
        _ => drop(roundtrip::<TrainProgress>(payload)),
    }
});
