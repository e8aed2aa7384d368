//! Which arm computes each row of a batch under a rollout. Pure: tested without a model.

use aifab_core::registry::{canary_arm, Rollout};

/// Row indices per arm. Every live row is computed by production or by the canary, and
/// under shadow also by the candidate (recorded, never served).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routing {
    pub production: Vec<usize>,
    pub canary: Vec<usize>,
    pub shadow: Vec<usize>,
}

/// Route `live` rows (index, request id) given the candidate's rollout, if there is a
/// candidate. A canary's share is chosen by a stable hash of the request id, so a retried
/// request lands on the same arm.
pub fn route<'a>(
    live: impl IntoIterator<Item = (usize, &'a str)>,
    rollout: Option<&Rollout>,
) -> Routing {
    let mut r = Routing::default();
    for (i, id) in live {
        match rollout {
            Some(Rollout::Canary { share }) if canary_arm(id, *share) => r.canary.push(i),
            Some(Rollout::Shadow) => {
                r.production.push(i);
                r.shadow.push(i);
            }
            _ => r.production.push(i),
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("req-{i}")).collect()
    }

    fn live(ids: &[String]) -> impl Iterator<Item = (usize, &str)> {
        ids.iter().enumerate().map(|(i, s)| (i, s.as_str()))
    }

    #[test]
    fn without_a_serving_candidate_production_computes_every_row() {
        let ids = ids(5);
        for rollout in [
            None,
            Some(&Rollout::Off),
            Some(&Rollout::Canary { share: 0.0 }),
        ] {
            let r = route(live(&ids), rollout);
            assert_eq!(r.production, vec![0, 1, 2, 3, 4], "{rollout:?}");
            assert!(r.canary.is_empty() && r.shadow.is_empty(), "{rollout:?}");
        }
    }

    #[test]
    fn a_canary_takes_its_share_by_request_id_and_the_rest_stay_production() {
        let ids = ids(2_000);
        let r = route(live(&ids), Some(&Rollout::Canary { share: 0.25 }));
        assert_eq!(r.canary.len() + r.production.len(), 2_000);
        assert!((400..600).contains(&r.canary.len()), "{}", r.canary.len());
        assert!(r.shadow.is_empty());
        let again = route(live(&ids), Some(&Rollout::Canary { share: 0.25 }));
        assert_eq!(again, r, "the same ids go to the same arms");
        let all = route(live(&ids), Some(&Rollout::Canary { share: 1.0 }));
        assert_eq!(all.canary.len(), 2_000);
    }

    #[test]
    fn shadow_computes_every_row_twice_and_serves_production() {
        let ids = ids(3);
        let r = route(live(&ids), Some(&Rollout::Shadow));
        assert_eq!(r.production, vec![0, 1, 2]);
        assert_eq!(r.shadow, vec![0, 1, 2]);
        assert!(r.canary.is_empty());
    }
}
