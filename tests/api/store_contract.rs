//! The store's contract, run against both of its databases: SQLite, and Postgres connected as
//! the runtime role (no ownership, no `BYPASSRLS`), so that every method is shown to work under
//! forced row-level security with the tenant it sets per transaction, and to keep tenants apart
//! on SQLite by its own filters.

use std::collections::HashSet;

use chrono::Utc;
use uuid::Uuid;
use voicegraph::domain::{
    Actor, Analysis, CallColumns, CallMetrics, CallStatus, EventFilter, JobMessage, Segment,
};
use voicegraph::store::{
    CallFilter, CallOrder, CategoryFields, Change, ConnectSettings, NewCall, NewKey, PageQuery,
    ResultKeys, Store,
};

use crate::backends;

/// A fresh, migrated store of each backend: (name, store).
async fn stores() -> Vec<(&'static str, Store, tempfile::TempDir)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(ConnectSettings {
        url: format!("sqlite://{}/store.db?mode=rwc", dir.path().display()),
        max_connections: 4,
        on_statement: None,
    })
    .await
    .unwrap();
    sqlite.migrate().await.unwrap();
    out.push(("sqlite", sqlite, dir));
    if let Some(owner_url) = backends::fresh_postgres_db().await {
        let owner = Store::connect(ConnectSettings {
            url: owner_url.clone(),
            max_connections: 2,
            on_statement: None,
        })
        .await
        .unwrap();
        owner.migrate().await.unwrap();
        owner
            .grant_runtime_role(backends::RUNTIME_ROLE)
            .await
            .unwrap();
        let runtime = Store::connect(ConnectSettings {
            url: backends::runtime_url(&owner_url),
            max_connections: 4,
            on_statement: None,
        })
        .await
        .unwrap();
        out.push(("postgres", runtime, tempfile::tempdir().unwrap()));
    }
    out
}

fn new_call(tenant: Uuid) -> NewCall {
    let id = Uuid::new_v4();
    NewCall {
        id,
        tenant_id: tenant,
        external_id: Some(format!("ext-{id}")),
        idempotency_key: None,
        direction: None,
        from: None,
        to: None,
        agent: Some("ana".into()),
        started_at: None,
        duration_ms: Some(1000),
        channels: None,
        recording_key: format!("recordings/{tenant}/{id}"),
        recording_type: "audio/wav".into(),
        recording_bytes: 10,
        recording_sha256: "00".into(),
        language: None,
        transcript_input: None,
        tags: vec!["a".into()],
        metadata: None,
        upload_key: None,
        delete_upload_at: Utc::now(),
        analyzer: "local".into(),
        redaction: None,
    }
}

fn keys(results: &str) -> ResultKeys {
    ResultKeys {
        results: results.into(),
        model_responses: None,
    }
}

fn actor(tenant: Uuid) -> Actor {
    Actor {
        tenant_id: tenant,
        key_id: None,
        subject: Some("tester".into()),
        role: "ADMIN".into(),
        platform_admin: true,
    }
}

fn key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        prefix: "vg_1234567".into(),
        key_hash: format!("hash-{}", Uuid::new_v4()),
        role: "VIEWER".into(),
        platform_admin: false,
    }
}

fn page(limit: usize) -> PageQuery {
    PageQuery {
        order: CallOrder::CreatedAt,
        descending: false,
        after: None,
        before: None,
        backward: false,
        limit,
    }
}

