//! Arrival traces for the simulator: a rate of requests per second for every second of
//! the simulated time, from one of
//!
//! - `synthetic`: a diurnal curve (one day over the duration) with random bursts;
//! - the GenAI GPU-utilisation CSV (`timestamp_anon,container_ip,gpu_util_pct`, samples
//!   every 57 s): the containers' utilisation summed per timestamp is the load shape;
//! - the v2023 pod list (JSONL or CSV with `creation_time`): every pod created in the
//!   snapshot window is a burst of requests (its GPUs' worth) arriving over `burst_s`,
//!   the window compressed to the duration — a bursty arrival process.
//!
//! The format is detected from the file's first line. Every trace is scaled so that its
//! busiest minute averages `peak_rps`.

use std::path::Path;

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    Synthetic,
    GpuUtil,
    Pods,
}

impl TraceKind {
    pub fn describe(self) -> &'static str {
        match self {
            TraceKind::Synthetic => "synthetic diurnal load with bursts",
            TraceKind::GpuUtil => "GenAI GPU-utilisation series as the load shape",
            TraceKind::Pods => "v2023 pod arrivals as request bursts",
        }
    }
}

/// Options that shape a trace into arrivals.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Arrivals per second in the busiest minute.
    pub peak_rps: f64,
    /// Simulated seconds (default: the trace's own span; synthetic and pods: one day).
    pub duration_s: Option<u64>,
    /// Pods: seconds a pod's burst lasts.
    pub burst_s: f64,
    pub seed: u64,
}

/// A trace as arrival rates per second.
#[derive(Debug, Clone)]
pub struct Trace {
    pub kind: TraceKind,
    pub name: String,
    /// Mean arrivals in each second.
    pub rate: Vec<f64>,
    /// What was taken from the source, for the report.
    pub note: String,
}

impl Trace {
    pub fn duration_s(&self) -> usize {
        self.rate.len()
    }
    pub fn mean_rps(&self) -> f64 {
        self.rate.iter().sum::<f64>() / self.rate.len().max(1) as f64
    }
    /// Poisson arrival counts per second (the same for every policy with the same seed).
    pub fn arrivals(&self, seed: u64) -> Vec<u32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        self.rate.iter().map(|&l| poisson(&mut rng, l)).collect()
    }
}

/// A Poisson sample (Knuth for small means, a normal approximation for large ones).
pub fn poisson<R: Rng>(rng: &mut R, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= rng.random::<f64>();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
    // Box-Muller.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (lambda + lambda.sqrt() * z).round().max(0.0) as u32
}

/// Load `spec` (`synthetic` or a file path).
pub fn load(spec: &str, opts: &TraceOptions) -> anyhow::Result<Trace> {
    let mut trace = if spec == "synthetic" {
        synthetic(opts)
    } else {
        let path = Path::new(spec);
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading trace {spec}"))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| spec.into());
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        if first.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(first)
                .with_context(|| format!("{spec}: first line is not JSON"))?;
            if v.get("creation_time").is_none() {
                bail!("{spec}: JSON lines without `creation_time`: {}", FORMATS);
            }
            pods(&name, &pods_from_jsonl(&text)?, opts)?
        } else {
            let header: Vec<String> = first.split(',').map(|h| h.trim().to_lowercase()).collect();
            if header.iter().any(|h| h == "gpu_util_pct") {
                gpu_util(&name, &text, &header, opts)?
            } else if header.iter().any(|h| h == "creation_time") {
                pods(&name, &pods_from_csv(&text, &header)?, opts)?
            } else {
                bail!("{spec}: unrecognised trace (header {first:?}): {}", FORMATS);
            }
        }
    };
    normalise(&mut trace.rate, opts.peak_rps);
    Ok(trace)
}

const FORMATS: &str = "expected `synthetic`, the GenAI GPU-utilisation CSV (timestamp_anon,container_ip,gpu_util_pct) \
                       or the v2023 pod list (JSONL or CSV with creation_time)";

/// Scale so the busiest 60-second average is `peak`.
fn normalise(rate: &mut [f64], peak: f64) {
    let w = 60.min(rate.len().max(1));
    let mut best = 0.0f64;
    let mut sum: f64 = rate[..w.min(rate.len())].iter().sum();
    best = best.max(sum);
    for i in w..rate.len() {
        sum += rate[i] - rate[i - w];
        best = best.max(sum);
    }
    let busiest = best / w as f64;
    if busiest > 0.0 {
        let k = peak / busiest;
        rate.iter_mut().for_each(|r| *r *= k);
    }
}

fn synthetic(opts: &TraceOptions) -> Trace {
    let d = opts.duration_s.unwrap_or(86_400).max(60) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut rate: Vec<f64> = (0..d)
        .map(|t| {
            let phase = 2.0 * std::f64::consts::PI * t as f64 / d as f64;
            0.1 + 0.9 * (1.0 - phase.cos()) / 2.0
        })
        .collect();
    // About one burst every 40 minutes: ×1.5–3 for 1–5 minutes.
    let bursts = (d / 2400).max(1);
    for _ in 0..bursts {
        let start = rng.random_range(0..d);
        let len = rng.random_range(60..300);
        let k = rng.random_range(1.5..3.0);
        for r in rate.iter_mut().skip(start).take(len) {
            *r *= k;
        }
    }
    Trace {
        kind: TraceKind::Synthetic,
        name: "synthetic".into(),
        rate,
        note: format!("one diurnal cycle over {d} s with {bursts} bursts (×1.5–3, 1–5 min)"),
    }
}

