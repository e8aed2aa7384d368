//! The cost accountant's HTTP API: `GET /v1/costs`, `GET /v1/budgets` and
//! `POST /v1/budgets`.

use aifab_core::messages::{tag, Actor, BudgetPeriod, BudgetSet};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use crate::app::{ApiError, App};
use crate::report::CostQuery;

/// Body of `POST /v1/budgets`: a `budget.set/v1` message, or the same without `schema`
/// and `at_ms` (currency defaults to the accountant's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    #[serde(default)]
    schema: Option<String>,
    tenant: String,
    period: BudgetPeriod,
    amount: f64,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    at_ms: Option<i64>,
}

/// `GET /v1/costs` and `GET /v1/budgets` (read), `POST /v1/budgets` (admin).
pub(crate) fn router(svc: &aifab_core::service::Service, app: App) -> Router {
    use aifab_core::access::Role;
    svc.require(Role::Read, reads(app.clone()))
        .merge(svc.require(Role::Admin, writes(app)))
}

fn reads(app: App) -> Router {
    Router::new()
        .route(
            "/v1/costs",
            get(
                |State(app): State<App>, Query(q): Query<CostQuery>| async move {
                    app.report(&q).await.map(Json)
                },
            ),
        )
        .route(
            "/v1/budgets",
            get(|State(app): State<App>| async move {
                let mut conn = app.conn().await?;
                Ok::<_, ApiError>(Json(app.store.budgets(&mut conn).await?))
            }),
        )
        .with_state(app)
}

fn writes(app: App) -> Router {
    Router::new()
        .route(
            "/v1/budgets",
            post(
                |State(app): State<App>,
                 Extension(actor): Extension<Actor>,
                 body: axum::body::Bytes| async move {
                    let b: BudgetBody = serde_json::from_slice(&body).map_err(|e| {
                        ApiError(StatusCode::BAD_REQUEST, format!("budget body: {e}"))
                    })?;
                    if let Some(s) = &b.schema {
                        if s != "budget.set/v1" {
                            return Err(ApiError(
                                StatusCode::BAD_REQUEST,
                                format!("schema: expected \"budget.set/v1\", found \"{s}\""),
                            ));
                        }
                    }
                    let set = BudgetSet {
                        schema: tag(),
                        tenant: b.tenant,
                        period: b.period,
                        amount: b.amount,
                        currency: b.currency.unwrap_or_else(|| app.prices.currency.clone()),
                        at_ms: b.at_ms.unwrap_or_else(aifab_core::now_ms),
                    };
                    app.set_budget(set, actor).await.map(Json)
                },
            ),
        )
        .with_state(app)
}
