//! The dashboard's control-plane inputs from NATS: the autoscaler's scale decisions and
//! replica reports, and the cost accountant's budget reports.

use aifab_core::messages::{decode, BudgetEvent, ReplicaReport, ScaleDecision};
use aifab_core::topics::subjects;
use anyhow::Context;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::state::SharedState;

/// The dashboard's control-plane inputs: scale decisions, replica reports, budget reports.
pub(crate) async fn listen_control(
    nats: async_nats::Client,
    shared: SharedState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let subscribe = |subject: &'static str| {
        let nats = nats.clone();
        async move {
            nats.subscribe(subject)
                .await
                .with_context(|| format!("subscribing to {subject}"))
        }
    };
    let mut scale = subscribe(subjects::SCALE_ALL).await?;
    let mut replicas = subscribe(subjects::REPLICAS_ALL).await?;
    let mut budget = subscribe(subjects::BUDGET_ALL).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(m) = scale.next() => match decode::<ScaleDecision>(&m.payload) {
                Ok(d) => shared.lock().expect("stats lock").dash.on_decision(d),
                Err(e) => tracing::debug!(subject = %m.subject, error = %e,
                    "undecodable scale decision"),
            },
            Some(m) = replicas.next() => match decode::<ReplicaReport>(&m.payload) {
                Ok(r) => shared.lock().expect("stats lock").dash.on_replicas(r),
                Err(e) => tracing::debug!(subject = %m.subject, error = %e,
                    "undecodable replica report"),
            },
            Some(m) = budget.next() => {
                // `aifab.budget.set` shares the wildcard; only reports are budget events.
                if m.subject.as_str() == subjects::BUDGET_SET {
                    continue;
                }
                match decode::<BudgetEvent>(&m.payload) {
                    Ok(e) => shared.lock().expect("stats lock").dash.on_budget(e),
                    Err(e) => tracing::debug!(subject = %m.subject, error = %e,
                        "undecodable budget report"),
                }
            }
            else => anyhow::bail!(
                "the NATS subscriptions to scale, replica and budget events ended"
            ),
        }
    }
}
