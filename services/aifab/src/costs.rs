//! `aifab costs`: spend, idle share, budget, burn rate and cost per 1,000 predictions per
//! tenant (from the cost accountant's `GET /v1/costs`); `aifab costs budget` sets a
//! budget by publishing `budget.set/v1` on NATS `aifab.budget.set` (or `--http`: `POST
//! /v1/budgets`) and confirms it took.

use std::time::Duration;

use aifab_core::messages::{encode, tag, BudgetPeriod, BudgetSet};
use aifab_core::topics::subjects;
use anyhow::{bail, Context};
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct CostsArgs {
    #[command(subcommand)]
    pub command: Option<CostsCmd>,
    /// The cost accountant's HTTP address.
    #[arg(
        long,
        env = "AIFAB_COSTS_URL",
        default_value = "http://127.0.0.1:8085",
        global = true
    )]
    pub url: String,
    /// `day` or `month`.
    #[arg(long, default_value = "day")]
    pub period: String,
    /// The period to show: `YYYY-MM-DD` or `YYYY-MM` (default: the current one).
    #[arg(long)]
    pub date: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print the cost accountant's JSON as is.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CostsCmd {
    /// Set a tenant's budget for a period (`--tenant all`: the platform-wide budget, which
    /// the autoscaler caps workers by).
    Budget {
        #[arg(long)]
        tenant: String,
        /// `day` or `month`.
        #[arg(long, default_value = "month")]
        period: String,
        #[arg(long)]
        amount: f64,
        #[arg(long, default_value = "USD")]
        currency: String,
        /// NATS URL (the budget is published on `aifab.budget.set`).
        #[arg(long, env = "AIFAB_NATS_URL", default_value = aifab_core::config::DEFAULT_NATS_URL)]
        nats_url: String,
        /// POST it to the cost accountant instead of publishing it on NATS.
        #[arg(long)]
        http: bool,
    },
}

fn period_kind(s: &str) -> anyhow::Result<BudgetPeriod> {
    match s {
        "day" => Ok(BudgetPeriod::Day),
        "month" => Ok(BudgetPeriod::Month),
        other => bail!("--period {other:?}: expected day or month"),
    }
}

