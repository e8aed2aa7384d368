//! The run's report: the JSON file (`--json`) and the `key value` lines stdout ends with
//! (scripts and docs read both: keys and formats stay as they are).

use serde::Serialize;

use super::args::Scenario;
use super::step::Step;

#[derive(Serialize)]
pub(crate) struct Report<'a> {
    pub(crate) scenario: Scenario,
    pub(crate) arrivals: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) predictions_topic: &'a str,
    pub(crate) worker: String,
    pub(crate) steps: &'a [Step],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) saturation: Option<SaturationReport>,
}

#[derive(Serialize)]
pub(crate) struct SaturationReport {
    pub(crate) p99_target_ms: f64,
    /// Highest rate whose p99 stayed under the target with nothing lost (None: none did).
    pub(crate) max_rate: Option<f64>,
}

pub(crate) fn print_summary(steps: &[Step], sat: Option<&SaturationReport>) {
    if let Some(sat) = sat {
        for (k, s) in steps.iter().enumerate() {
            println!("step{k}_rate {:.1}", s.rate);
            println!("step{k}_p99_ms {:.1}", s.latency.p99_ms);
            println!("step{k}_throughput {:.1}", s.throughput);
            println!("step{k}_lost {}", s.lost);
            println!("step{k}_send_errors {}", s.send_errors);
        }
        println!("p99_target_ms {:.1}", sat.p99_target_ms);
        println!(
            "saturation_rate {}",
            sat.max_rate.map_or("none".into(), |r| format!("{r:.1}"))
        );
        return;
    }
    let s = &steps[0];
    println!(
        "scenario {}",
        serde_json::to_value(s.scenario)
            .unwrap()
            .as_str()
            .unwrap_or("?")
    );
    println!("offered_rate {:.1}", s.offered_rate);
    println!("requests {}", s.requests);
    println!("send_errors {}", s.send_errors);
    println!("throughput {:.1}", s.throughput);
    println!("p50_ms {:.1}", s.latency.p50_ms);
    println!("p90_ms {:.1}", s.latency.p90_ms);
    println!("p99_ms {:.1}", s.latency.p99_ms);
    println!("p999_ms {:.1}", s.latency.p999_ms);
    println!("max_ms {:.1}", s.latency.max_ms);
    println!("queue_p50_ms {:.1}", s.stages.queue.p50_ms);
    println!("compute_p50_ms {:.1}", s.stages.compute.p50_ms);
    println!(
        "commit_and_read_p50_ms {:.1}",
        s.stages.commit_and_read.p50_ms
    );
    if s.tenants.len() > 1 {
        for t in &s.tenants {
            println!("tenant_{}_requests {}", t.tenant, t.requests);
            println!("tenant_{}_p99_ms {:.1}", t.tenant, t.latency.p99_ms);
        }
    }
    println!("lost {}", s.lost);
    println!("duplicated {}", s.duplicated);
}
