//! A closed control plane: with tokens configured, the cost-accountant's read routes need
//! the read (or admin) token and setting a budget needs the admin token; wrong or missing
//! tokens get 401 and change nothing, and no token appears in the service's answers. The
//! ops routes stay open (probes carry no tokens), and can live on their own port. A budget
//! is set only once the audit log has its record, which names the credential and caller.

use std::process::Stdio;

use aifab_core::messages::{decode, AuditAction, AuditEvent, Credential};
use aifab_tests::*;
use tokio::process::Command;

const ADMIN: &str = "admin-0123456789abcdef0123456789";
const READ: &str = "read-0123456789abcdef0123456789ab";

#[tokio::test(flavor = "multi_thread")]
async fn admin_and_read_routes_need_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin"), format!("{ADMIN}\n")).unwrap();
    std::fs::write(dir.path().join("read"), READ).unwrap();
    let (addr, ops) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let id = unique("access");
    let topic = unique("usage");
    create_topic(&topic, 1).await;
    // Not created yet: the first budget set must be refused for want of an audit record.
    let audit = unique("audit");
    let _accountant = Command::new(bin_path("aifab-cost-accountant"))
        .env("AIFAB_HTTP_ADDR", &addr)
        .env("AIFAB_OPS_ADDR", &ops)
        .env("AIFAB_USAGE_TOPIC", &topic)
        .env("AIFAB_COST_GROUP", format!("{id}.costs"))
        .env("AIFAB_COST_REDIS_PREFIX", &id)
        .env("AIFAB_ADMIN_TOKEN_FILE", dir.path().join("admin"))
        .env("AIFAB_READ_TOKEN_FILE", dir.path().join("read"))
        .env("AIFAB_AUDIT_TOPIC", &audit)
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Probes need no token, on the ops port; the API port has no ops routes.
    wait_ready(&ops, "cost-accountant").await;
    assert_eq!(http_get(&addr, "/readyz").await.unwrap().0, 404);

    let call = |method: &'static str, path: &'static str, token: Option<&'static str>| {
        let addr = addr.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            let body = br#"{"tenant":"acme","period":"month","amount":5}"#;
            let body: &[u8] = if method == "POST" { body } else { b"" };
            http_request(&addr, method, path, &headers, body)
                .await
                .unwrap()
        }
    };
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        assert_eq!(call("GET", "/v1/costs", token).await.status, 401);
        assert_eq!(call("POST", "/v1/budgets", token).await.status, 401);
    }
    let r = call("GET", "/v1/costs", Some(READ)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(call("GET", "/v1/budgets", Some(ADMIN)).await.status, 200);
    assert_eq!(call("POST", "/v1/budgets", Some(READ)).await.status, 401);
    let budgets = call("GET", "/v1/budgets", Some(READ)).await;
    assert!(
        !budgets.body.contains("acme"),
        "a refused POST set nothing: {}",
        budgets.body
    );
    let unrecorded = call("POST", "/v1/budgets", Some(ADMIN)).await;
    assert_eq!(unrecorded.status, 503, "{}", unrecorded.body);
    assert!(unrecorded.body.contains("audit log"), "{}", unrecorded.body);
    let budgets = call("GET", "/v1/budgets", Some(READ)).await;
    assert!(!budgets.body.contains("acme"), "{}", budgets.body);

    create_topic(&audit, 1).await;
    let set = call("POST", "/v1/budgets", Some(ADMIN)).await;
    assert_eq!(set.status, 200, "{}", set.body);
    let mut reader = TopicReader::new(&audit);
    reader.read_to_end(std::time::Duration::from_secs(30)).await;
    let records = &reader.records;
    assert_eq!(records.len(), 1, "one change, one record: {records:?}");
    let change: AuditEvent = decode(&records[0].payload).unwrap();
    assert_eq!(change.action, AuditAction::BudgetSet);
    assert_eq!(change.service, "cost-accountant");
    assert_eq!(change.tenant.as_deref(), Some("acme"));
    assert_eq!(change.actor.credential, Credential::AdminToken);
    let address = change.actor.address.as_deref().unwrap_or_default();
    assert!(address.starts_with("127.0.0.1:"), "{change:?}");
    assert!(!records[0]
        .payload
        .windows(ADMIN.len())
        .any(|w| w == ADMIN.as_bytes()));
    let budgets = call("GET", "/v1/budgets", Some(READ)).await;
    assert!(budgets.body.contains("acme"), "{}", budgets.body);
    for r in [&set, &budgets] {
        assert!(!r.body.contains(ADMIN) && !r.body.contains(READ));
    }
    let (_, readyz) = http_get(&ops, "/readyz").await.unwrap();
    assert!(
        !readyz.contains(ADMIN) && !readyz.contains(READ),
        "{readyz}"
    );
    delete_topic(&topic).await;
    delete_topic(&audit).await;
}
