//! A sequence of NATS messages to the autoscaler (lines; a line's first byte picks lag
//! reading, budget event or replica report): each decoded one goes through the live
//! controller and its policy, as `aifab-autoscaler` does, which must never panic.
#![no_main]

use aifab_autoscaler::policy::{PolicyConfig, PolicyKind};
use aifab_autoscaler::Controller;
use aifab_core::messages::{decode, BudgetEvent, LagReading, ReplicaReport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, rest)) = data.split_first() else { return };
    let policy = if kind % 2 == 0 { PolicyKind::Aifab } else { PolicyKind::Keda };
    let mut ctl = Controller::new("inference-worker", PolicyConfig::new(policy), "all", 600_000, None);
    let mut now_ms = 1_796_083_200_000i64;
    for line in rest.split(|b| *b == b'\n').take(64) {
        let Some((which, payload)) = line.split_first() else { continue };
        now_ms += 5_000;
        match which % 3 {
            0 => {
                if let Ok(r) = decode::<LagReading>(payload) {
                    let _ = ctl.on_lag(&r, now_ms);
                }
            }
            1 => {
                if let Ok(e) = decode::<BudgetEvent>(payload) {
                    ctl.budget.observe(e);
                }
            }
            _ => {
                if let Ok(r) = decode::<ReplicaReport>(payload) {
                    ctl.current = Some(r.replicas);
                }
            }
        }
    }
});
