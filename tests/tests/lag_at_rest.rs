//! Lag tells the truth at rest, against the live broker. A transactional consumer commits
//! the offset after the last record it processed (`send_offsets_to_transaction`), which is
//! where the producer's commit marker sits: offsets alone then read one record of lag per
//! partition with nothing waiting (8 for the inference workers after a demo). The probe
//! (`aifab_core::kafka::LagProbe`) and the monitor's lag readings count 0 at rest, records
//! that wait as lag, and an aborted transaction at the end of a partition as nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aifab_core::kafka::{
    commit_transaction, consumer_config, group_offsets, send_waiting,
    transactional_producer_config, LagProbe, PartitionOffsets,
};
use aifab_core::messages::{decode, LagReading};
use aifab_core::topics::subjects;
use aifab_tests::*;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 3;

fn txn_producer() -> BaseProducer {
    let p: BaseProducer =
        transactional_producer_config(&kafka_brokers(), "aifab-tests", &unique("lag-rest-txn"))
            .create()
            .expect("producer");
    p.init_transactions(T).expect("init_transactions");
    p
}

/// One transaction of `n` records on each of `partitions`, committed or aborted.
fn produce_txn(p: &BaseProducer, topic: &str, partitions: &[i32], n: usize, commit: bool) {
    p.begin_transaction().unwrap();
    for &partition in partitions {
        for i in 0..n {
            let key = format!("k{partition}-{i}");
            send_waiting(
                p,
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(key.as_bytes())
                    .payload(&b"{}"[..]),
            )
            .unwrap();
        }
    }
    if commit {
        commit_transaction(p, T).expect("commit");
    } else {
        // Written first (aborting purges what is still queued), so they are in the log.
        p.flush(T).expect("flush");
        aifab_core::kafka::abort_transaction(p, T).expect("abort");
    }
}

/// What the services do: consume (`read_committed`) `expect` records in the group, then
/// commit the offset after the last one of each partition in a transaction.
fn consume_and_commit_in_txn(group: &str, topic: &str, expect: usize) {
    let c: BaseConsumer = consumer_config(&kafka_brokers(), "aifab-tests", group)
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < expect {
        assert!(
            Instant::now() < deadline,
            "consumed {got} of {expect} records"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            next.insert(m.partition(), m.offset() + 1);
            got += 1;
        }
    }
    let p = txn_producer();
    p.begin_transaction().unwrap();
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in &next {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .unwrap();
    }
    p.send_offsets_to_transaction(&tpl, &c.group_metadata().unwrap(), T)
        .expect("send_offsets_to_transaction");
    commit_transaction(&p, T).expect("commit");
}

/// The group's offsets as read (lag from offsets alone), and settled by `probe`.
fn offsets(
    probe: &mut LagProbe,
    group: &str,
    topic: &str,
) -> (Vec<PartitionOffsets>, Vec<PartitionOffsets>) {
    let c: BaseConsumer = consumer_config(&kafka_brokers(), "aifab-tests", group)
        .create()
        .unwrap();
    let raw = group_offsets(&c, topic, T).expect("offsets");
    let mut settled = raw.clone();
    probe.settle(group, topic, &mut settled);
    (raw, settled)
}

