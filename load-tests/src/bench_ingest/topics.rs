//! The run's own topics, created fresh for it and deleted after.

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};

use super::kafka::admin;

/// Every topic of one run, named `<run>.<role>`.
pub(crate) struct Topics {
    pub(crate) raw: String,
    pub(crate) features: String,
    pub(crate) inference: String,
    pub(crate) training: String,
    pub(crate) predictions: String,
    pub(crate) dlq: String,
    /// One message here readies the bare producer before its clock starts.
    pub(crate) warmup: String,
    pub(crate) relay_mid: String,
    pub(crate) relay_out: String,
}

impl Topics {
    pub(crate) fn new(run: &str) -> Self {
        let t = |role: &str| format!("{run}.{role}");
        Topics {
            raw: t("raw"),
            features: t("features"),
            inference: t("inference"),
            training: t("training"),
            predictions: t("predictions"),
            dlq: t("dlq"),
            warmup: t("warmup"),
            relay_mid: t("relay-mid"),
            relay_out: t("relay-out"),
        }
    }

    pub(crate) fn all(&self) -> [&str; 9] {
        [
            &self.raw,
            &self.features,
            &self.inference,
            &self.training,
            &self.predictions,
            &self.dlq,
            &self.warmup,
            &self.relay_mid,
            &self.relay_out,
        ]
    }

    /// Create them all: `partitions` each, the dead-letter topic one.
    pub(crate) async fn create(&self, brokers: &str, partitions: i32) -> anyhow::Result<()> {
        let new: Vec<NewTopic> = self
            .all()
            .iter()
            .map(|t| {
                let n = if *t == self.dlq { 1 } else { partitions };
                NewTopic::new(t, n, TopicReplication::Fixed(1))
            })
            .collect();
        for r in admin(brokers)?
            .create_topics(&new, &AdminOptions::new())
            .await?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
        Ok(())
    }

    /// Delete them all (best effort: the run's figures are already in).
    pub(crate) async fn delete(&self, brokers: &str) -> anyhow::Result<()> {
        let _ = admin(brokers)?
            .delete_topics(&self.all(), &AdminOptions::new())
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_belongs_to_the_run() {
        let t = Topics::new("bench.ingest.1-2");
        assert_eq!(t.raw, "bench.ingest.1-2.raw");
        assert_eq!(t.dlq, "bench.ingest.1-2.dlq");
        assert!(t.all().iter().all(|n| n.starts_with("bench.ingest.1-2.")));
        assert_eq!(t.all().len(), 9);
    }
}
