//! The records produced to the raw topic: 600 valid ones (a third labelled, a sixth
//! without an id) interleaved with invalid ones of 14 kinds, and later 60 duplicates.

use super::*;

/// A kind of invalid record: its `error_kind`, how many, and how to make record `j`
/// (payload, the reason its dead letter must give).
type BadRecord = (&'static str, usize, Box<dyn Fn(usize) -> (Vec<u8>, String)>);

fn kafka_bad() -> Vec<BadRecord> {
    let rec = |extra: serde_json::Value| {
        let mut v = json!({
            "schema": "ingest.raw/v1", "tenant": "acme", "text": "the cat sat", "task": "sms_spam",
        });
        for (k, x) in extra.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        serde_json::to_vec(&v).unwrap()
    };
    vec![
        (
            "not_json",
            60,
            Box::new(|i| {
                (
                    format!("{{not json {i}").into_bytes(),
                    "message: not JSON".into(),
                )
            }),
        ),
        (
            "not_utf8",
            60,
            Box::new(|i| {
                let mut b = vec![0xff, 0xfe];
                b.extend(format!(" bad bytes {i}").as_bytes());
                (b, "message: not UTF-8: invalid byte at position 0".into())
            }),
        ),
        (
            "wrong_schema",
            40,
            Box::new(move |_| {
                (
                    rec(json!({"schema": "prediction/v1"})),
                    r#"field "schema": expected "ingest.raw/v1", found "prediction/v1""#.into(),
                )
            }),
        ),
        (
            "wrong_schema",
            40,
            Box::new(move |_| {
                (
                    rec(json!({"schema": "ingest.raw/v2"})),
                    r#"expected "ingest.raw/v1", found "ingest.raw/v2""#.into(),
                )
            }),
        ),
        (
            "missing_schema",
            30,
            Box::new(move |_| {
                (
                    rec(json!({"schema": null})),
                    r#"missing field "schema""#.into(),
                )
            }),
        ),
        (
            "missing_field",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"tenant": null})),
                    r#"missing field "tenant""#.into(),
                )
            }),
        ),
        (
            "wrong_type",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"deadline_ms": "soon"})),
                    r#"field "deadline_ms": "soon" is not of type "integer""#.into(),
                )
            }),
        ),
        (
            "empty_text",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"text": ""})),
                    r#"field "text": "" is shorter than 1 character"#.into(),
                )
            }),
        ),
        (
            "text_too_long",
            35,
            Box::new(move |_| {
                (
                    rec(json!({"text": "a".repeat(20_001)})),
                    "is 20001 characters long, more than the maximum of 20000".into(),
                )
            }),
        ),
        // Near the broker's 1 MB: its dead letter keeps the first 256 KiB, or it could not
        // be written.
        (
            "record_too_large",
            5,
            Box::new(move |_| {
                (
                    rec(json!({"attributes": {"pad": "p".repeat(900_000)}})),
                    "bytes long, more than the maximum of 262144 bytes per record".into(),
                )
            }),
        ),
        (
            "unknown_tenant",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"tenant": "ghost"})),
                    r#"field "tenant": "ghost" is not a known tenant"#.into(),
                )
            }),
        ),
        (
            "unknown_label",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"label": "eggs"})),
                    concat!(
                        r#"field "label": "eggs" is not a label of task "sms_spam" "#,
                        r#"(expected one of "ham", "spam")"#
                    )
                    .into(),
                )
            }),
        ),
        (
            "unexpected_field",
            40,
            Box::new(move |_| {
                (
                    rec(json!({"colour": "red"})),
                    r#"unexpected field "colour""#.into(),
                )
            }),
        ),
        (
            "invalid_value",
            30,
            Box::new(move |_| {
                (
                    rec(json!({"tenant": "acme corp"})),
                    r#"field "tenant": "acme corp" does not match"#.into(),
                )
            }),
        ),
    ]
}

