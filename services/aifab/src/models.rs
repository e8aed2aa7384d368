//! `aifab models`: list, show, promote and roll back registry versions. Promotions and
//! rollbacks are announced on NATS, so workers following `production` switch at once;
//! every change is first recorded on the audit topic with the operator's name.

use aifab_core::audit::{AuditLog, Change};
use aifab_core::messages::{Actor, AuditAction, Credential, ModelEventKind};
use aifab_core::registry::{
    promotion_gate, GateDecision, Registry, Rollout, CANDIDATE, PRODUCTION,
};
use aifab_trainer::service::publish_event;
use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCmd,
    // The connection flags of `BrokerArgs`, global here so they may follow the verb
    // (`aifab models list --redis-url ...`); clap cannot make flattened flags global.
    /// Redis, where the model registry lives.
    #[arg(
        long,
        env = "AIFAB_REDIS_URL",
        default_value = aifab_core::config::DEFAULT_REDIS_URL,
        global = true
    )]
    pub redis_url: String,
    /// NATS, where promotions and rollbacks are announced to the workers.
    #[arg(
        long,
        env = "AIFAB_NATS_URL",
        default_value = aifab_core::config::DEFAULT_NATS_URL,
        global = true
    )]
    pub nats_url: String,
    /// Kafka, for the audit record of a promotion, rollout or rollback.
    #[arg(
        long,
        env = "AIFAB_KAFKA_BROKERS",
        default_value = aifab_core::config::DEFAULT_KAFKA_BROKERS,
        global = true
    )]
    pub kafka_brokers: String,
    /// The audit topic.
    #[arg(long, env = "AIFAB_AUDIT_TOPIC", default_value = aifab_core::topics::AUDIT.name,
        global = true)]
    pub audit_topic: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCmd {
    /// Every version of every task (or one task), with metrics and aliases.
    List {
        #[arg(long)]
        task: Option<String>,
    },
    /// One version's registry record as JSON.
    Show {
        task: String,
        #[arg(value_name = "VERSION")]
        model_version: String,
    },
    /// Make a version production (the candidate when no version is given). The promotion
    /// gate applies unless --force.
    Promote {
        task: String,
        #[arg(value_name = "VERSION")]
        model_version: Option<String>,
        /// Skip the macro-F1 gate.
        #[arg(long)]
        force: bool,
        /// Allowed macro-F1 drop against production.
        #[arg(long, default_value_t = 0.01)]
        tolerance: f64,
    },
    /// Give the candidate traffic: a canary share of requests (stable by request id), or
    /// shadow (computed and recorded for every request, never served), or none.
    Rollout {
        task: String,
        /// Share of requests (0..1) the candidate serves.
        #[arg(long, conflicts_with_all = ["shadow", "off"])]
        canary: Option<f64>,
        /// Compute the candidate on every request without serving it.
        #[arg(long, conflicts_with = "off")]
        shadow: bool,
        /// Stop giving the candidate traffic.
        #[arg(long)]
        off: bool,
    },
    /// Point production back at the previous production version (or --to VERSION).
    Rollback {
        task: String,
        #[arg(long)]
        to: Option<String>,
    },
}

