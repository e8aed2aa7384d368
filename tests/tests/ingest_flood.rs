//! A flood of strangers does not starve a paying tenant: `load-tests/flood` (its binary)
//! runs an ingest of its own, a valid tenant at a steady rate, alone and under ~4,000
//! unauthenticated requests/s (bounded, loopback), in alternating rounds.
//!
//! What this asserts holds on any machine: every valid request is accepted under the
//! flood as without it, every stranger is refused (401, or 429 when its made-up key was
//! not even looked up; never let in), strangers cost at most one dead letter per kind per second, and
//! the tenant's p99 stays within a bound that starvation (answers waiting on the flood)
//! would break. The p99 figures themselves, measured on a quiet machine with longer
//! rounds, are in docs/security.md.

use std::time::Duration;

use aifab_tests::bin_path;

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_strangers_does_not_starve_a_paying_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("flood.json");
    let (seconds, rounds) = (4u64, 2u64);
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(bin_path("flood"))
            .args([
                "--seconds",
                &seconds.to_string(),
                "--rounds",
                &rounds.to_string(),
            ])
            .args(["--rate", "40", "--flood-rate", "4000"])
            .arg("--json")
            .arg(&json)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the flood finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "flood failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    let f: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("no {k} in {f}"));

    assert_eq!(num("alone_success"), 1.0, "{f}");
    assert_eq!(
        num("flooded_success"),
        1.0,
        "every valid request accepted under the flood"
    );
    assert!(
        num("flood_per_s") > 1000.0,
        "the flood ran at thousands/s: {f}"
    );
    assert_eq!(
        num("flood_other"),
        0.0,
        "every stranger got 401 or 429: {f}"
    );
    assert_eq!(
        num("flood_401") + num("flood_429"),
        num("flood_sent"),
        "{f}"
    );
    // At most one sampled dead letter per kind (2) per second, per flooded round.
    let bound = 2.0 * (seconds as f64 + 1.0) * rounds as f64;
    assert!(
        num("dead_letters") <= bound,
        "{} dead letters > {bound}",
        num("dead_letters")
    );
    assert!(
        num("dead_letters") >= 2.0,
        "the strangers were sampled into the DLQ: {f}"
    );
    // Starved requests would wait for seconds (or time out): well under that.
    assert!(
        num("flooded_p99_ms") < 2000.0,
        "the tenant's p99 under the flood: {f}"
    );
}
