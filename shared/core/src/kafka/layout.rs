//! Topic layout: replication factor, `min.insync.replicas` and partitions, as configured
//! against what the cluster has.
//!
//! A topic with fewer replicas than the deployment asked for loses data when a broker
//! dies, and one whose `min.insync.replicas` exceeds its replicas refuses every
//! `acks=all` write: both are refused at start (the service exits with the reason). A
//! partition count other than `topics.rs`'s only changes how far workers can scale: a
//! warning. Where the deployment sets nothing, the brokers' defaults apply and only the
//! topic's own consistency is checked.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;

use super::base_config;

/// What the deployment expects of every topic (`None`: the brokers' defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replication {
    pub factor: Option<i32>,
    pub min_insync: Option<i32>,
}

/// A topic as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub name: String,
    /// Replicas of each partition, in partition order.
    pub replicas: Vec<usize>,
    /// The topic's `min.insync.replicas` (its own or the broker default).
    pub min_insync: Option<i32>,
}

/// One way a topic differs from what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Fewer replicas than configured on some partition: a broker loss loses data.
    ReplicationBelow { expected: i32, found: usize },
    /// More replicas than configured (a reassignment in progress lists old and new).
    ReplicationAbove { expected: i32, found: usize },
    /// `min.insync.replicas` other than configured.
    MinInsyncDiffers { expected: i32, found: Option<i32> },
    /// `min.insync.replicas` above the replicas: every `acks=all` write fails.
    MinInsyncAboveReplicas { min_insync: i32, replicas: usize },
    /// Another partition count than `topics.rs` creates.
    PartitionsDiffer { expected: i32, found: usize },
}

impl Finding {
    /// Whether the service must not start with it (the others are warnings).
    pub fn refuses(&self) -> bool {
        !matches!(
            self,
            Finding::PartitionsDiffer { .. } | Finding::ReplicationAbove { .. }
        )
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::ReplicationBelow { expected, found }
            | Finding::ReplicationAbove { expected, found } => write!(
                f,
                "replication factor {found}, expected {expected} \
                 (AIFAB_TOPIC_REPLICATION_FACTOR)"
            ),
            Finding::MinInsyncDiffers { expected, found } => write!(
                f,
                "min.insync.replicas {}, expected {expected} (AIFAB_TOPIC_MIN_INSYNC_REPLICAS)",
                found.map_or("unknown".to_string(), |v| v.to_string())
            ),
            Finding::MinInsyncAboveReplicas {
                min_insync,
                replicas,
            } => write!(
                f,
                "min.insync.replicas {min_insync} is above its {replicas} replicas: every \
                 acks=all write would fail"
            ),
            Finding::PartitionsDiffer { expected, found } => write!(
                f,
                "{found} partitions, topics.rs creates {expected} (workers scale up to the \
                 partition count)"
            ),
        }
    }
}

/// How `layout` differs from `expected` (and from `partitions`, where given). Pure.
pub fn assess(
    layout: &TopicLayout,
    expected: Replication,
    partitions: Option<i32>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let fewest = layout.replicas.iter().copied().min().unwrap_or(0);
    if let Some(factor) = expected.factor {
        let most = layout.replicas.iter().copied().max().unwrap_or(0);
        if !layout.replicas.is_empty() && (fewest as i32) < factor {
            out.push(Finding::ReplicationBelow {
                expected: factor,
                found: fewest,
            });
        } else if most as i32 > factor {
            out.push(Finding::ReplicationAbove {
                expected: factor,
                found: most,
            });
        }
    }
    if let Some(min) = expected.min_insync {
        if layout.min_insync != Some(min) {
            out.push(Finding::MinInsyncDiffers {
                expected: min,
                found: layout.min_insync,
            });
        }
    }
    if let Some(min) = layout.min_insync {
        if !layout.replicas.is_empty() && min as usize > fewest {
            out.push(Finding::MinInsyncAboveReplicas {
                min_insync: min,
                replicas: fewest,
            });
        }
    }
    if let Some(expected) = partitions {
        if layout.replicas.len() as i32 != expected {
            out.push(Finding::PartitionsDiffer {
                expected,
                found: layout.replicas.len(),
            });
        }
    }
    out
}

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    base_config(brokers, "aifab-admin")
        .create()
        .context("creating the Kafka admin client")
}