async fn two_tenants(store: &Store) -> (Uuid, Uuid) {
    let a = store.create_tenant("a".into(), None, None).await.unwrap();
    let b = store.create_tenant("b".into(), None, None).await.unwrap();
    (a.id, b.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_their_events_stay_in_their_tenant() {
    for (name, store, _dir) in stores().await {
        let (a, b) = two_tenants(&store).await;
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(store.submit_call(new_call(a)).await.unwrap().id);
        }
        let theirs = store.submit_call(new_call(b)).await.unwrap().id;
        assert!(
            store.get_call(a, mine[0]).await.unwrap().is_some(),
            "{name}"
        );
        assert!(
            store.get_call(b, mine[0]).await.unwrap().is_none(),
            "{name}"
        );
        let listed = store
            .list_calls(a, &CallFilter::default(), &page(10), &CallColumns::ALL)
            .await
            .unwrap();
        assert_eq!(
            listed.iter().map(|c| c.id).collect::<HashSet<_>>(),
            mine.iter().copied().collect(),
            "{name}"
        );
        assert_eq!(
            store
                .list_calls(a, &CallFilter::default(), &page(1), &CallColumns::ALL)
                .await
                .unwrap()
                .len(),
            2,
            "{name}: limit + 1"
        );
        assert_eq!(
            store.count_calls(a, &CallFilter::default()).await.unwrap(),
            3,
            "{name}"
        );
        assert!(
            store.calls_by_ids(b, &mine).await.unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(
            store
                .call_stat_rows(a, &CallFilter::default())
                .await
                .unwrap()
                .len(),
            3,
            "{name}"
        );

        // Events get positions only from the sequencer, in commit order, across tenants.
        assert!(
            store.events_of_calls(a, &mine).await.unwrap().is_empty(),
            "{name}: unsequenced"
        );
        assert_eq!(store.sequence_pending().await.unwrap(), 4, "{name}");
        assert_eq!(store.sequence_pending().await.unwrap(), 0, "{name}");
        assert_eq!(store.max_seq().await.unwrap(), 4, "{name}");
        let all = store.events_between_all(0, 4).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "{name}"
        );
        let of_a = store
            .events_between(a, &EventFilter::default(), 0, 4)
            .await
            .unwrap();
        assert_eq!(of_a.len(), 3, "{name}");
        assert!(of_a.iter().all(|e| e.tenant_id == a), "{name}");
        let of_b = store.events_of_calls(b, &[theirs, mine[0]]).await.unwrap();
        assert_eq!(of_b.len(), 1, "{name}");
        assert_eq!(of_b[0].call_id, theirs, "{name}");
        let by_id = store
            .events_by_id(
                &all.iter()
                    .map(|e| e.id)
                    .chain([i64::MAX])
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        assert_eq!(by_id.len(), 4, "{name}: a missing event is absent");
        assert!(by_id.values().all(Option::is_some), "{name}");
    }
}

fn analysis() -> Analysis {
    Analysis {
        analyzer: "test".into(),
        duration_ms: 2000,
        channels: 1,
        sample_rate: 8000,
        language: Some("en".into()),
        speakers: vec!["agent".into()],
        segments: vec![
            Segment {
                speaker: "agent".into(),
                channel: 0,
                start_ms: 0,
                end_ms: 900,
                text: Some("hello".into()),
                sentiment: Some(0.5),
                grounded: true,
            },
            Segment {
                speaker: "agent".into(),
                channel: 0,
                start_ms: 1000,
                end_ms: 1900,
                text: None,
                sentiment: None,
                grounded: false,
            },
        ],
        transcript_text: Some("hello".into()),
        summary: Some("a greeting".into()),
        sentiment: None,
        topics: vec![],
        action_items: vec![],
        issues: vec![],
        intent: None,
        outcome: None,
        categories: vec![],
        model: None,
        prompt_version: None,
        metrics: CallMetrics::default(),
        usage: None,
        model_responses: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_fenced_and_every_change_has_its_event() {
    for (name, store, _dir) in stores().await {
        let (a, b) = two_tenants(&store).await;
        let call = store.submit_call(new_call(a)).await.unwrap();
        let submitted = call
            .current_analysis_id
            .expect("a submitted call has its analysis");
        let job = JobMessage {
            tenant_id: a,
            call_id: call.id,
            analysis_id: Some(submitted),
            traceparent: None,
        };
        // A job naming the wrong tenant claims nothing.
        assert!(
            store
                .start_attempt(&JobMessage {
                    tenant_id: b,
                    call_id: call.id,
                    analysis_id: Some(submitted),
                    traceparent: None,
                })
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
        let (first, first_analysis) = store.start_attempt(&job).await.unwrap().unwrap();
        // A job queued before analyses were kept names none: it runs the current one.
        let legacy = JobMessage {
            analysis_id: None,
            ..job.clone()
        };
        let (second, second_analysis) = store.start_attempt(&legacy).await.unwrap().unwrap();
        assert_eq!(second_analysis.id, submitted, "{name}");
        assert_eq!((first.attempts, second.attempts), (1, 2), "{name}");
        assert_eq!(first_analysis.id, submitted, "{name}");
        assert_eq!(
            (second_analysis.attempts, second_analysis.status.as_str()),
            (2, "PROCESSING"),
            "{name}"
        );
        assert!(
            !store
                .complete_attempt(&first, submitted, 1, &analysis(), keys("r1"))
                .await
                .unwrap(),
            "{name}: fenced"
        );
        assert!(
            !store
                .fail_attempt(&first, submitted, 1, "late", true)
                .await
                .unwrap(),
            "{name}: fenced"
        );
        assert!(
            store
                .complete_attempt(&second, submitted, 2, &analysis(), keys("r2"))
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            !store
                .fail_attempt(&second, submitted, 2, "after", true)
                .await
                .unwrap(),
            "{name}: finished"
        );
        let done = store.get_call(a, call.id).await.unwrap().unwrap();
        assert_eq!(done.status, CallStatus::Completed.as_str(), "{name}");
        assert_eq!(done.result_key.as_deref(), Some("r2"), "{name}");
        let segments = store.segments_of_calls(a, &[call.id]).await.unwrap();
        assert_eq!(
            segments.iter().map(|s| s.grounded).collect::<Vec<_>>(),
            vec![true, false],
            "{name}: grounding is stored"
        );
        assert!(
            store
                .segments_of_calls(b, &[call.id])
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert!(
            store.start_attempt(&job).await.unwrap().is_none(),
            "{name}: nothing left to do"
        );

        // Re-analysis: a new analysis, the results kept until it succeeds, every one listed.
        assert!(
            matches!(
                store.reanalyze_call(b, call.id, "local").await.unwrap(),
                Change::Missing
            ),
            "{name}"
        );
        let Change::Done(queued) = store.reanalyze_call(a, call.id, "gemini").await.unwrap() else {
            panic!("{name}: re-analysed")
        };
        let again = queued.current_analysis_id.unwrap();
        assert_ne!(again, submitted, "{name}");
        assert_eq!(queued.status, CallStatus::Queued.as_str(), "{name}");
        assert_eq!(
            queued.summary.as_deref(),
            Some("a greeting"),
            "{name}: kept"
        );
        assert!(
            matches!(
                store.reanalyze_call(a, call.id, "local").await.unwrap(),
                Change::Refused(_)
            ),
            "{name}: one analysis at a time"
        );
        assert!(
            store.start_attempt(&job).await.unwrap().is_none(),
            "{name}: the old analysis's job is stale"
        );
        let new_job = JobMessage {
            analysis_id: Some(again),
            ..job.clone()
        };
        let (running, record) = store.start_attempt(&new_job).await.unwrap().unwrap();
        assert_eq!(record.analyzer.as_deref(), Some("gemini"), "{name}");
        assert!(
            store
                .fail_attempt(&running, again, running.attempts, "model refused", true)
                .await
                .unwrap(),
            "{name}"
        );
        let failed = store.get_call(a, call.id).await.unwrap().unwrap();
        assert_eq!(failed.status, CallStatus::Failed.as_str(), "{name}");
        assert_eq!(
            failed.summary.as_deref(),
            Some("a greeting"),
            "{name}: kept"
        );
        let all = store.analyses_of_calls(a, &[call.id]).await.unwrap();
        let statuses: Vec<_> = all[&call.id]
            .iter()
            .map(|r| {
                (
                    r.id,
                    r.status.clone(),
                    r.error.clone(),
                    r.result_key.clone(),
                )
            })
            .collect();
        assert_eq!(
            statuses,
            vec![
                (submitted, "COMPLETED".into(), None, Some("r2".into())),
                (again, "FAILED".into(), Some("model refused".into()), None),
            ],
            "{name}"
        );
        assert!(
            store
                .analyses_of_calls(b, &[call.id])
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert!(
            matches!(store.retry_call(a, call.id).await.unwrap(), Change::Done(_)),
            "{name}"
        );
        let retried = store.get_analysis(a, again).await.unwrap().unwrap();
        assert_eq!(
            (retried.status.as_str(), retried.error),
            ("QUEUED", None),
            "{name}: the failed analysis is the one retried"
        );

        // Retry applies to failed calls only; tags merge; deletion leaves a DELETED event.
        assert!(
            matches!(
                store.retry_call(a, call.id).await.unwrap(),
                Change::Refused(_)
            ),
            "{name}"
        );
        assert!(
            matches!(store.retry_call(b, call.id).await.unwrap(), Change::Missing),
            "{name}"
        );
        let tagged = store
            .tag_call(a, call.id, |mut t| {
                t.push("b".into());
                Ok(t)
            })
            .await
            .unwrap();
        let Change::Done(tagged) = tagged else {
            panic!("{name}: tagged")
        };
        assert_eq!(tagged.tags, serde_json::json!(["a", "b"]), "{name}");
        assert!(
            matches!(
                store.tag_call(b, call.id, Ok).await.unwrap(),
                Change::Missing
            ),
            "{name}"
        );
        assert!(
            matches!(
                store.delete_call(b, call.id).await.unwrap(),
                Change::Missing
            ),
            "{name}"
        );
        assert!(
            matches!(
                store.delete_call(a, call.id).await.unwrap(),
                Change::Done(_)
            ),
            "{name}"
        );
        assert!(
            store.get_call(a, call.id).await.unwrap().is_none(),
            "{name}"
        );
        assert!(
            store
                .segments_of_calls(a, &[call.id])
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert!(
            store
                .analyses_of_calls(a, &[call.id])
                .await
                .unwrap()
                .is_empty(),
            "{name}: its analyses went with it"
        );
        store.sequence_pending().await.unwrap();
        let kinds: Vec<String> = store
            .events_between(a, &EventFilter::default(), 0, i64::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            vec!["DELETED".to_string()],
            "{name}: the call's other events went with it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_tenants_and_the_audit_log() {
    for (name, store, _dir) in stores().await {
        let first = key("first");
        let hash = first.key_hash.clone();
        let a = store
            .create_tenant("a".into(), None, Some(first))
            .await
            .unwrap();
        let b = store
            .create_tenant("b".into(), Some(&actor(a.id)), None)
            .await
            .unwrap();
        assert_eq!(store.tenant_count().await.unwrap(), 2, "{name}");
        let found = store
            .key_by_hash(&hash)
            .await
            .unwrap()
            .expect("found across tenants");
        assert_eq!(found.tenant_id, a.id, "{name}");
        assert!(store.key_by_hash("nope").await.unwrap().is_none(), "{name}");
        let kb = store
            .create_key(b.id, key("kb"), &actor(a.id))
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .create_key(Uuid::new_v4(), key("x"), &actor(a.id))
                .await
                .unwrap()
                .is_none(),
            "{name}: no such tenant"
        );
        assert_eq!(store.key_tenant(kb.id).await.unwrap(), Some(b.id), "{name}");
        assert_eq!(
            store.key_tenant(Uuid::new_v4()).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(store.list_keys(b.id).await.unwrap().len(), 1, "{name}");
        assert!(
            store
                .revoke_key(a.id, kb.id, &actor(a.id))
                .await
                .unwrap()
                .is_none(),
            "{name}: another tenant's key"
        );
        let active = store.active_keys(&[found.id, kb.id]).await.unwrap();
        assert_eq!(active.len(), 2, "{name}");
        let revoked = store
            .revoke_key(b.id, kb.id, &actor(a.id))
            .await
            .unwrap()
            .unwrap();
        assert!(revoked.revoked_at.is_some(), "{name}");
        // Revoking again changes nothing and records nothing.
        store
            .revoke_key(b.id, kb.id, &actor(a.id))
            .await
            .unwrap()
            .unwrap();
        let active = store
            .active_keys(&[found.id, kb.id, Uuid::new_v4()])
            .await
            .unwrap();
        assert_eq!(active, HashSet::from([found.id]), "{name}");
        store.touch_key(a.id, found.id).await.unwrap();
        assert!(
            store.list_keys(a.id).await.unwrap()[0]
                .last_used_at
                .is_some(),
            "{name}"
        );

        let log_b: Vec<String> = store
            .audit_page(b.id, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            log_b,
            vec!["api_key.revoked", "api_key.created", "tenant.created"],
            "{name}"
        );
        let log_a: Vec<String> = store
            .audit_page(a.id, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(log_a, vec!["api_key.created", "tenant.created"], "{name}");
        let older = store.audit_page(b.id, None, 1).await.unwrap();
        assert_eq!(older.len(), 2, "{name}: limit + 1");
        let rest = store.audit_page(b.id, Some(older[0].id), 10).await.unwrap();
        assert_eq!(rest.len(), 2, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_claimed_marked_and_rescheduled() {
    use std::time::Duration;
    use voicegraph::store::Destinations;
    let all = Destinations::AllBut("webhook");
    let lease = Duration::from_secs(60);
    for (name, store, _dir) in stores().await {
        let (a, _) = two_tenants(&store).await;
        store.submit_call(new_call(a)).await.unwrap(); // an event row and a job row
        assert!(
            store
                .claim_outbox(Destinations::Only("webhook"), 10, lease)
                .await
                .unwrap()
                .rows
                .is_empty(),
            "{name}: a claim takes its destinations only"
        );
        let claim = store.claim_outbox(all, 10, lease).await.unwrap();
        assert_eq!(claim.rows.len(), 2, "{name}");
        // Leased: no other claim gets them, and the claim holds no lock (a write goes through).
        assert!(
            store
                .claim_outbox(all, 10, lease)
                .await
                .unwrap()
                .rows
                .is_empty(),
            "{name}"
        );
        store.submit_call(new_call(a)).await.unwrap();
        let other = store.claim_outbox(all, 10, lease).await.unwrap();
        assert_eq!(other.rows.len(), 2, "{name}: the new rows only");
        let (first, second) = (claim.rows[0].clone(), claim.rows[1].clone());
        claim.mark_sent(&[first.id]).await.unwrap();
        claim
            .reschedule(&second, "down", Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap();
        // Released rows are due again at once; dead ones never.
        other.release(&[other.rows[0].id]).await.unwrap();
        other.dead_letter(&other.rows[1], "gave up").await.unwrap();
        let again = store.claim_outbox(all, 10, lease).await.unwrap();
        assert_eq!(
            again.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![other.rows[0].id],
            "{name}: sent, rescheduled and dead rows are not due"
        );
        again.mark_sent(&[other.rows[0].id]).await.unwrap();
        // A lease that ran out frees its rows.
        store.submit_call(new_call(a)).await.unwrap();
        let short = store
            .claim_outbox(all, 10, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(short.rows.len(), 2, "{name}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store.claim_outbox(all, 10, lease).await.unwrap().rows.len(),
            2,
            "{name}"
        );
        assert_eq!(
            store
                .purge_outbox(Utc::now() + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            3,
            "{name}: the sent rows and the dead one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categories_belong_to_their_tenant_and_names_are_unique_whatever_the_case() {
    for (name, store, _dir) in stores().await {
        let (a, b) = two_tenants(&store).await;
        let fields = |n: &str| CategoryFields {
            name: n.into(),
            instructions: Some("The caller wants to cancel.".into()),
            keywords: vec!["cancel".into(), "close my account".into()],
        };
        let c = store.create_category(a, fields("Churn")).await.unwrap();
        assert!(
            store.create_category(a, fields("churn")).await.is_err(),
            "{name}: a name is taken whatever its case"
        );
        // Another tenant may use the name.
        store.create_category(b, fields("CHURN")).await.unwrap();
        let listed = store.list_categories(a).await.unwrap();
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(
            listed[0].keywords,
            vec!["cancel", "close my account"],
            "{name}"
        );
        assert_eq!(store.count_categories(b).await.unwrap(), 1, "{name}");
        assert!(
            store
                .update_category(b, c.id, |_| Ok(fields("Stolen")))
                .await
                .unwrap()
                .is_none(),
            "{name}: another tenant's category does not exist for b"
        );
        let renamed = store
            .update_category(a, c.id, |current| {
                Ok(CategoryFields {
                    name: "Cancellation".into(),
                    ..CategoryFields {
                        name: current.name,
                        instructions: current.instructions,
                        keywords: current.keywords,
                    }
                })
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(renamed.name, "Cancellation", "{name}");
        assert!(renamed.updated_at >= renamed.created_at, "{name}");
        assert!(
            store.delete_category(b, c.id).await.unwrap().is_none(),
            "{name}"
        );
        assert!(
            store.delete_category(a, c.id).await.unwrap().is_some(),
            "{name}"
        );
        assert!(store.list_categories(a).await.unwrap().is_empty(), "{name}");
        assert_eq!(store.list_categories(b).await.unwrap().len(), 1, "{name}");
    }
}

/// What the store's one-message reads (`Store::tenant_read`) rest on, as the runtime role bound
/// by row-level security: the statements of one simple-protocol message run as one implicit
/// transaction, so the tenant set by the first holds for the second (which sees that tenant's
/// rows and no other's, with no tenant filter of its own) and is gone for the connection's
/// next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_set_in_one_message_holds_for_that_message_only() {
    use futures::TryStreamExt;
    use sea_orm::sqlx::{self, Either, Row};
    for (name, store, _dir) in stores().await {
        if name != "postgres" {
            continue;
        }
        let (a, b) = two_tenants(&store).await;
        for tenant in [a, a, b] {
            store.submit_call(new_call(tenant)).await.unwrap();
        }
        let pool = store.connection().get_postgres_connection_pool();
        let mut conn = pool.acquire().await.unwrap();
        let counts = |tenant: Option<Uuid>| {
            let set = tenant.map_or(String::new(), |t| {
                format!("SELECT set_config('voicegraph.tenant_id', '{t}', true); ")
            });
            format!("{set}SELECT count(*) AS n FROM calls")
        };
        for (tenant, expected) in [(Some(a), 2i64), (Some(b), 1), (None, 0)] {
            let rows: Vec<_> = sqlx::raw_sql(sqlx::AssertSqlSafe(counts(tenant)))
                .fetch_many(&mut *conn)
                .try_filter_map(|item| async move {
                    Ok(match item {
                        Either::Right(row) if row.try_get::<i64, _>("n").is_ok() => Some(row),
                        _ => None,
                    })
                })
                .try_collect()
                .await
                .unwrap();
            assert_eq!(rows.len(), 1, "{name}");
            let n: i64 = rows[0].try_get("n").unwrap();
            assert_eq!(n, expected, "{name}: calls seen under {tenant:?}");
        }
        // The same connection, after the messages: no tenant is left set.
        let left: Option<String> =
            sqlx::query_scalar("SELECT nullif(current_setting('voicegraph.tenant_id', true), '')")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(left, None, "{name}");
    }
}