/// [`offsets`] once the offsets as read satisfy `ready`: the coordinators write a
/// transaction's markers (which move the last stable offset, the high watermark of a
/// `read_committed` client, and make offsets sent in it visible) after the producer's
/// commit or abort has returned.
fn offsets_when(
    probe: &mut LagProbe,
    group: &str,
    topic: &str,
    ready: impl Fn(&[PartitionOffsets]) -> bool,
) -> (Vec<PartitionOffsets>, Vec<PartitionOffsets>) {
    let deadline = Instant::now() + T;
    loop {
        let (raw, settled) = offsets(probe, group, topic);
        if ready(&raw) || Instant::now() >= deadline {
            return (raw, settled);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn highs(offs: &[PartitionOffsets]) -> Vec<i64> {
    offs.iter().map(|p| p.high_watermark).collect()
}

fn committed(offs: &[PartitionOffsets]) -> Vec<Option<i64>> {
    offs.iter().map(|p| p.committed).collect()
}

fn lags(offs: &[PartitionOffsets]) -> Vec<i64> {
    offs.iter().map(|p| p.lag).collect()
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The monitor's readings for the group until one satisfies `done`.
async fn reading_where(
    sub: &mut async_nats::Subscriber,
    what: &str,
    done: impl Fn(&LagReading) -> bool,
) -> LagReading {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(msg)) => {
                let r = decode::<LagReading>(&msg.payload).unwrap();
                if done(&r) {
                    return r;
                }
                last = Some(r);
            }
            _ => panic!("no lag reading with {what} within 30 s; the last: {last:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_zero_at_rest_behind_transaction_markers() {
    let topic = unique("lag-rest");
    let predictions = unique("lag-rest-predictions");
    create_topic(&topic, PARTITIONS).await;
    create_topic(&predictions, 1).await;
    let group = unique("lag-rest-workers");

    // Two committed transactions of 5 records per partition (offsets 0-4, marker 5,
    // 6-10, marker 11), consumed and committed as the services do: at offset 11.
    let (t, g) = (topic.clone(), group.clone());
    blocking(move || {
        let p = txn_producer();
        produce_txn(&p, &t, &[0, 1, 2], 5, true);
        produce_txn(&p, &t, &[0, 1, 2], 5, true);
        consume_and_commit_in_txn(&g, &t, 30);
    })
    .await;

    let (t, g) = (topic.clone(), group.clone());
    let (raw, settled, again) = blocking(move || {
        let mut probe = LagProbe::new(&kafka_brokers(), "aifab-tests-lag");
        let (raw, settled) = offsets_when(&mut probe, &g, &t, |o| {
            committed(o) == [Some(11); 3] && highs(o) == [12; 3]
        });
        let (_, again) = offsets(&mut probe, &g, &t);
        (raw, settled, again)
    })
    .await;
    assert!(
        raw.iter()
            .all(|p| p.committed == Some(11) && p.high_watermark == 12),
        "{raw:?}"
    );
    assert_eq!(
        lags(&raw),
        vec![1, 1, 1],
        "offsets alone count each partition's commit marker"
    );
    assert_eq!(lags(&settled), vec![0, 0, 0], "nothing waits: {settled:?}");
    assert_eq!(lags(&again), vec![0, 0, 0], "the kept answer: {again:?}");

    // The monitor's readings say the same.
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut lag_sub = nats.subscribe(subjects::lag(&group)).await.unwrap();
    nats.flush().await.unwrap();
    let (mut monitor, _addr) = spawn_service(
        "monitor",
        &[
            ("AIFAB_MONITOR_WATCH", format!("{group}={topic}")),
            ("AIFAB_MONITOR_DISCOVER", "false".into()),
            ("AIFAB_MONITOR_INTERVAL_MS", "500".into()),
            ("AIFAB_MONITOR_GROUP", unique("monitor")),
            ("AIFAB_MONITOR_PREDICTIONS_TOPIC", predictions.clone()),
            ("AIFAB_MONITOR_DLQ_TOPIC", unique("no-dlq")),
            ("AIFAB_MONITOR_COSTS_URL", String::new()),
        ],
    );
    let r = reading_where(&mut lag_sub, "total lag 0", |r| r.total_lag == 0).await;
    assert_eq!(r.partitions.len(), PARTITIONS as usize);
    assert!(
        r.partitions
            .iter()
            .all(|p| p.committed == Some(11) && p.high_watermark == 12 && p.lag == 0),
        "{r:?}"
    );
    // Its next readings stay at 0 (the answer is kept, not lost).
    for _ in 0..3 {
        let r = reading_where(&mut lag_sub, "any", |_| true).await;
        assert_eq!(r.total_lag, 0, "{r:?}");
    }

    // Records waiting are lag: 5 committed on partition 0 (offsets 12-16, marker 17). The
    // marker before them is not; the one after them still is (the probe reads no further
    // than the first record). An aborted transaction at the end of partition 1 (offsets
    // 12-15, abort marker 16) is nothing to consume.
    let (t, g) = (topic.clone(), group.clone());
    let (raw, settled) = blocking(move || {
        let p = txn_producer();
        produce_txn(&p, &t, &[0], 5, true);
        produce_txn(&p, &t, &[1], 4, false);
        offsets_when(
            &mut LagProbe::new(&kafka_brokers(), "aifab-tests-lag"),
            &g,
            &t,
            |o| highs(o) == [18, 17, 12],
        )
    })
    .await;
    assert_eq!(highs(&raw), vec![18, 17, 12], "{raw:?}");
    assert_eq!(lags(&raw), vec![7, 6, 1]);
    assert_eq!(lags(&settled), vec![6, 0, 0], "{settled:?}");
    let r = reading_where(&mut lag_sub, "the records waiting on partition 0", |r| {
        r.partitions[0].high_watermark == 18 && r.partitions[1].high_watermark == 17
    })
    .await;
    let r = if r.total_lag == 6 {
        r
    } else {
        reading_where(&mut lag_sub, "total lag 6", |r| r.total_lag == 6).await
    };
    assert_eq!(
        r.partitions.iter().map(|p| p.lag).collect::<Vec<_>>(),
        vec![6, 0, 0],
        "{r:?}"
    );

    // Consumed and committed again: back at rest, with the aborted records behind partition
    // 1's commit still counted as nothing.
    let (t, g) = (topic.clone(), group.clone());
    let (raw, settled) = blocking(move || {
        consume_and_commit_in_txn(&g, &t, 5);
        offsets_when(
            &mut LagProbe::new(&kafka_brokers(), "aifab-tests-lag"),
            &g,
            &t,
            |o| committed(o)[0] == Some(17),
        )
    })
    .await;
    assert_eq!(
        committed(&raw),
        vec![Some(17), Some(11), Some(11)],
        "{raw:?}"
    );
    assert_eq!(lags(&raw), vec![1, 6, 1]);
    assert_eq!(lags(&settled), vec![0, 0, 0], "{settled:?}");
    let r = reading_where(&mut lag_sub, "total lag 0 after the second commit", |r| {
        r.total_lag == 0 && r.partitions[0].committed == Some(17)
    })
    .await;
    assert!(r.partitions.iter().all(|p| p.lag == 0), "{r:?}");

    sigterm(&monitor);
    let _ = tokio::time::timeout(Duration::from_secs(20), monitor.wait()).await;
    delete_topic(&topic).await;
    delete_topic(&predictions).await;
}