pub async fn run(args: CostsArgs) -> anyhow::Result<()> {
    // Setting a budget is an admin act; reading costs needs the read (or admin) token.
    let role = match &args.command {
        Some(CostsCmd::Budget { .. }) => aifab_core::access::Role::Admin,
        _ => aifab_core::access::Role::Read,
    };
    let client = aifab_core::access::http_client(role, Duration::from_secs(10))?;
    let base = args.url.trim_end_matches('/').to_string();
    match args.command.clone() {
        Some(CostsCmd::Budget {
            tenant,
            period,
            amount,
            currency,
            nats_url,
            http,
        }) => {
            let set = BudgetSet {
                schema: tag(),
                tenant,
                period: period_kind(&period)?,
                amount,
                currency,
                at_ms: aifab_core::now_ms(),
            };
            let json = serde_json::to_value(&set)?;
            if let Err(v) = aifab_core::schema::validate("budget.set/v1", &json) {
                bail!(
                    "{}",
                    v.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            if http {
                let resp = client
                    .post(format!("{base}/v1/budgets"))
                    .json(&json)
                    .send()
                    .await
                    .with_context(|| format!("POST {base}/v1/budgets"))?;
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!(
                        "the cost accountant refused the budget: {}",
                        body["error"].as_str().unwrap_or(&body.to_string())
                    );
                }
                println!(
                    "budget set: {} {} {} per {}",
                    set.tenant, set.amount, set.currency, period
                );
                return Ok(());
            }
            let nats = aifab_core::nats::connect_now(&nats_url, "cli").await?;
            nats.publish(subjects::BUDGET_SET, encode(&set).into())
                .await?;
            nats.flush().await?;
            println!(
                "published on {}: {} {} {} per {}",
                subjects::BUDGET_SET,
                set.tenant,
                set.amount,
                set.currency,
                period
            );
            // Confirm through the cost accountant, if it answers.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(resp) = client.get(format!("{base}/v1/budgets")).send().await {
                    if let Ok(list) = resp.json::<Vec<Value>>().await {
                        if list.iter().any(|b| {
                            b["tenant"] == set.tenant.as_str()
                                && b["period"] == period.as_str()
                                && b["amount"].as_f64() == Some(set.amount)
                        }) {
                            println!("the cost accountant has it");
                            return Ok(());
                        }
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    println!("not confirmed by the cost accountant at {base} within 5 s (is it running?)");
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        None => {
            period_kind(&args.period)?;
            let mut url = reqwest::Url::parse(&format!("{base}/v1/costs"))?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("period", &args.period);
                if let Some(d) = &args.date {
                    q.append_pair("date", d);
                }
                if let Some(t) = &args.tenant {
                    q.append_pair("tenant", t);
                }
            }
            let resp = client
                .get(url.clone())
                .send()
                .await
                .with_context(|| format!("GET {url} (is the cost accountant running?)"))?;
            let status = resp.status();
            let body: Value = resp
                .json()
                .await
                .context("the cost accountant's answer is not JSON")?;
            if !status.is_success() {
                bail!("{}", body["error"].as_str().unwrap_or(&body.to_string()));
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", render(&body));
            }
            Ok(())
        }
    }
}

fn money(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "-".into())
}

/// The report as a table.
pub fn render(r: &Value) -> String {
    let mut out = format!(
        "costs for {} ({}), {}\n\n{:<20} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
        r["period"].as_str().unwrap_or("?"),
        r["period_kind"].as_str().unwrap_or("?"),
        r["currency"].as_str().unwrap_or("?"),
        "TENANT / MODEL", "PREDICTIONS", "DIRECT", "IDLE", "TOTAL", "PER_1K", "BURN/H", "BUDGET", "REMAINING", "USED"
    );
    for t in r["tenants"].as_array().into_iter().flatten() {
        let used = t["budget_used"]
            .as_f64()
            .map(|u| format!("{:.0}%", u * 100.0))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
            t["tenant"].as_str().unwrap_or("?"),
            t["predictions"],
            money(&t["direct_cost"]),
            money(&t["idle_share"]),
            money(&t["total_cost"]),
            money(&t["cost_per_1k_predictions"]),
            money(&t["burn_rate_per_hour"]),
            money(&t["budget"]),
            money(&t["remaining"]),
            used
        ));
        for m in t["models"].as_array().into_iter().flatten() {
            let name = format!(
                "  {}@{} ({})",
                m["model"].as_str().unwrap_or("?"),
                m["model_version"].as_str().unwrap_or("?"),
                m["device_kind"].as_str().unwrap_or("?")
            );
            out.push_str(&format!(
                "{:<20} {:>11} {:>10}\n",
                name,
                m["predictions"],
                money(&m["cost"])
            ));
        }
    }
    let tot = &r["totals"];
    out.push_str(&format!(
        "{:<20} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "TOTAL",
        tot["predictions"],
        money(&tot["direct_cost"]),
        money(&tot["idle_cost"]),
        money(&tot["total_cost"]),
        money(&tot["cost_per_1k_predictions"]),
        money(&tot["burn_rate_per_hour"]),
        money(&tot["budget"]),
        money(&tot["remaining"])
    ));
    out.push_str(&format!(
        "\nidle: {:.1} worker-seconds ({} {}), shared out by direct cost\n",
        tot["idle_seconds"].as_f64().unwrap_or(0.0),
        money(&tot["idle_cost"]),
        r["currency"].as_str().unwrap_or("")
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_has_a_row_per_tenant_and_model() {
        let r = serde_json::json!({
            "period": "2026-11-29", "period_kind": "day", "currency": "USD",
            "totals": {
                "direct_cost": 3.0, "idle_cost": 1.0, "total_cost": 4.0, "predictions": 2000,
                "device_seconds": 1.0, "idle_seconds": 30.0, "tokens": 1,
                "cost_per_1k_predictions": 2.0, "burn_rate_per_hour": 0.5,
                "budget": 10.0, "remaining": 6.0
            },
            "tenants": [{
                "tenant": "acme", "direct_cost": 3.0, "idle_share": 1.0, "total_cost": 4.0,
                "predictions": 2000, "device_seconds": 1.0, "tokens": 1,
                "cost_per_1k_predictions": 2.0, "burn_rate_per_hour": 0.5,
                "budget": 5.0, "remaining": 1.0, "budget_used": 0.8,
                "models": [{
                    "model": "spam", "model_version": "v1", "device_kind": "cpu",
                    "device_seconds": 1.0, "tokens": 1, "predictions": 2000, "cost": 3.0
                }]
            }],
            "idle": []
        });
        let t = super::render(&r);
        assert!(t.contains("costs for 2026-11-29 (day), USD"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("acme") && l.contains("80%") && l.contains("4.0000")),
            "{t}"
        );
        assert!(t.contains("spam@v1 (cpu)"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("TOTAL") && l.contains("2000")),
            "{t}"
        );
    }
}
