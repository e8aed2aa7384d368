//! Every metric the cost accountant exports, by name. Call sites and tests use these
//! constants; [`ALL`] lists them for checks that dashboards only query metrics that exist.
//!
//! Money metrics carry the currency in their name (`..._usd`, Prometheus' convention of
//! units in names): those names are templates with [`CURRENCY`] where the lowercase
//! currency code goes; [`with_currency`] fills it in.

/// The placeholder in a money metric's name for the lowercase currency code.
pub const CURRENCY: &str = "{currency}";

/// Usage records consumed, by `result` (`charged`, `duplicate`, `invalid`).
pub const USAGE_RECORDS_TOTAL: &str = "aifab_cost_accountant_usage_records_total";
/// Budget threshold events published, by `kind` (`warning`, `exceeded`).
pub const BUDGET_EVENTS_TOTAL: &str = "aifab_cost_accountant_budget_events_total";
/// Share of a budget spent in the current period, by `tenant` and `period_kind`.
pub const BUDGET_USED_RATIO: &str = "aifab_cost_accountant_budget_used_ratio";
/// Spend in the current period, by `tenant` and `period_kind` (template).
pub const PERIOD_SPEND: &str = "aifab_cost_accountant_period_spend_{currency}";
/// A budget's amount, by `tenant` and `period_kind` (template).
pub const BUDGET: &str = "aifab_cost_accountant_budget_{currency}";
/// Spend per hour over the burn window, by `tenant` and `period_kind` (template).
pub const BURN_RATE_PER_HOUR: &str = "aifab_cost_accountant_burn_rate_{currency}_per_hour";

/// Every name above (money metrics as templates).
pub const ALL: &[&str] = &[
    USAGE_RECORDS_TOTAL,
    BUDGET_EVENTS_TOTAL,
    BUDGET_USED_RATIO,
    PERIOD_SPEND,
    BUDGET,
    BURN_RATE_PER_HOUR,
];

/// A money metric's name for `currency` (`USD` → `..._usd`).
pub fn with_currency(template: &str, currency: &str) -> String {
    template.replace(CURRENCY, &currency.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_valid() {
        // A template is valid once its currency is filled in.
        let filled: Vec<String> = ALL.iter().map(|n| with_currency(n, "USD")).collect();
        let filled: Vec<&str> = filled.iter().map(String::as_str).collect();
        let problems = aifab_core::telemetry::catalogue_problems("cost-accountant", &filled);
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(
            ALL.iter().any(|n| n.contains(CURRENCY)),
            "the money names are templates"
        );
    }

    #[test]
    fn money_names_carry_the_lowercase_currency() {
        assert_eq!(
            with_currency(PERIOD_SPEND, "USD"),
            "aifab_cost_accountant_period_spend_usd"
        );
        assert_eq!(
            with_currency(BURN_RATE_PER_HOUR, "EUR"),
            "aifab_cost_accountant_burn_rate_eur_per_hour"
        );
        assert_eq!(
            with_currency(USAGE_RECORDS_TOTAL, "USD"),
            USAGE_RECORDS_TOTAL
        );
    }
}
