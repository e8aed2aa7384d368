//! `aifab topics`: create aifab's topics with the deployment's replication, and check
//! the ones that exist (the check every service makes at start, for all topics at once).

use aifab_core::config::BrokerArgs;
use aifab_core::kafka::{self, Finding, Replication};
use aifab_core::topics::TOPICS;

#[derive(Debug, clap::Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    pub command: TopicsCmd,
}

/// Each verb takes Kafka, the audit topic's name and the replication expected
/// (`--topic-replication-factor`, `--topic-min-insync-replicas`; unset: the brokers').
#[derive(Debug, clap::Subcommand)]
pub enum TopicsCmd {
    /// Create every aifab topic that is missing (partitions from topics.rs, replication as
    /// set), then check them all.
    Ensure(BrokerArgs),
    /// Check every aifab topic: exit status 1 if one is missing or would lose data on a
    /// broker loss or refuse writes.
    Check(BrokerArgs),
}

/// One topic's line in the report.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicReport {
    pub name: String,
    pub partitions: Option<usize>,
    pub replicas: Option<usize>,
    pub min_insync: Option<i32>,
    pub findings: Vec<Finding>,
    pub missing: bool,
}

impl TopicReport {
    pub fn ok(&self) -> bool {
        !self.missing && !self.findings.iter().any(Finding::refuses)
    }
}

pub async fn run(args: TopicsArgs) -> anyhow::Result<bool> {
    let (b, create) = match &args.command {
        TopicsCmd::Ensure(b) => (b, true),
        TopicsCmd::Check(b) => (b, false),
    };
    let replication = b.replication();
    let names: Vec<(String, i32)> = TOPICS
        .iter()
        .map(|t| {
            // The audit topic may be renamed; the others are the services' defaults.
            let name = if t.name == aifab_core::topics::AUDIT.name {
                b.audit_topic.clone()
            } else {
                t.name.to_string()
            };
            (name, t.partitions)
        })
        .collect();
    if create {
        let list: Vec<(&str, i32)> = names.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        kafka::ensure_topics(&b.kafka_brokers, &list, replication).await?;
    }
    let mut reports = Vec::new();
    for (name, partitions) in &names {
        reports.push(report(&b.kafka_brokers, name, *partitions, replication).await?);
    }
    print!("{}", render(&reports));
    Ok(reports.iter().all(TopicReport::ok))
}

async fn report(
    brokers: &str,
    name: &str,
    partitions: i32,
    replication: Replication,
) -> anyhow::Result<TopicReport> {
    Ok(match kafka::describe(brokers, name).await? {
        None => TopicReport {
            name: name.to_string(),
            partitions: None,
            replicas: None,
            min_insync: None,
            findings: Vec::new(),
            missing: true,
        },
        Some(layout) => TopicReport {
            name: name.to_string(),
            partitions: Some(layout.replicas.len()),
            replicas: layout.replicas.iter().copied().min(),
            min_insync: layout.min_insync,
            findings: kafka::assess(&layout, replication, Some(partitions)),
            missing: false,
        },
    })
}

/// A table: topic, partitions, replicas, min ISR, and what is wrong.
pub fn render(reports: &[TopicReport]) -> String {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{:<28} {:>10} {:>8} {:>7}  {}\n",
        "TOPIC", "PARTITIONS", "REPLICAS", "MIN_ISR", "STATE"
    );
    for r in reports {
        let state = if r.missing {
            "missing (aifab topics ensure creates it)".to_string()
        } else if r.findings.is_empty() {
            "ok".to_string()
        } else {
            let said: Vec<String> = r
                .findings
                .iter()
                .map(|f| {
                    let level = if f.refuses() { "REFUSED" } else { "warning" };
                    format!("{level}: {f}")
                })
                .collect();
            said.join("; ")
        };
        out.push_str(&format!(
            "{:<28} {:>10} {:>8} {:>7}  {}\n",
            r.name,
            dash(r.partitions.map(|p| p.to_string())),
            dash(r.replicas.map(|p| p.to_string())),
            dash(r.min_insync.map(|p| p.to_string())),
            state
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_is_refused_and_what_only_warns() {
        let base = TopicReport {
            name: "aifab.predictions".into(),
            partitions: Some(4),
            replicas: Some(3),
            min_insync: Some(2),
            findings: Vec::new(),
            missing: false,
        };
        let warned = TopicReport {
            name: "aifab.usage".into(),
            findings: vec![Finding::PartitionsDiffer {
                expected: 4,
                found: 8,
            }],
            ..base.clone()
        };
        let refused = TopicReport {
            name: "aifab.dlq".into(),
            replicas: Some(1),
            findings: vec![Finding::ReplicationBelow {
                expected: 3,
                found: 1,
            }],
            ..base.clone()
        };
        let missing = TopicReport {
            name: "aifab.audit".into(),
            partitions: None,
            replicas: None,
            min_insync: None,
            missing: true,
            ..base.clone()
        };
        assert!(base.ok() && warned.ok());
        assert!(!refused.ok() && !missing.ok());
        let t = render(&[base, warned, refused, missing]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].ends_with(" ok"), "{t}");
        assert!(lines[2].contains("warning: 8 partitions"), "{t}");
        assert!(
            lines[3].contains("REFUSED: replication factor 1, expected 3"),
            "{t}"
        );
        assert!(lines[4].contains("missing"), "{t}");
    }
}