pub async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let client = aifab_core::redis_store::client(&args.redis_url)?;
    let conn = client.get_connection_manager().await.with_context(|| {
        format!(
            "connecting to Redis at {} (is the stack up?)",
            aifab_core::secret::redact_url(&args.redis_url)
        )
    })?;
    let mut registry = Registry::new(conn);
    // Written before the change; a change the audit log cannot take is not made.
    let record_change = |action: AuditAction, task: &str, version: Option<&str>, detail: String| {
        let log = AuditLog::with_topic(&args.kafka_brokers, "aifab", &args.audit_topic);
        let actor = Actor {
            credential: Credential::Operator,
            address: None,
            name: aifab_core::audit::operator_name(),
        };
        let mut change = Change::new(action, actor, detail).task(task);
        change.version = version.map(String::from);
        async move {
            log?.record(change)
                .await
                .context("nothing changed: every change is recorded on the audit log first")
        }
    };
    match args.command {
        ModelsCmd::List { task } => {
            let tasks = match task {
                Some(t) => vec![t],
                None => registry.tasks().await?,
            };
            println!(
                "{:<20} {:<8} {:<10} {:<10} {:<8} ALIASES",
                "TASK", "VERSION", "ACCURACY", "MACRO_F1", "EXAMPLES"
            );
            for t in tasks {
                let production = registry.alias(&t, PRODUCTION).await?;
                let candidate = registry.alias(&t, CANDIDATE).await?;
                for r in registry.list(&t).await? {
                    let mut aliases = Vec::new();
                    if production.as_deref() == Some(&r.version) {
                        aliases.push(PRODUCTION);
                    }
                    if candidate.as_deref() == Some(&r.version) {
                        aliases.push(CANDIDATE);
                    }
                    println!(
                        "{:<20} {:<8} {:<10.4} {:<10.4} {:<8} {}",
                        t,
                        r.version,
                        r.metrics.get("accuracy").copied().unwrap_or(f64::NAN),
                        r.metrics.get("macro_f1").copied().unwrap_or(f64::NAN),
                        r.train_examples,
                        aliases.join(",")
                    );
                }
            }
        }
        ModelsCmd::Show {
            task,
            model_version: version,
        } => {
            let r = registry
                .get(&task, &version)
                .await?
                .with_context(|| format!("{task} has no version {version}"))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        ModelsCmd::Promote {
            task,
            model_version: version,
            force,
            tolerance,
        } => {
            let version = match version {
                Some(v) => v,
                None => registry
                    .alias(&task, CANDIDATE)
                    .await?
                    .with_context(|| format!("{task} has no candidate"))?,
            };
            let record = registry
                .get(&task, &version)
                .await?
                .with_context(|| format!("{task} has no version {version}"))?;
            if !force {
                let prod_f1 = registry
                    .resolve(&task, PRODUCTION)
                    .await?
                    .and_then(|p| p.metrics.get("macro_f1").copied());
                let f1 = record.metrics.get("macro_f1").copied().unwrap_or(0.0);
                if let GateDecision::Reject { reason } = promotion_gate(f1, prod_f1, tolerance, 0.0)
                {
                    anyhow::bail!("not promoted: {reason} (use --force to override)");
                }
            }
            let how = if force { "forced" } else { "gate passed" };
            let detail = format!("promoted by an operator ({how})");
            record_change(AuditAction::ModelPromoted, &task, Some(&version), detail).await?;
            registry.set_production(&task, &version).await?;
            publish(&args.nats_url, ModelEventKind::Promoted, &record).await?;
            println!("{task}: production is now {version}");
        }
        ModelsCmd::Rollout {
            task,
            canary,
            shadow,
            off,
        } => {
            let rollout = match (canary, shadow, off) {
                (Some(share), false, false) => {
                    anyhow::ensure!(
                        (0.0..=1.0).contains(&share),
                        "--canary takes a share between 0 and 1, found {share}"
                    );
                    Rollout::Canary { share }
                }
                (None, true, false) => Rollout::Shadow,
                (None, false, true) => Rollout::Off,
                _ => anyhow::bail!("give one of --canary SHARE, --shadow or --off"),
            };
            if rollout != Rollout::Off {
                registry
                    .alias(&task, CANDIDATE)
                    .await?
                    .with_context(|| format!("{task} has no candidate to roll out"))?;
            }
            let detail = format!("candidate rollout {}", serde_json::to_string(&rollout)?);
            record_change(AuditAction::RolloutSet, &task, None, detail).await?;
            registry.set_rollout(&task, rollout).await?;
            println!(
                "{task}: candidate rollout is now {}",
                serde_json::to_string(&rollout)?
            );
        }
        ModelsCmd::Rollback { task, to } => {
            let target = match &to {
                Some(v) => v.clone(),
                None => registry
                    .previous_production(&task)
                    .await?
                    .with_context(|| {
                        format!("{task} has no earlier production version to roll back to")
                    })?,
            };
            let record = registry
                .get(&task, &target)
                .await?
                .with_context(|| format!("{task} has no version {target}"))?;
            let detail = format!("production back to {target}");
            record_change(AuditAction::ModelRolledBack, &task, Some(&target), detail).await?;
            let moved = registry.rollback_to(&task, &target, to.is_none()).await?;
            if !moved {
                // The log already says it was asked for; say that it did not happen.
                let detail =
                    format!("NOT APPLIED: production back to {target} (the history changed)");
                if let Err(e) =
                    record_change(AuditAction::ModelRolledBack, &task, Some(&target), detail).await
                {
                    eprintln!("warning: could not record that the rollback was not applied: {e:#}");
                }
                anyhow::bail!(
                    "{task}: production was not moved: the rollback history changed since it was \
                     read (another rollback or a promotion); check `aifab models list` first"
                );
            }
            publish(&args.nats_url, ModelEventKind::RolledBack, &record)
                .await
                .context(
                    "production moved, but the announcement failed: workers follow it within \
                          their registry check (AIFAB_MODEL_RECONCILE_S, 5 s by default)",
                )?;
            println!("{task}: production rolled back to {target}");
        }
    }
    Ok(())
}

async fn publish(
    nats_url: &str,
    kind: ModelEventKind,
    record: &aifab_core::registry::ModelRecord,
) -> anyhow::Result<()> {
    let nats = aifab_core::nats::connect_now(nats_url, "cli").await?;
    publish_event(&nats, kind, record, Some(PRODUCTION)).await
}