fn gpu_util(
    name: &str,
    text: &str,
    header: &[String],
    opts: &TraceOptions,
) -> anyhow::Result<Trace> {
    let col = |n: &str| {
        header
            .iter()
            .position(|h| h == n)
            .with_context(|| format!("{name}: no column {n}"))
    };
    let (ti, ui) = (col("timestamp_anon")?, col("gpu_util_pct")?);
    let containers_col = header.iter().position(|h| h == "container_ip");
    let mut sums: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
    let mut containers = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let t: i64 = f
            .get(ti)
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{name}:{}: bad timestamp", n + 1))?;
        let u: f64 = f
            .get(ui)
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{name}:{}: bad gpu_util_pct", n + 1))?;
        if let Some(c) = containers_col.and_then(|c| f.get(c)) {
            containers.insert(c.to_string());
        }
        *sums.entry(t).or_default() += u;
    }
    anyhow::ensure!(sums.len() >= 2, "{name}: fewer than two timestamps");
    let points: Vec<(i64, f64)> = sums.into_iter().collect();
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let span = (t1 - t0) as f64;
    let d = opts
        .duration_s
        .map(|d| d as usize)
        .unwrap_or(span as usize)
        .max(60);
    // Linear interpolation between samples, the trace's span mapped onto d seconds.
    let mut rate = Vec::with_capacity(d);
    let mut j = 0;
    for s in 0..d {
        let t = t0 as f64 + span * s as f64 / d as f64;
        while j + 1 < points.len() - 1 && (points[j + 1].0 as f64) < t {
            j += 1;
        }
        let (a, b) = (points[j], points[(j + 1).min(points.len() - 1)]);
        let w = if b.0 > a.0 {
            ((t - a.0 as f64) / (b.0 - a.0) as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        rate.push(a.1 + (b.1 - a.1) * w);
    }
    Ok(Trace {
        kind: TraceKind::GpuUtil,
        name: name.into(),
        rate,
        note: format!(
            "{} samples of {} containers over {:.1} h, utilisation summed per timestamp{}",
            points.len(),
            containers.len(),
            span / 3600.0,
            if d as f64 == span {
                String::new()
            } else {
                format!(", compressed to {d} s")
            }
        ),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub creation_time: f64,
    pub deletion_time: Option<f64>,
    /// GPUs requested (fractions for GPU-sharing pods; CPU-only pods count as 0.25).
    pub gpus: f64,
}

fn gpus_of(num_gpu: f64, gpu_milli: f64) -> f64 {
    if num_gpu <= 0.0 {
        0.25
    } else if num_gpu == 1.0 && gpu_milli > 0.0 {
        gpu_milli / 1000.0
    } else {
        num_gpu
    }
}

pub fn pods_from_jsonl(text: &str) -> anyhow::Result<Vec<Pod>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("line {}: not JSON", n + 1))?;
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
            Ok(Pod {
                creation_time: num("creation_time")
                    .with_context(|| format!("line {}: no creation_time", n + 1))?,
                deletion_time: num("deletion_time"),
                gpus: gpus_of(
                    num("num_gpu").unwrap_or(0.0),
                    num("gpu_milli").unwrap_or(0.0),
                ),
            })
        })
        .collect()
}

pub fn pods_from_csv(text: &str, header: &[String]) -> anyhow::Result<Vec<Pod>> {
    let col = |n: &str| header.iter().position(|h| h == n);
    let ct = col("creation_time").context("no creation_time column")?;
    let (dt, ng, gm) = (col("deletion_time"), col("num_gpu"), col("gpu_milli"));
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let f: Vec<&str> = l.split(',').collect();
            let num = |c: Option<usize>| {
                c.and_then(|c| f.get(c))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            Ok(Pod {
                creation_time: num(Some(ct))
                    .with_context(|| format!("line {}: bad creation_time", n + 1))?,
                deletion_time: num(dt),
                gpus: gpus_of(num(ng).unwrap_or(0.0), num(gm).unwrap_or(0.0)),
            })
        })
        .collect()
}

