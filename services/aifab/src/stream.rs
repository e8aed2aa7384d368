//! `aifab produce` and `aifab consume`: JSON lines to and from any aifab topic.
//!
//! `produce` checks each line against the topic's schema before sending it (the same
//! embedded schemas the services use), so a typo is answered on the terminal with the
//! field it breaks instead of ending in the dead-letter topic. `consume` reads
//! `read_committed` without joining a consumer group, so it never moves a service's
//! offsets or takes partitions from it.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use aifab_core::tail::{Start, Tail, TailError};
use aifab_core::topics::TOPICS;
use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to write, e.g. aifab.ingest.raw. Lines for an aifab topic are checked
    /// against its schema first.
    #[arg(long, short)]
    pub topic: String,
    /// File of JSON lines (default: standard input).
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// Send lines as they are, without the schema check (to try bad input on purpose).
    #[arg(long)]
    pub no_validate: bool,
    /// Use this field of each line as the message key (when present and a string).
    #[arg(long, default_value = "id")]
    pub key_field: String,
    #[arg(long, env = "AIFAB_KAFKA_BROKERS", default_value = aifab_core::config::DEFAULT_KAFKA_BROKERS)]
    pub kafka_brokers: String,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to read, e.g. aifab.predictions.
    #[arg(long, short)]
    pub topic: String,
    /// Start at the oldest retained message instead of only new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many messages.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop once no message came for this many seconds (default: follow until Ctrl-C).
    #[arg(long)]
    pub idle_timeout_s: Option<f64>,
    /// Print each message as {"partition","offset","key","value"} instead of the value alone.
    #[arg(long)]
    pub with_meta: bool,
    #[arg(long, env = "AIFAB_KAFKA_BROKERS", default_value = aifab_core::config::DEFAULT_KAFKA_BROKERS)]
    pub kafka_brokers: String,
}

/// The schema (`name/version`) of an aifab topic, `None` for any other topic.
pub fn topic_schema(topic: &str) -> Option<&'static str> {
    TOPICS.iter().find(|t| t.name == topic).map(|t| t.schema)
}

/// An input line made ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The message key: the line's `--key-field`, when present and a string.
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

/// One input line made ready to send, or why it is refused. Blank lines are `Ok(None)`.
pub fn prepare_line(
    line: &str,
    schema: Option<&str>,
    key_field: &str,
    validate: bool,
) -> Result<Option<Prepared>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let value: Option<Value> = serde_json::from_str(line).ok();
    if validate {
        let Some(v) = &value else {
            return Err("not JSON".into());
        };
        if let Some(schema) = schema {
            aifab_core::schema::validate(schema, v)
                .map_err(|errs| aifab_core::schema::describe(&errs))?;
        }
    }
    let key = value
        .as_ref()
        .and_then(|v| v.get(key_field))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Some(Prepared {
        key,
        payload: line.as_bytes().to_vec(),
    }))
}

pub async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let schema = topic_schema(&args.topic);
    if schema.is_none() && !args.no_validate {
        eprintln!(
            "note: {} is not an aifab topic; lines are only checked to be JSON",
            args.topic
        );
    }
    let reader: Box<dyn BufRead> = match &args.file {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let producer: FutureProducer =
        aifab_core::kafka::producer_config(&args.kafka_brokers, "aifab-cli")
            .create()
            .context("creating the Kafka producer")?;
    let mut pending = futures::stream::FuturesOrdered::new();
    let (mut sent, mut refused, mut failed) = (0u64, 0u64, 0u64);
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        match prepare_line(&line, schema, &args.key_field, !args.no_validate) {
            Ok(None) => {}
            Ok(Some(Prepared { key, payload })) => {
                let producer = producer.clone();
                let topic = args.topic.clone();
                pending.push_back(async move {
                    let mut record = FutureRecord::to(&topic).payload(&payload);
                    if let Some(k) = &key {
                        record = record.key(k);
                    }
                    (
                        n + 1,
                        producer
                            .send(record, Duration::from_secs(60))
                            .await
                            .map(|_| ())
                            .map_err(|(e, _)| e),
                    )
                });
            }
            Err(reason) => {
                refused += 1;
                eprintln!("line {}: refused, not sent: {reason}", n + 1);
            }
        }
        // Bound what is in flight: a large file streams instead of piling up in memory.
        while pending.len() >= 10_000 {
            tally(
                futures::StreamExt::next(&mut pending).await,
                &mut sent,
                &mut failed,
            );
        }
    }
    while let Some(r) = futures::StreamExt::next(&mut pending).await {
        tally(Some(r), &mut sent, &mut failed);
    }
    eprintln!(
        "{sent} sent to {}, {refused} refused, {failed} failed",
        args.topic
    );
    anyhow::ensure!(
        refused == 0 && failed == 0,
        "{} of {} lines were not sent",
        refused + failed,
        sent + refused + failed
    );
    Ok(())
}

