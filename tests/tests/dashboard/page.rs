//! Reading the rendered page (Chromium's `--dump-dom`): fields, table rows and cells by
//! their `data-*` attributes, and the checks that the page shows what the JSON says.

use super::*;

/// The attributes of the opening tag at `at` (which points into the tag).
fn tag_attrs(dom: &str, at: usize) -> BTreeMap<String, String> {
    let start = dom[..at].rfind('<').expect("a tag");
    let end = at + dom[at..].find('>').expect("the tag ends");
    let tag = &dom[start + 1..end];
    let mut out = BTreeMap::new();
    let mut rest = tag.split_once(' ').map(|(_, r)| r).unwrap_or("");
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let after = &rest[eq + 2..];
        let close = after.find('"').expect("a closed attribute");
        out.insert(name, unescape(&after[..close]));
        rest = &after[close + 1..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Text inside the element whose opening tag is at `at`, tags stripped, up to `end_tag`.
fn inner_text(dom: &str, at: usize, end_tag: &str) -> String {
    let open_end = at + dom[at..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find(end_tag).unwrap_or(0);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[open_end..close].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(text.trim())
}

/// `data-field="name"`: (data-value, text).
fn field(dom: &str, name: &str) -> (Option<String>, String) {
    let at = dom
        .find(&format!("data-field=\"{name}\""))
        .unwrap_or_else(|| panic!("no data-field {name} in the DOM"));
    (
        tag_attrs(dom, at).get("data-value").cloned(),
        inner_text(dom, at, "</span>"),
    )
}

/// The `<tr>` with `attr="value"` (and every other given attribute), as a slice of the DOM.
fn row<'a>(dom: &'a str, attrs: &[(&str, &str)]) -> &'a str {
    let (attr, value) = attrs[0];
    let needle = format!("{attr}=\"{value}\"");
    let mut from = 0;
    while let Some(i) = dom[from..].find(&needle) {
        let at = from + i;
        let start = dom[..at].rfind('<').unwrap();
        if dom[start..].starts_with("<tr") {
            let a = tag_attrs(dom, at);
            if attrs
                .iter()
                .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
            {
                let end = start + dom[start..].find("</tr>").expect("the row ends");
                return &dom[start..end];
            }
        }
        from = at + needle.len();
    }
    panic!("no row with {attrs:?} in the rendered page")
}

/// A cell of a row: (data-value, text).
fn cell(row: &str, col: &str) -> (Option<String>, String) {
    let at = row
        .find(&format!("data-col=\"{col}\""))
        .unwrap_or_else(|| panic!("no cell {col} in {row}"));
    (
        tag_attrs(row, at).get("data-value").cloned(),
        inner_text(row, at, "</td>"),
    )
}

fn num(v: &Option<String>) -> f64 {
    v.as_deref()
        .unwrap_or_else(|| panic!("no data-value"))
        .parse()
        .unwrap()
}

/// The page shows the throughput, latency, lag, replicas, spend and model versions of the
/// dashboard JSON `d`.
pub(crate) fn check_page(dom: &str, d: &Value, s: &Scene, decision: &ScaleDecision) {
    let (group, requests, service, tenant, task) =
        (&s.group, &s.requests, &s.service, &s.tenant, &s.task);
    // Throughput and latency.
    let (v, text) = field(dom, "throughput.predictions");
    assert_eq!(
        num(&v) as u64,
        d["throughput"]["predictions"].as_u64().unwrap()
    );
    assert_eq!(text, d["throughput"]["predictions"].to_string());
    assert_eq!(
        d["throughput"]["predictions"].as_u64().unwrap(),
        probes_seen(d, &s.probe_task) + 50
    );
    for q in ["p50", "p90", "p99", "max"] {
        let (v, text) = field(dom, &format!("latency.{q}"));
        let want = d["latency_ms"][q].as_f64().unwrap();
        assert_eq!(num(&v), want, "latency {q}");
        assert_eq!(text, format!("{want:.0}"), "latency {q}");
    }

    // Lag per group.
    let r = row(
        dom,
        &[
            ("data-group", group.as_str()),
            ("data-topic", requests.as_str()),
        ],
    );
    assert_eq!(cell(r, "total_lag"), (Some("30".into()), "30".into()));
    assert_eq!(cell(r, "partitions").1, "2");

    // Replicas and the scale decision.
    let r = row(dom, &[("data-service", service.as_str())]);
    assert_eq!(cell(r, "replicas").1, "3");
    assert_eq!(cell(r, "desired").1, "3");
    assert_eq!(cell(r, "reason").1, "lag");
    assert_eq!(cell(r, "actuator").1, "local");
    let r = row(
        dom,
        &[
            ("data-service", service.as_str()),
            ("data-at", &decision.at_ms.to_string()),
        ],
    );
    assert_eq!(cell(r, "detail").1, decision.detail);
    assert_eq!(cell(r, "change").1, "1 → 3");

    // Spend vs budget.
    let t = find(&d["tenants"], "tenant", tenant).unwrap();
    let r = row(
        dom,
        &[
            ("data-tenant", tenant.as_str()),
            ("data-period", t["period"].as_str().unwrap()),
        ],
    );
    let (v, text) = cell(r, "spent");
    assert_eq!(num(&v), t["spent"].as_f64().unwrap());
    assert_eq!(text, format!("{:.4} USD", t["spent"].as_f64().unwrap()));
    assert_eq!(cell(r, "budget"), (Some("1".into()), "1.00".into()));
    assert_eq!(
        cell(r, "used_ratio").1,
        format!("{:.1}%", t["used_ratio"].as_f64().unwrap() * 100.0)
    );
    assert_eq!(cell(r, "predictions").1, "50");
    assert_eq!(cell(r, "state").1, "ok");

    // Model versions and their metrics.
    let r = row(dom, &[("data-task", task.as_str()), ("data-version", "v1")]);
    assert_eq!(
        cell(r, "macro_f1"),
        (Some("0.9123".into()), "0.9123".into())
    );
    assert_eq!(cell(r, "accuracy").1, "0.9561");
    assert_eq!(cell(r, "aliases").1, "production");
    assert_eq!(cell(r, "live_count").1, "40");
    let v1 = d["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["task"] == task.as_str() && m["version"] == "v1")
        .unwrap();
    assert_eq!(
        cell(r, "live_p99_ms").1,
        format!("{:.0}", v1["live"]["p99_ms"].as_f64().unwrap())
    );
    let r = row(dom, &[("data-task", task.as_str()), ("data-version", "v2")]);
    assert_eq!(cell(r, "macro_f1").1, "0.8876");
    assert_eq!(cell(r, "aliases").1, "candidatecanary 25%");
    assert_eq!(cell(r, "live_count").1, "10");
}
