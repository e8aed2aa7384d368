//! Replication as configuration: `aifab topics ensure` creates topics with the
//! replication and `min.insync.replicas` it is given, and a service told to expect more
//! replicas than a topic has refuses to start, naming the topic and the setting. (The
//! single-broker stack can only hold one replica; the three-broker cluster's guarantees
//! are the broker-loss run's.)

use std::process::Stdio;
use std::time::Duration;

use aifab_tests::*;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_as_configured_and_a_service_refuses_too_few_replicas() {
    // `ensure` creates the missing (here: a private audit topic) with min ISR 1 as told.
    let audit = unique("audit");
    let mut ensure = Command::new(bin_path("aifab"));
    ensure
        .args(["topics", "ensure", "--audit-topic", &audit])
        .args([
            "--topic-replication-factor",
            "1",
            "--topic-min-insync-replicas",
            "1",
        ]);
    let out = run_ok(ensure, "aifab topics ensure", Duration::from_secs(60)).await;
    let line = out
        .lines()
        .find(|l| l.starts_with(&audit))
        .unwrap_or_else(|| panic!("{audit} not reported:\n{out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[1..], ["1", "1", "1", "ok"], "{line}");

    // Expecting three replicas of a one-replica topic: the check fails, and so does a
    // service using it, with the reason.
    let mut check = Command::new(bin_path("aifab"));
    check
        .args(["topics", "check", "--audit-topic", &audit])
        .env("AIFAB_TOPIC_REPLICATION_FACTOR", "3");
    let out = check.output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("REFUSED: replication factor 1, expected 3"),
        "{stdout}"
    );

    let usage = unique("usage");
    create_topic(&usage, 1).await;
    let id = unique("layout");
    let child = Command::new(bin_path("aifab-cost-accountant"))
        .env("AIFAB_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("AIFAB_USAGE_TOPIC", &usage)
        .env("AIFAB_AUDIT_TOPIC", &audit)
        .env("AIFAB_COST_GROUP", format!("{id}.costs"))
        .env("AIFAB_COST_REDIS_PREFIX", &id)
        .env("AIFAB_TOPIC_REPLICATION_FACTOR", "3")
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the service stops on a topic with too few replicas")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!("topic {usage}: replication factor 1, expected 3")),
        "the reason names the topic and the setting:\n{log}"
    );
    delete_topic(&usage).await;
    delete_topic(&audit).await;
}