type SendOutcome = (usize, Result<(), rdkafka::error::KafkaError>);

fn tally(r: Option<SendOutcome>, sent: &mut u64, failed: &mut u64) {
    match r {
        Some((_, Ok(_))) => *sent += 1,
        Some((line, Err(e))) => {
            *failed += 1;
            eprintln!("line {line}: the broker did not take it: {e}");
        }
        None => {}
    }
}

/// How `consume` prints one message.
pub fn render(
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    with_meta: bool,
) -> String {
    let payload = payload.unwrap_or_default();
    let text = String::from_utf8_lossy(payload);
    if !with_meta {
        return text.trim_end().to_string();
    }
    let value = serde_json::from_slice::<Value>(payload)
        .unwrap_or_else(|_| Value::String(text.into_owned()));
    serde_json::json!({
        "partition": partition,
        "offset": offset,
        "key": key.map(|k| String::from_utf8_lossy(k).into_owned()),
        "value": value,
    })
    .to_string()
}

pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let shutdown = aifab_core::shutdown::on_signal();
    tokio::task::spawn_blocking(move || consume_blocking(&args, &shutdown)).await?
}

fn consume_blocking(
    args: &ConsumeArgs,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    // Assigned by hand, nothing committed: a service's group is never touched.
    let start = if args.from_beginning {
        Start::Beginning
    } else {
        Start::Latest
    };
    let mut tail =
        Tail::open(&args.kafka_brokers, "aifab-cli", &args.topic, start).map_err(|e| match e {
            TailError::NoPartitions(topic) => anyhow::anyhow!("topic {topic} does not exist"),
            e => anyhow::Error::new(e).context(format!(
                "reading {} (is Kafka up at {}?)",
                args.topic, args.kafka_brokers
            )),
        })?;
    let idle = args.idle_timeout_s.map(Duration::from_secs_f64);
    let mut last = std::time::Instant::now();
    let mut seen = 0u64;
    // Locked per message, not for the whole loop: the signal handler logs too.
    let mut out = std::io::stdout();
    while !shutdown.is_cancelled() && args.max.is_none_or(|m| seen < m) {
        match tail.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                writeln!(
                    out,
                    "{}",
                    render(
                        m.partition,
                        m.offset,
                        m.key.as_deref(),
                        m.payload.as_deref(),
                        args.with_meta
                    )
                )?;
                seen += 1;
                last = std::time::Instant::now();
            }
            Some(Err(e)) => eprintln!("kafka: {e}"),
            None => {
                out.flush()?;
                if idle.is_some_and(|d| last.elapsed() >= d) {
                    break;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aifab_topics_have_their_schema() {
        assert_eq!(topic_schema("aifab.ingest.raw"), Some("ingest.raw/v1"));
        assert_eq!(topic_schema("aifab.predictions"), Some("prediction/v1"));
        assert_eq!(topic_schema("orders"), None);
    }

    #[test]
    fn lines_are_checked_against_the_topic_schema() {
        let good = r#"{"schema":"ingest.raw/v1","id":"r1","tenant":"acme","text":"hello"}"#;
        let p = prepare_line(good, Some("ingest.raw/v1"), "id", true)
            .unwrap()
            .unwrap();
        assert_eq!(p.key.as_deref(), Some("r1"));
        assert_eq!(p.payload, good.as_bytes());

        let missing = r#"{"schema":"ingest.raw/v1","text":"hello"}"#;
        let err = prepare_line(missing, Some("ingest.raw/v1"), "id", true).unwrap_err();
        assert!(err.contains("tenant"), "{err}");
        assert_eq!(
            prepare_line("{nope", Some("ingest.raw/v1"), "id", true).unwrap_err(),
            "not JSON"
        );
        assert_eq!(
            prepare_line("   ", Some("ingest.raw/v1"), "id", true).unwrap(),
            None
        );
    }

    #[test]
    fn no_validate_sends_anything_and_other_topics_need_only_json() {
        assert!(prepare_line("{nope", Some("ingest.raw/v1"), "id", false)
            .unwrap()
            .is_some());
        let p = prepare_line(r#"{"a":1}"#, None, "id", true)
            .unwrap()
            .unwrap();
        assert_eq!(p.key, None);
    }

    #[test]
    fn render_prints_the_value_or_the_value_with_its_place() {
        assert_eq!(render(1, 7, None, Some(b"{\"a\":1}\n"), false), "{\"a\":1}");
        let v: Value =
            serde_json::from_str(&render(1, 7, Some(b"k"), Some(b"{\"a\":1}"), true)).unwrap();
        assert_eq!(
            (
                v["partition"].as_i64(),
                v["offset"].as_i64(),
                v["key"].as_str(),
                v["value"]["a"].as_i64()
            ),
            (Some(1), Some(7), Some("k"), Some(1))
        );
        let v: Value = serde_json::from_str(&render(0, 0, None, Some(b"not json"), true)).unwrap();
        assert_eq!(v["value"], "not json");
    }
}
