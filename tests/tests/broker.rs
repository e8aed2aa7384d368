//! Proof that the local broker does what aifab's guarantees need (run `scripts/stack-up`
//! first): consumer-group work sharing with durable commits, transactions with
//! `send_offsets_to_transaction`, lag from committed offsets, NATS and Redis basics.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aifab_core::kafka::{
    consumer_config, group_offsets, producer_config, transactional_producer_config,
};
use aifab_tests::{
    create_topic, delete_topic, eventually, kafka_brokers, nats_url, redis_url, unique,
};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);

fn group_consumer(group: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = consumer_config(&kafka_brokers(), "aifab-tests", group)
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

async fn produce_keys(topic: &str, keys: impl Iterator<Item = String>) {
    let p: FutureProducer = producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    let sends: Vec<_> = keys
        .map(|k| {
            let p = p.clone();
            async move {
                p.send(FutureRecord::to(topic).key(&k).payload(&k), T)
                    .await
                    .unwrap_or_else(|(e, _)| panic!("produce {k}: {e}"));
            }
        })
        .collect();
    futures::future::join_all(sends).await;
}

/// Receive until `n` messages arrived (committing each consumer's position as it goes).
async fn receive_shared(consumers: &[StreamConsumer], n: usize) -> Vec<Vec<String>> {
    let mut got: Vec<Vec<String>> = vec![Vec::new(); consumers.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.iter().map(Vec::len).sum::<usize>() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} received",
            got.iter().map(Vec::len).sum::<usize>()
        );
        let recvs = consumers.iter().map(|c| Box::pin(c.recv()));
        let (msg, idx, _) = futures::future::select_all(recvs).await;
        let msg = msg.expect("consume");
        got[idx].push(String::from_utf8(msg.key().unwrap().to_vec()).unwrap());
        consumers[idx].store_offset_from_message(&msg).unwrap();
    }
    for c in consumers {
        c.commit_consumer_state(CommitMode::Sync).expect("commit");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_shares_partitions_exactly_once_and_commits_survive_restart() {
    let topic = unique("group");
    let group = unique("group-g");
    create_topic(&topic, 4).await;

    let a = group_consumer(&group, &topic);
    let b = group_consumer(&group, &topic);
    // Drive both consumers until the group settled with both members holding partitions;
    // only then produce, so the split is decided by the group, not by who joined first.
    eventually(T, "both consumers to get an assignment", || async {
        let poll = |c: &StreamConsumer| {
            let _ = futures::FutureExt::now_or_never(c.recv());
        };
        poll(&a);
        poll(&b);
        let na = a.assignment().map(|t| t.count()).unwrap_or(0);
        let nb = b.assignment().map(|t| t.count()).unwrap_or(0);
        (na > 0 && nb > 0 && na + nb == 4).then_some(())
    })
    .await;

    let n = 10_000;
    produce_keys(&topic, (0..n).map(|i| format!("m{i}"))).await;
    let got = receive_shared(&[a, b], n).await;

    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both members worked: {} / {}",
        got[0].len(),
        got[1].len()
    );
    let all: Vec<&String> = got.iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), n, "no message delivered twice");
    assert_eq!(distinct.len(), n, "every message delivered");

    // Restart: a new member of the same group must start after the commits. New messages
    // land after the old ones in every partition, so if any old one were redelivered it
    // would arrive before the new ones.
    let c = group_consumer(&group, &topic);
    produce_keys(&topic, (0..100).map(|i| format!("after{i}"))).await;
    let after = receive_shared(&[c], 100).await;
    let old: Vec<_> = after[0]
        .iter()
        .filter(|k| !k.starts_with("after"))
        .collect();
    assert!(old.is_empty(), "redelivered after restart: {old:?}");
    assert_eq!(after[0].iter().collect::<HashSet<_>>().len(), 100);
    delete_topic(&topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_hide_aborts_and_commit_input_offsets() {
    let input = unique("txn-in");
    let output = unique("txn-out");
    let group = unique("txn-g");
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    produce_keys(&input, (0..10).map(|i| format!("in{i}"))).await;

    // Consume the input in the group, as a worker would.
    let consumer = group_consumer(&group, &input);
    let mut seen = 0;
    while seen < 10 {
        tokio::time::timeout(T, consumer.recv())
            .await
            .expect("input arrives")
            .unwrap();
        seen += 1;
    }

    let brokers = kafka_brokers();
    let txid = unique("txid");
    let producer: BaseProducer = transactional_producer_config(&brokers, "aifab-tests", &txid)
        .create()
        .unwrap();
    let out = output.clone();
    let position = consumer.position().unwrap();
    let cgm = consumer.group_metadata().expect("group metadata");
    tokio::task::spawn_blocking(move || {
        producer.init_transactions(T).unwrap();
        producer.begin_transaction().unwrap();
        for i in 0..5 {
            let k = format!("aborted{i}");
            producer
                .send(BaseRecord::to(&out).key(&k).payload(&k))
                .unwrap();
        }
        producer.flush(T).unwrap();
        producer.abort_transaction(T).unwrap();

        producer.begin_transaction().unwrap();
        for i in 0..5 {
            let k = format!("committed{i}");
            producer
                .send(BaseRecord::to(&out).key(&k).payload(&k))
                .unwrap();
        }
        producer
            .send_offsets_to_transaction(&position, &cgm, T)
            .unwrap();
        producer.commit_transaction(T).unwrap();
    })
    .await
    .unwrap();

    let read = |isolation: &'static str, n: usize| {
        let output = output.clone();
        async move {
            let mut cfg = consumer_config(&kafka_brokers(), "aifab-tests", &unique("reader"));
            cfg.set("isolation.level", isolation);
            let c: StreamConsumer = cfg.create().unwrap();
            c.subscribe(&[&output]).unwrap();
            let mut keys = Vec::new();
            while keys.len() < n {
                let m = tokio::time::timeout(T, c.recv())
                    .await
                    .expect("output arrives")
                    .unwrap();
                keys.push(String::from_utf8(m.key().unwrap().to_vec()).unwrap());
            }
            keys
        }
    };
    // Aborted records sit at lower offsets than committed ones: a reader that could see
    // them would get them first.
    let committed = read("read_committed", 5).await;
    assert_eq!(
        committed,
        (0..5).map(|i| format!("committed{i}")).collect::<Vec<_>>()
    );
    let uncommitted = read("read_uncommitted", 10).await;
    assert_eq!(
        uncommitted
            .iter()
            .filter(|k| k.starts_with("aborted"))
            .count(),
        5,
        "aborts were written"
    );

    // The input offsets were committed by the transaction, not by the consumer.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&input, 0);
    let committed_offsets = consumer.committed_offsets(tpl, T).unwrap();
    assert_eq!(committed_offsets.elements()[0].offset(), Offset::Offset(10));
    for t in [&input, &output] {
        delete_topic(t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_comes_from_committed_offsets_and_high_watermarks() {
    let topic = unique("lag");
    let group = unique("lag-g");
    create_topic(&topic, 3).await;
    let p: FutureProducer = producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    for (partition, count) in [(0, 10), (1, 20), (2, 30)] {
        for i in 0..count {
            let k = format!("{partition}-{i}");
            p.send(
                FutureRecord::to(&topic)
                    .partition(partition)
                    .key(&k)
                    .payload(&k),
                T,
            )
            .await
            .unwrap();
        }
    }
    // The group has read 5 of partition 0 and all of partition 1; never partition 2.
    let c: BaseConsumer = consumer_config(&kafka_brokers(), "aifab-tests", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5))
        .unwrap();
    tpl.add_partition_offset(&topic, 1, Offset::Offset(20))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();

    let (t2, missing) = (topic.clone(), unique("lag-missing"));
    let (lags, missing) = tokio::task::spawn_blocking(move || {
        (group_offsets(&c, &t2, T), group_offsets(&c, &missing, T))
    })
    .await
    .unwrap();
    let lags = lags.unwrap();
    let missing = missing.expect_err("a topic that does not exist has no offsets");
    assert!(
        missing.is::<aifab_core::kafka::TopicMissing>(),
        "the broker's answer, told apart: {missing:#}"
    );
    let by_partition: BTreeMap<i32, (Option<i64>, i64, i64)> = lags
        .iter()
        .map(|p| (p.partition, (p.committed, p.high_watermark, p.lag)))
        .collect();
    assert_eq!(by_partition[&0], (Some(5), 10, 5));
    assert_eq!(by_partition[&1], (Some(20), 20, 0));
    assert_eq!(by_partition[&2], (None, 30, 30));
    assert_eq!(lags.iter().map(|p| p.lag).sum::<i64>(), 35);
    delete_topic(&topic).await;
}

#[tokio::test]
async fn nats_request_reply_and_fan_out() {
    let client = async_nats::connect(nats_url())
        .await
        .expect("nats (is scripts/stack-up running?)");
    let subject = unique("svc");
    let mut responder = client.subscribe(subject.clone()).await.unwrap();
    let c2 = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = responder.next().await {
            if let Some(reply) = msg.reply {
                let body = format!("echo:{}", String::from_utf8_lossy(&msg.payload));
                c2.publish(reply, body.into()).await.unwrap();
            }
        }
    });
    let answer = tokio::time::timeout(T, client.request(subject, "ping".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer.payload[..], b"echo:ping");

    // Pub/sub fans out: every subscriber gets every message.
    let topic = unique("fan");
    let mut s1 = client.subscribe(topic.clone()).await.unwrap();
    let mut s2 = client.subscribe(topic.clone()).await.unwrap();
    client.flush().await.unwrap();
    for i in 0..3 {
        client
            .publish(topic.clone(), format!("e{i}").into())
            .await
            .unwrap();
    }
    for s in [&mut s1, &mut s2] {
        for i in 0..3 {
            let m = tokio::time::timeout(T, s.next()).await.unwrap().unwrap();
            assert_eq!(m.payload, format!("e{i}").as_bytes());
        }
    }
}

#[tokio::test]
async fn redis_round_trip() {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis (is scripts/stack-up running?)");
    let key = unique("k");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v1")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "v1");
    let n: i64 = redis::cmd("INCRBY")
        .arg(format!("{key}:n"))
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .arg(format!("{key}:n"))
        .query_async(&mut conn)
        .await
        .unwrap();
}
