//! The benchmark's payloads: a deterministic text per index from a small SMS-like
//! vocabulary, wrapped as `ingest.raw/v1` records keyed by id.

const WORDS: &[&str] = &[
    "the", "a", "free", "call", "now", "you", "have", "won", "prize", "claim", "your", "text",
    "reply", "stop", "meeting", "tomorrow", "lunch", "at", "noon", "see", "soon", "love", "home",
    "late", "tonight", "ok", "sure", "thanks", "mobile", "offer", "cash", "week", "urgent",
    "account", "please", "send", "number", "when", "are", "we", "going", "movie", "great", "day",
    "sorry", "missed", "message", "back", "later", "good", "morning", "network", "customer",
    "service", "delivery", "order", "today", "friday", "weekend", "plans", "dinner",
];

/// A deterministic text of `words` words per index.
pub(crate) fn text(i: usize, words: usize) -> String {
    let mut x = (i as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut out = Vec::with_capacity(words);
    for _ in 0..words {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        out.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    out.join(" ")
}

/// One record to produce: its key (the id) and its JSON bytes.
pub(crate) struct Payload {
    pub(crate) id: String,
    pub(crate) bytes: Vec<u8>,
}

/// `n` `ingest.raw/v1` records of `words`-word texts, ids `b-<i>`.
pub(crate) fn payloads(n: usize, words: usize) -> Vec<Payload> {
    (0..n)
        .map(|i| {
            let id = format!("b-{i}");
            let v = serde_json::json!({
                "schema": "ingest.raw/v1",
                "id": id,
                "tenant": "bench",
                "task": "default",
                "text": text(i, words),
            });
            Payload {
                id,
                bytes: serde_json::to_vec(&v).expect("json"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_deterministic_and_of_the_asked_length() {
        assert_eq!(text(7, 30), text(7, 30));
        assert_ne!(text(7, 30), text(8, 30));
        assert_eq!(text(3, 30).split(' ').count(), 30);
    }

    #[test]
    fn payloads_are_valid_raw_records_keyed_by_id() {
        let p = payloads(2, 5);
        assert_eq!(p[1].id, "b-1");
        let v: serde_json::Value = serde_json::from_slice(&p[1].bytes).unwrap();
        assert_eq!(v["schema"], "ingest.raw/v1");
        assert_eq!(v["id"], "b-1");
        assert_eq!(v["text"], text(1, 5));
        aifab_core::schema::validate("ingest.raw/v1", &v).unwrap();
    }
}
