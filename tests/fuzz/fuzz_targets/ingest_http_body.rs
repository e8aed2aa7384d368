//! A body POSTed to `/v1/infer` or `/v1/examples` (the first byte picks the route): parsing
//! must never panic, whatever the bytes.
#![no_main]

use aifab_ingest::validate::{http_body, Route, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else { return };
    let route = if first % 2 == 0 { Route::Infer } else { Route::Examples };
    let mut rules = Rules::default();
    rules.labels.insert("sms_spam".into(), vec!["ham".into(), "spam".into()]);
    rules.max_batch_items = 8;
    rules.max_text_chars = 200;
    let _ = http_body(body, route, "acme", &rules);
});
