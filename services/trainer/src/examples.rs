//! Training examples from Kafka into the window: the topic is replayed from the start on
//! every start (history fills the window), and new examples count towards a trigger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aifab_core::backoff::Backoff;
use aifab_core::messages::{decode, TrainingExample};
use aifab_core::supervise::Heartbeat;
use anyhow::Context;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::dataset::{Example, TrainingWindow};
use crate::metric_names;
use crate::Config;

/// Replay the topic from the beginning: records before the group's committed offsets are
/// history (they fill the window), later ones are new (they count towards a trigger).
/// Until the topic exists and the group coordinator answers (a broker that is still
/// starting), the assignment is retried with backoff; the heartbeat says why meanwhile.
pub(crate) async fn consume_examples(
    consumer: Arc<StreamConsumer>,
    config: Config,
    window: Arc<Mutex<TrainingWindow>>,
    triggers: mpsc::UnboundedSender<String>,
    heartbeat: Heartbeat,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let topic = config.input_topic.clone();
    let mut backoff = Backoff::for_dependencies();
    let committed = loop {
        let (c, t) = (consumer.clone(), topic.clone());
        let why = match tokio::task::spawn_blocking(move || assign_from_beginning(&c, &t))
            .await
            .context("assigning the examples topic")?
        {
            Ok(Some(committed)) => break committed,
            Ok(None) => format!("topic {topic} does not exist yet"),
            Err(e) => format!("assigning {topic}: {e:#}"),
        };
        heartbeat.trouble(&why);
        let delay = backoff.next_delay_jittered();
        tracing::warn!(%topic, attempt = backoff.attempt(), retry_in = ?delay, reason = %why,
            "cannot read training examples yet; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    tracing::info!(%topic, partitions_with_history = committed.len(),
        "replaying training examples");
    heartbeat.progress();
    let mut stream = consumer.stream();
    loop {
        let msg = tokio::select! {
            m = stream.next() => match m {
                Some(m) => m,
                None => anyhow::bail!("the examples consumer's stream ended"),
            },
            _ = tokio::time::sleep(IDLE_BEAT) => {
                heartbeat.idle();
                continue;
            }
            _ = shutdown.cancelled() => return Ok(()),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                heartbeat.trouble(format_args!("consumer error: {e}"));
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        heartbeat.progress();
        match decode::<TrainingExample>(msg.payload().unwrap_or_default()) {
            Ok(ex) => {
                let fresh = committed
                    .get(&msg.partition())
                    .is_none_or(|c| msg.offset() >= *c);
                let due = {
                    let mut w = window.lock().expect("window lock");
                    w.push(
                        &ex.task,
                        Example {
                            text: ex.text,
                            label: ex.label,
                        },
                        fresh,
                    );
                    config.train_every > 0 && w.new_examples(&ex.task) >= config.train_every
                };
                metrics::counter!(metric_names::EXAMPLES_TOTAL).increment(1);
                if due {
                    window.lock().expect("window lock").mark_trained(&ex.task);
                    let _ = triggers.send(ex.task);
                }
            }
            Err(e) => {
                metrics::counter!(metric_names::BAD_EXAMPLES_TOTAL).increment(1);
                tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e,
                    "skipping undecodable training example");
            }
        }
    }
}

/// How often a quiet examples consumer reports that it is alive.
const IDLE_BEAT: Duration = Duration::from_secs(5);

/// Assign every partition of `topic` from the beginning; the group's committed offsets
/// by partition. `None` while the topic does not exist.
fn assign_from_beginning(
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<Option<HashMap<i32, i64>>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("metadata")?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .context("the group's committed offsets")?;
    let mut assign = TopicPartitionList::new();
    let mut out = HashMap::new();
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset() {
            out.insert(e.partition(), o);
        }
        assign.add_partition_offset(topic, e.partition(), Offset::Beginning)?;
    }
    consumer.assign(&assign)?;
    Ok(Some(out))
}
