//! A record of `aifab.ingest.raw` as any Kafka producer may write it: validation must
//! never panic, and an accepted record must encode to JSON that decodes again.
#![no_main]

use aifab_core::messages::{decode, encode, IngestRecord};
use aifab_ingest::validate::{raw_record, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rules = Rules::default();
    rules.labels.insert("sms_spam".into(), vec!["ham".into(), "spam".into()]);
    rules.max_text_chars = 200;
    if let Ok(rec) = raw_record(data, &rules) {
        let bytes = encode(&rec);
        decode::<IngestRecord>(&bytes).expect("an accepted record re-encodes to a valid ingest.raw/v1");
    }
});