/// The layout of `topic`, or `None` when the cluster does not have it (any other error,
/// e.g. no DESCRIBE permission, is an error).
pub async fn describe(brokers: &str, topic: &str) -> anyhow::Result<Option<TopicLayout>> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    let replicas = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Vec<usize>>> {
        let client = super::metadata_client(&b, "aifab-admin")?;
        let md = client
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .with_context(|| format!("metadata of {t}"))?;
        let Some(mt) = md.topics().iter().find(|x| x.name() == t) else {
            return Ok(None);
        };
        match mt.error().map(RDKafkaErrorCode::from) {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Some(code) => anyhow::bail!("metadata of {t}: {code}"),
            None if mt.partitions().is_empty() => return Ok(None),
            None => {}
        }
        let mut parts: Vec<_> = mt.partitions().iter().collect();
        parts.sort_by_key(|p| p.id());
        Ok(Some(parts.iter().map(|p| p.replicas().len()).collect()))
    })
    .await
    .context("metadata task")??;
    let Some(replicas) = replicas else {
        return Ok(None);
    };
    let admin = admin(brokers)?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
        .await
        .with_context(|| format!("the configuration of {topic}"));
    drop_off_runtime(admin);
    let configs = configs?;
    let min_insync = match configs.into_iter().next() {
        Some(Ok(c)) => c
            .entries
            .iter()
            .find(|e| e.name == "min.insync.replicas")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse().ok()),
        Some(Err(code)) => anyhow::bail!("describing the configuration of {topic}: {code}"),
        None => None,
    };
    Ok(Some(TopicLayout {
        name: topic.to_string(),
        replicas,
        min_insync,
    }))
}

/// Create `topics` (name, partitions) that do not exist yet with `replication` (the
/// brokers' defaults where unset); existing ones are left as they are.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[(&str, i32)],
    replication: Replication,
) -> anyhow::Result<()> {
    let admin = admin(brokers)?;
    let min_insync = replication.min_insync.map(|m| m.to_string());
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|&(name, partitions)| {
            // -1: the broker's default.replication.factor.
            let rf = TopicReplication::Fixed(replication.factor.unwrap_or(-1));
            let t = NewTopic::new(name, partitions, rf);
            match &min_insync {
                Some(m) => t.set("min.insync.replicas", m),
                None => t,
            }
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await;
    drop_off_runtime(admin);
    for r in results? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Dropping an admin client joins its polling thread: not on an async worker thread.
fn drop_off_runtime(admin: AdminClient<DefaultClientContext>) {
    tokio::task::spawn_blocking(move || drop(admin));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(replicas: Vec<usize>, min_insync: Option<i32>) -> TopicLayout {
        TopicLayout {
            name: "aifab.predictions".into(),
            replicas,
            min_insync,
        }
    }

    #[test]
    fn nothing_configured_checks_only_the_topic_s_own_consistency() {
        let none = Replication::default();
        assert!(assess(&layout(vec![1; 4], Some(1)), none, None).is_empty());
        let f = assess(&layout(vec![1; 4], Some(2)), none, None);
        assert_eq!(
            f,
            vec![Finding::MinInsyncAboveReplicas {
                min_insync: 2,
                replicas: 1
            }]
        );
        assert!(f[0].refuses() && f[0].to_string().contains("every acks=all write"));
    }

    #[test]
    fn fewer_replicas_or_another_min_isr_than_configured_are_refused() {
        let want = Replication {
            factor: Some(3),
            min_insync: Some(2),
        };
        assert!(assess(&layout(vec![3; 4], Some(2)), want, Some(4)).is_empty());
        let f = assess(&layout(vec![3, 3, 1, 3], Some(1)), want, Some(4));
        assert_eq!(
            f,
            vec![
                Finding::ReplicationBelow {
                    expected: 3,
                    found: 1
                },
                Finding::MinInsyncDiffers {
                    expected: 2,
                    found: Some(1)
                },
            ]
        );
        assert!(f.iter().all(Finding::refuses));
        assert!(f[0]
            .to_string()
            .contains("replication factor 1, expected 3"));
    }

    #[test]
    fn more_replicas_than_configured_is_only_a_warning() {
        // A reassignment lists the old and the new replicas until it completes.
        let want = Replication {
            factor: Some(3),
            min_insync: None,
        };
        let f = assess(&layout(vec![3, 4, 3], Some(2)), want, None);
        assert_eq!(
            f,
            vec![Finding::ReplicationAbove {
                expected: 3,
                found: 4
            }]
        );
        assert!(!f[0].refuses());
    }

    #[test]
    fn another_partition_count_is_only_a_warning() {
        let f = assess(&layout(vec![1; 8], None), Replication::default(), Some(4));
        assert_eq!(
            f,
            vec![Finding::PartitionsDiffer {
                expected: 4,
                found: 8
            }]
        );
        assert!(!f[0].refuses());
    }
}