fn pods(name: &str, pods: &[Pod], opts: &TraceOptions) -> anyhow::Result<Trace> {
    anyhow::ensure!(!pods.is_empty(), "{name}: no pods");
    // The snapshot window: from the earliest deletion (pods alive at the snapshot) to the
    // last creation; the few long-lived pods created before it are left out.
    let last = pods
        .iter()
        .map(|p| p.creation_time)
        .fold(f64::MIN, f64::max);
    let first_deletion = pods
        .iter()
        .filter_map(|p| p.deletion_time)
        .fold(f64::MAX, f64::min);
    let start = if first_deletion < last {
        first_deletion
    } else {
        pods.iter()
            .map(|p| p.creation_time)
            .fold(f64::MAX, f64::min)
    };
    let inside: Vec<&Pod> = pods.iter().filter(|p| p.creation_time >= start).collect();
    let span = (last - start).max(1.0);
    let d = opts.duration_s.unwrap_or(86_400).max(60) as usize;
    let burst = opts.burst_s.max(1.0);
    let mut rate = vec![0.0; d];
    for p in &inside {
        let at = (p.creation_time - start) / span * (d as f64 - burst).max(1.0);
        let from = at.floor() as usize;
        // p.gpus "units" of load spread evenly over the burst.
        for r in rate.iter_mut().skip(from).take(burst.ceil() as usize) {
            *r += p.gpus / burst;
        }
    }
    Ok(Trace {
        kind: TraceKind::Pods,
        name: name.into(),
        rate,
        note: format!(
            "{} pods created over {:.1} days (of {} in the file), compressed ×{:.0} into {d} s; \
             each a {burst:.0}-s burst sized by its GPUs",
            inside.len(),
            span / 86_400.0,
            pods.len(),
            span / d as f64
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> TraceOptions {
        TraceOptions {
            peak_rps: 100.0,
            duration_s: Some(3600),
            burst_s: 30.0,
            seed: 7,
        }
    }

    fn peak_minute(rate: &[f64]) -> f64 {
        rate.windows(60)
            .map(|w| w.iter().sum::<f64>() / 60.0)
            .fold(0.0, f64::max)
    }

    #[test]
    fn synthetic_is_diurnal_with_the_peak_asked_for() {
        let t = load("synthetic", &opts()).unwrap();
        assert_eq!(t.duration_s(), 3600);
        assert!((peak_minute(&t.rate) - 100.0).abs() < 1e-6);
        assert!(t.rate[0] < t.rate[1800], "quiet at the start, busy mid-way");
        let a = t.arrivals(1);
        let total: u64 = a.iter().map(|x| *x as u64).sum();
        let expected: f64 = t.rate.iter().sum();
        assert!(
            (total as f64 - expected).abs() < expected * 0.02,
            "{total} vs {expected}"
        );
        assert_eq!(a, t.arrivals(1), "same seed, same arrivals");
    }

    #[test]
    fn formats_are_detected() {
        let dir = std::env::temp_dir().join(format!("aifab-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let util = dir.join("u.csv");
        std::fs::write(
            &util,
            "timestamp_anon,container_ip,gpu_util_pct\n\
             0,a,10\n0,b,10\n100,a,40\n100,b,0\n200,a,0\n200,b,0\n",
        )
        .unwrap();
        let t = load(
            util.to_str().unwrap(),
            &TraceOptions {
                duration_s: None,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(t.kind, TraceKind::GpuUtil);
        assert_eq!(t.duration_s(), 200);
        assert!(t.rate[100] > t.rate[0] && t.rate[199] < t.rate[100]);
        assert!(t.note.contains("2 containers"), "{}", t.note);

        let jsonl = dir.join("p.jsonl");
        std::fs::write(
            &jsonl,
            "{\"creation_time\": 0, \"deletion_time\": 5000, \"num_gpu\": 1, \"gpu_milli\": 1000}\n\
             {\"creation_time\": 5000, \"deletion_time\": 9000, \"num_gpu\": 8, \"gpu_milli\": 0}\n\
             {\"creation_time\": 9000, \"deletion_time\": null, \"num_gpu\": 0, \"gpu_milli\": 0}\n",
        )
        .unwrap();
        let t = load(jsonl.to_str().unwrap(), &opts()).unwrap();
        assert_eq!(t.kind, TraceKind::Pods);
        assert!(
            t.note.starts_with("2 pods"),
            "the pod before the window is left out: {}",
            t.note
        );
        assert!((peak_minute(&t.rate) - 100.0).abs() < 1e-6);
        let busy = t.rate.iter().filter(|r| **r > 0.0).count();
        assert!((55..=65).contains(&busy), "two 30-s bursts: {busy}");

        let csv = dir.join("p.csv");
        std::fs::write(
            &csv,
            "name,num_gpu,gpu_milli,creation_time,deletion_time\na,1,500,0,100\nb,1,1000,50,100\n",
        )
        .unwrap();
        assert_eq!(
            load(csv.to_str().unwrap(), &opts()).unwrap().kind,
            TraceKind::Pods
        );

        let bad = dir.join("x.csv");
        std::fs::write(&bad, "a,b\n1,2\n").unwrap();
        let err = load(bad.to_str().unwrap(), &opts())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unrecognised trace") && err.contains("gpu_util_pct"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn poisson_has_the_right_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for lambda in [0.5, 5.0, 80.0] {
            let n = 20_000;
            let mean = (0..n)
                .map(|_| poisson(&mut rng, lambda) as f64)
                .sum::<f64>()
                / n as f64;
            assert!(
                (mean - lambda).abs() < lambda * 0.03 + 0.02,
                "λ {lambda}: mean {mean}"
            );
        }
    }
}