/// Valid and invalid records to `t.raw`, in the same batches.
pub(crate) async fn produce_mixed(t: &Topics, sent: &mut Sent) {
    // Identity of each valid message: its id, or (id-less ones) a marker in its text.
    let valid_labelled = &mut sent.valid_labelled;
    let mut kafka: Vec<RawRecord> = Vec::new();
    for i in 0..600 {
        let tenant = if i % 2 == 0 { "acme" } else { "beta" };
        let labelled = i % 3 == 0;
        let mut v = json!({
            "schema": "ingest.raw/v1", "tenant": tenant, "task": "sms_spam",
            "text": format!("the quick brown fox {i} ~vk{i}~"),
        });
        if labelled {
            v["label"] = json!(if i % 2 == 0 { "ham" } else { "spam" });
        }
        let ident = if i % 6 == 5 {
            format!("~vk{i}~")
        } else {
            v["id"] = json!(format!("v-k-{i}"));
            format!("v-k-{i}")
        };
        valid_labelled.insert(ident.clone(), labelled);
        let key = v["id"].as_str().map(str::to_string);
        kafka.push((
            key,
            serde_json::to_vec(&v).unwrap(),
            vec![(
                "traceparent".into(),
                format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
            )],
        ));
    }
    // Invalid Kafka input (duplicates come later, after their originals).
    let mut kafka_expect: Vec<Expect> = Vec::new();
    let mut bad_records = Vec::new();
    let mut j = 0;
    for (kind, n, make) in kafka_bad() {
        for _ in 0..n {
            let (payload, reason) = make(j);
            bad_records.push((Some(format!("bad-{kind}-{j}")), payload, vec![]));
            kafka_expect.push(Expect { kind, reason });
            j += 1;
        }
    }
    // Interleave: valid and invalid in the same batches.
    let mut mixed = Vec::new();
    let mut expect_at: Vec<Option<usize>> = Vec::new();
    let (mut vi, mut bi) = (kafka.into_iter(), bad_records.into_iter().enumerate());
    loop {
        let a = vi.next();
        let b = bi.next();
        if a.is_none() && b.is_none() {
            break;
        }
        if let Some(r) = a {
            mixed.push(r);
            expect_at.push(None);
        }
        if let Some((k, r)) = b {
            mixed.push(r);
            expect_at.push(Some(k));
        }
    }
    let positions = produce_raw(&t.raw, &mixed).await;
    for ((pos, e), r) in positions.iter().zip(&expect_at).zip(&mixed) {
        if let Some(k) = e {
            sent.kafka_dlq_expect.insert(*pos, (*k, r.0.clone()));
        }
    }
    sent.kafka_expect = kafka_expect;
}

/// 60 records reusing the ids of accepted ones (same key, so the same partition, behind
/// the original).
pub(crate) async fn produce_duplicates(t: &Topics, sent: &mut Sent) {
    let mut dupes = Vec::new();
    let mut dupe_expect = Vec::new();
    for i in (0..600).filter(|i| i % 6 != 5).take(60) {
        let tenant = if i % 2 == 0 { "acme" } else { "beta" };
        let v = json!({
            "schema": "ingest.raw/v1", "tenant": tenant, "task": "sms_spam",
            "id": format!("v-k-{i}"), "text": "a repeat",
        });
        dupes.push((
            Some(format!("v-k-{i}")),
            serde_json::to_vec(&v).unwrap(),
            vec![],
        ));
        let reason = format!(
            r#"field "id": "v-k-{i}" was already used by an earlier record of tenant "{tenant}""#
        );
        sent.kafka_expect.push(Expect {
            kind: "duplicate_id",
            reason,
        });
        dupe_expect.push(sent.kafka_expect.len() - 1);
    }
    for ((pos, k), d) in produce_raw(&t.raw, &dupes)
        .await
        .into_iter()
        .zip(dupe_expect)
        .zip(&dupes)
    {
        sent.kafka_dlq_expect.insert(pos, (k, d.0.clone()));
    }
}
