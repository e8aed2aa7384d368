//! The id-claim scripts against the local stack's Redis (`scripts/stack-up`): a claim is
//! marked or released only while it still holds the value its request claimed it with.

use aifab_ingest::store;

async fn conn() -> redis::aio::ConnectionManager {
    let url = std::env::var("AIFAB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).unwrap();
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("Redis on AIFAB_REDIS_URL (scripts/stack-up)")
}

async fn get(conn: &mut redis::aio::ConnectionManager, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn claims_are_changed_only_while_they_hold_the_requests_value() {
    let mut c = conn().await;
    let prefix = format!("test.store.{}.{}", std::process::id(), aifab_core::now_ms());
    let (mine, theirs) = (format!("{prefix}:a"), format!("{prefix}:b"));
    let claims = vec![
        (mine.clone(), "http:me@9".to_string()),
        (theirs.clone(), "http:them@9".to_string()),
    ];
    assert_eq!(
        store::claim(&mut c, &claims, 60).await.unwrap(),
        vec![None, None]
    );
    let keys = vec![mine.clone(), theirs.clone()];

    // Only the key holding this request's value is marked, and keeps its TTL.
    assert_eq!(
        store::mark(&mut c, &keys, "http:me@9", "http:me")
            .await
            .unwrap(),
        1
    );
    assert_eq!(get(&mut c, &mine).await.as_deref(), Some("http:me"));
    assert_eq!(get(&mut c, &theirs).await.as_deref(), Some("http:them@9"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&mine)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=60).contains(&ttl), "TTL kept: {ttl}");

    // Released only where the value still matches: another request's claim stays.
    assert_eq!(
        store::release(&mut c, &keys, &["http:them@9"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(get(&mut c, &theirs).await, None);
    assert_eq!(
        store::release(&mut c, &keys, &["http:them@9"])
            .await
            .unwrap(),
        0,
        "a retried release takes nothing"
    );
    assert_eq!(get(&mut c, &mine).await.as_deref(), Some("http:me"));
    // Any of the values the request may have left there.
    store::release_retrying(
        &mut c,
        std::slice::from_ref(&mine),
        &["http:me@9", "http:me"],
    )
    .await;
    assert_eq!(get(&mut c, &mine).await, None);

    // Replaced, with a new TTL, only from the value it holds.
    let key = format!("{prefix}:idem");
    redis::cmd("SET")
        .arg(&key)
        .arg("pending")
        .arg("EX")
        .arg(60)
        .exec_async(&mut c)
        .await
        .unwrap();
    assert!(!store::replace(&mut c, &key, "other", "sending", 600)
        .await
        .unwrap());
    assert!(store::replace(&mut c, &key, "pending", "sending", 600)
        .await
        .unwrap());
    assert_eq!(get(&mut c, &key).await.as_deref(), Some("sending"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 60, "new TTL: {ttl}");
    redis::cmd("DEL")
        .arg(&key)
        .exec_async(&mut c)
        .await
        .unwrap();
}
