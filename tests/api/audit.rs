//! The audit log: tenant creation, key creation and revocation recorded with who and when,
//! read by admins a page at a time, scoped to their tenant (the platform admin may read any).

use chrono::{DateTime, Utc};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use voicegraph::startup::Roles;

use crate::helpers::*;

const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

const SECRET: &str = "an HS256 secret of at least thirty-two bytes";

const LOG: &str = "query($first: Int, $after: String, $t: ID) { auditLog(first: $first, after: $after, tenantId: $t) { hasNextPage endCursor entries { id tenantId action target details at actor { keyId subject role platformAdmin tenantId } } } }";

async fn log_as(app: &TestApp, key: &str, vars: Value) -> Value {
    let (status, body) = app.gql_as(Some(key), LOG, vars).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn entries_as(app: &TestApp, key: &str, vars: Value) -> Vec<Value> {
    let body = log_as(app, key, vars).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    body["data"]["auditLog"]["entries"]
        .as_array()
        .unwrap()
        .clone()
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("none")
}

/// Creates a key in `tenant` as `as_key`; returns (id, secret).
async fn create_key(
    app: &TestApp,
    as_key: &str,
    tenant: Option<&str>,
    role: &str,
    name: &str,
) -> (String, String) {
    let (_, body) = app
        .gql_as(
            Some(as_key),
            "mutation($t: ID, $r: Role!, $n: String!) { createApiKey(input: {tenantId: $t, role: $r, name: $n}) { secret apiKey { id } } }",
            json!({ "t": tenant, "r": role, "n": name }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body:#}");
    (
        body["data"]["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        body["data"]["createApiKey"]["secret"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn at(e: &Value) -> DateTime<Utc> {
    e["at"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_creation_and_revocation_are_recorded_with_who_and_when() {
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("jwt_hs256_secret", SECRET);
    })
    .await;
    let me = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await;
    let home = me["viewer"]["tenant"]["id"].as_str().unwrap().to_string();
    let bootstrap_key = app.gql_ok("{ apiKeys { id } }", json!({})).await["apiKeys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let started = Utc::now();
    let tenant = app
        .gql_ok(
            "mutation { createTenant(input: {name: \"acme\"}) { tenant { id } } }",
            json!({}),
        )
        .await["createTenant"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (admin_id, admin) = create_key(&app, ADMIN_KEY, Some(&tenant), "ADMIN", "acme admin").await;
    let (viewer_id, _) = create_key(&app, &admin, None, "VIEWER", "dashboard").await;
    app.gql_as(
        Some(&admin),
        "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
        json!({ "id": viewer_id }),
    )
    .await;
    // Revoking again changes nothing, and records nothing.
    app.gql_as(
        Some(&admin),
        "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
        json!({ "id": viewer_id }),
    )
    .await;
    // A JWT admin of the tenant creates a key: the subject is the actor.
    let jwt = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice@acme", "tenant": tenant, "role": "admin", "exp": Utc::now().timestamp() + 600 }),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let (jwt_key_id, _) = create_key(&app, &jwt, None, "ANALYST", "from the browser").await;
    let finished = Utc::now();

    let entries = entries_as(&app, &admin, json!({})).await;
    let summary: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("API_KEY_CREATED", jwt_key_id.as_str()),
            ("API_KEY_REVOKED", viewer_id.as_str()),
            ("API_KEY_CREATED", viewer_id.as_str()),
            ("API_KEY_CREATED", admin_id.as_str()),
            ("TENANT_CREATED", tenant.as_str()),
        ],
        "newest first: {entries:#?}"
    );
    for e in &entries {
        assert_eq!(e["tenantId"], tenant.as_str());
        let t = at(e);
        assert!(started <= t && t <= finished, "{t} outside the test");
    }
    // Who: the JWT's subject; the tenant's admin key; the platform admin acting from its own
    // tenant.
    assert_eq!(
        entries[0]["actor"],
        json!({ "keyId": null, "subject": "alice@acme", "role": "ADMIN", "platformAdmin": false, "tenantId": tenant })
    );
    for e in &entries[1..3] {
        assert_eq!(
            e["actor"],
            json!({ "keyId": admin_id, "subject": null, "role": "ADMIN", "platformAdmin": false, "tenantId": tenant })
        );
    }
    for e in &entries[3..] {
        assert_eq!(
            e["actor"],
            json!({ "keyId": bootstrap_key, "subject": null, "role": "ADMIN", "platformAdmin": true, "tenantId": home })
        );
    }
    assert_eq!(
        entries[2]["details"],
        json!({ "name": "dashboard", "role": "viewer", "prefix": entries[2]["details"]["prefix"], "platformAdmin": false })
    );
    assert_eq!(
        entries[1]["details"],
        json!({ "name": "dashboard", "role": "viewer" })
    );
    assert_eq!(entries[4]["details"], json!({ "name": "acme" }));
    assert!(
        entries[2]["details"]["prefix"]
            .as_str()
            .unwrap()
            .starts_with("vg_"),
        "{}",
        entries[2]["details"]
    );

    // A page at a time.
    let first = log_as(&app, &admin, json!({ "first": 2 })).await["data"]["auditLog"].clone();
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    assert_eq!(first["hasNextPage"], true);
    let second = log_as(
        &app,
        &admin,
        json!({ "first": 2, "after": first["endCursor"] }),
    )
    .await["data"]["auditLog"]
        .clone();
    let third = log_as(
        &app,
        &admin,
        json!({ "first": 2, "after": second["endCursor"] }),
    )
    .await["data"]["auditLog"]
        .clone();
    assert_eq!(third["hasNextPage"], false);
    let paged: Vec<Value> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p["entries"].as_array().unwrap().clone())
        .collect();
    assert_eq!(paged, entries);

    // The service's own first start is in the home tenant's log, with no actor.
    let home_log = entries_as(&app, ADMIN_KEY, json!({})).await;
    let summary: Vec<&str> = home_log
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(summary, ["API_KEY_CREATED", "TENANT_CREATED"]);
    assert_eq!(home_log[0]["target"], bootstrap_key.as_str());
    assert_eq!(home_log[1]["target"], home.as_str());
    for e in &home_log {
        assert_eq!(
            e["actor"],
            json!({ "keyId": null, "subject": null, "role": null, "platformAdmin": false, "tenantId": null })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_for_admins_of_the_tenant_and_the_platform_admin() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    let mut tenants = Vec::new();
    let mut admins = Vec::new();
    for name in ["one", "two"] {
        let t = app
            .gql_ok(
                "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
                json!({ "n": name }),
            )
            .await["createTenant"]["tenant"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, admin) = create_key(&app, ADMIN_KEY, Some(&t), "ADMIN", name).await;
        tenants.push(t);
        admins.push(admin);
    }
    create_key(&app, &admins[1], None, "VIEWER", "two's viewer").await;

    // Each admin sees its own tenant's entries only.
    let one = entries_as(&app, &admins[0], json!({})).await;
    assert_eq!(one.len(), 2, "{one:#?}");
    assert!(one.iter().all(|e| e["tenantId"] == tenants[0].as_str()));
    let two = entries_as(&app, &admins[1], json!({})).await;
    assert_eq!(two.len(), 3, "{two:#?}");
    assert!(two.iter().all(|e| e["tenantId"] == tenants[1].as_str()));
    // Naming another tenant is FORBIDDEN, naming its own is fine.
    let body = log_as(&app, &admins[0], json!({ "t": tenants[1] })).await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    assert_eq!(
        entries_as(&app, &admins[0], json!({ "t": tenants[0] })).await,
        one
    );
    // The platform admin reads any tenant's log.
    assert_eq!(
        entries_as(&app, ADMIN_KEY, json!({ "t": tenants[1] })).await,
        two
    );
    // Other roles may not read it.
    for role in ["INTEGRATOR", "ANALYST", "VIEWER"] {
        let (_, key) = create_key(&app, &admins[0], None, role, role).await;
        let body = log_as(&app, &key, json!({})).await;
        assert_eq!(code(&body), "FORBIDDEN", "{role}: {body}");
    }
    let (status, body) = app.gql_as(None, LOG, json!({})).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{status} {body}");
    // Bad arguments are the caller's.
    for vars in [
        json!({ "first": -1 }),
        json!({ "first": 1000 }),
        json!({ "after": "not a cursor" }),
        json!({ "t": "not an id" }),
    ] {
        let body = log_as(&app, &admins[0], vars.clone()).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{vars}: {body}");
    }
}
