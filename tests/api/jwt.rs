//! JWT sign-in beside API keys: HS256 with the shared secret, RS256/ES256 from a JWKS served by a
//! small HTTP server in the test (keys generated here), key rotation, bounded refetching, an
//! unreachable JWKS, algorithm confusion and namespaced claims.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use voicegraph::config::Layers;
use voicegraph::services::auth::{self, Caller, Role};
use voicegraph::startup::Roles;

use crate::helpers::{short_call, TestApp};

/// The API alone: no worker, no relay.
const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

const SECRET: &str = "test-hs256-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "voicegraph";

/// A signing key generated for this run, with its public half as a JWK.
struct TestKey {
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    /// The RSA public key as PEM and DER (for the algorithm-confusion attack).
    public_pem: Option<String>,
    public_der: Option<Vec<u8>>,
}

impl TestKey {
    fn rsa() -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePublicKey;
        let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA key");
        let der = private.to_pkcs1_der().expect("PKCS#1 DER");
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let public_der = private
            .to_public_key()
            .to_public_key_der()
            .expect("DER")
            .as_bytes()
            .to_vec();
        let body = base64::engine::general_purpose::STANDARD.encode(&public_der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        let public_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        Self {
            alg: Algorithm::RS256,
            jwk: Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("JWK"),
            encoding,
            public_pem: Some(public_pem),
            public_der: Some(public_der),
        }
    }

    fn p256() -> Self {
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::EncodePrivateKey;
        let private = p256::SecretKey::generate();
        let der = private.to_pkcs8_der().expect("PKCS#8 DER");
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        Self {
            alg: Algorithm::ES256,
            jwk: Jwk::from_encoding_key(&encoding, Algorithm::ES256).expect("JWK"),
            encoding,
            public_pem: None,
            public_der: None,
        }
    }

    /// The public JWK under `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk.common.key_id = Some(kid.to_string());
        serde_json::to_value(jwk).unwrap()
    }

    /// A token signed with this key, naming `kid`.
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_string());
        encode(&header, claims, &self.encoding).expect("sign")
    }
}

// RSA key generation is slow in debug builds: each key is made once per run.
static RSA_A: LazyLock<TestKey> = LazyLock::new(TestKey::rsa);
static RSA_B: LazyLock<TestKey> = LazyLock::new(TestKey::rsa);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a user of `tenant` with `role`, valid for ten minutes; `extra` overrides or (with
/// `null`) removes claims.
fn claims(tenant: &str, role: &str, extra: Value) -> Value {
    let mut c = json!({
        "sub": "user-42",
        "tenant": tenant,
        "role": role,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn hs256(claims: &Value) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

/// A token with the given header, the claims and no signature, built by hand.
fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An app accepting HS256 tokens from `ISSUER` for `AUDIENCE`.
async fn hs256_app(tweak: impl FnOnce(&mut Layers)) -> TestApp {
    TestApp::spawn_with(SERVE, |l| {
        l.set("jwt_hs256_secret", SECRET)
            .set("jwt_issuer", ISSUER)
            .set("jwt_audience", AUDIENCE);
        tweak(l);
    })
    .await
}

async fn create_tenant(app: &TestApp, name: &str) -> String {
    let d = app
        .gql_ok(
            "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
            json!({ "n": name }),
        )
        .await;
    d["createTenant"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `{ viewer }` as the holder of `token`; panics unless it answers.
async fn viewer(app: &TestApp, token: &str) -> Value {
    let (status, body) = app
        .gql_as(
            Some(token),
            "{ viewer { tenant { id } role platformAdmin } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
    body["data"]["viewer"].clone()
}

/// Asserts the token is refused with 401 `UNAUTHENTICATED`; returns the message, which never
/// quotes the token.
async fn refused(app: &TestApp, token: &str) -> String {
    let (status, body) = app.gql_as(Some(token), "{ __typename }", json!({})).await;
    assert_eq!(status, 401, "{body:#}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body:#}"
    );
    assert!(body.get("data").is_none_or(Value::is_null), "{body:#}");
    let msg = body["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!msg.contains(token), "the token is echoed: {msg}");
    msg
}

fn assert_says(msg: &str, want: &str, case: &str) {
    assert!(msg.contains(want), "{case}: expected {want:?} in {msg:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_act_in_their_tenant_with_their_role() {
    let app = hs256_app(|_| {}).await;
    let tenant = create_tenant(&app, "acme").await;

    let analyst = hs256(&claims(&tenant, "analyst", json!({})));
    let v = viewer(&app, &analyst).await;
    assert_eq!(v["tenant"]["id"], tenant);
    assert_eq!(v["role"], "ANALYST");
    assert_eq!(v["platformAdmin"], false);
    // The audience may be a list that contains ours.
    let listed = hs256(&claims(
        &tenant,
        "analyst",
        json!({ "aud": ["dashboard", AUDIENCE] }),
    ));
    assert_eq!(viewer(&app, &listed).await["role"], "ANALYST");

    // An integrator's token submits; a viewer's may neither submit nor tag.
    let integrator = hs256(&claims(&tenant, "integrator", json!({})));
    let (status, body) = app
        .submit(&integrator, short_call(), "audio/wav", json!({}))
        .await;
    assert_eq!(status, 200, "{body:#}");
    assert!(body.get("errors").is_none(), "{body:#}");
    let call = body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer_token = hs256(&claims(&tenant, "viewer", json!({})));
    let (_, body) = app
        .submit(&viewer_token, short_call(), "audio/wav", json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body:#}"
    );
    let (_, body) = app
        .gql_as(
            Some(&viewer_token),
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"vip\"]) { id } }",
            json!({ "id": call }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body:#}"
    );
    // The analyst may tag the same call.
    let (_, body) = app
        .gql_as(
            Some(&analyst),
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"vip\"]) { id } }",
            json!({ "id": call }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body:#}");

    // The same token opens a WebSocket.
    let mut ws = app
        .subscribe(&analyst, "subscription { callEvents { kind } }", json!({}))
        .await;
    ws.ws.close(None).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_refusals_say_what_is_wrong() {
    let app = hs256_app(|_| {}).await;
    let tenant = create_tenant(&app, "acme").await;
    let base = |extra: Value| claims(&tenant, "analyst", extra);

    // Within the default leeway of 10 s an expired token still works.
    let late = hs256(&base(json!({ "exp": now() - 5 })));
    assert_eq!(viewer(&app, &late).await["role"], "ANALYST");

    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &base(json!({})),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases = [
        (
            "expired",
            hs256(&base(json!({ "exp": now() - 120 }))),
            "token expired",
        ),
        (
            "no exp",
            hs256(&base(json!({ "exp": null }))),
            "missing claim `exp`",
        ),
        (
            "before nbf",
            hs256(&base(json!({ "nbf": now() + 120 }))),
            "not yet valid",
        ),
        (
            "wrong issuer",
            hs256(&base(json!({ "iss": "https://evil.example.com/" }))),
            "wrong issuer",
        ),
        (
            "no issuer",
            hs256(&base(json!({ "iss": null }))),
            "missing claim `iss`",
        ),
        (
            "wrong audience",
            hs256(&base(json!({ "aud": "other" }))),
            "wrong audience",
        ),
        (
            "wrong audience list",
            hs256(&base(json!({ "aud": ["a", "b"] }))),
            "wrong audience",
        ),
        (
            "wrong signature",
            hs256_with(b"not-the-secret-but-just-as-long-as-it", &base(json!({}))),
            "invalid signature",
        ),
        (
            "alg none",
            unsigned(json!({ "alg": "none", "typ": "JWT" }), &base(json!({}))),
            "algorithm not allowed",
        ),
        ("HS512", hs512, "algorithm not allowed"),
        (
            "no tenant",
            hs256(&base(json!({ "tenant": null }))),
            "missing claim `tenant`",
        ),
        (
            "tenant not a UUID",
            hs256(&base(json!({ "tenant": "acme" }))),
            "claim `tenant` must be the tenant's id",
        ),
        (
            "unknown tenant",
            hs256(&base(json!({ "tenant": uuid::Uuid::new_v4().to_string() }))),
            "unknown tenant",
        ),
        (
            "no role",
            hs256(&base(json!({ "role": null }))),
            "missing claim `role`",
        ),
        (
            "unknown role",
            hs256(&base(json!({ "role": "superuser" }))),
            "must be one of admin, integrator, analyst, viewer",
        ),
        (
            "not a JWT",
            "abc.def".to_string(),
            "expected an API key (`vg_…`) or a JWT",
        ),
    ];
    for (case, token, want) in cases {
        let msg = refused(&app, &token).await;
        assert_says(&msg, want, case);
    }
    // A signed token for the default tenant as admin is still not the platform admin.
    let default_tenant = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]
        ["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = hs256(&claims(&default_tenant, "admin", json!({})));
    let v = viewer(&app, &admin).await;
    assert_eq!(v["role"], "ADMIN");
    assert_eq!(v["platformAdmin"], false);
    let (_, body) = app
        .gql_as(
            Some(&admin),
            "mutation { createTenant(input: {name: \"x\"}) { tenant { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jwt_settings_jwts_are_refused_and_api_keys_work() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    let tenant = create_tenant(&app, "acme").await;
    let msg = refused(&app, &hs256(&claims(&tenant, "analyst", json!({})))).await;
    assert_says(&msg, "does not accept JWTs", "no JWT settings");
    let msg = refused(&app, "not-a-key").await;
    assert_says(&msg, "expected an API key (`vg_…`)", "neither");
    assert_eq!(
        app.gql_ok("{ viewer { role } }", json!({})).await["viewer"]["role"],
        "ADMIN"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_claim_names() {
    let app = hs256_app(|l| {
        l.set("jwt_tenant_claim", "https://example.com/tenant")
            .set("jwt_role_claim", "https://example.com/role");
    })
    .await;
    let tenant = create_tenant(&app, "acme").await;
    let token = hs256(&claims(
        &tenant,
        "ignored",
        json!({
            "tenant": null,
            "role": null,
            "https://example.com/tenant": tenant,
            "https://example.com/role": "viewer",
        }),
    ));
    let v = viewer(&app, &token).await;
    assert_eq!(v["tenant"]["id"], tenant);
    assert_eq!(v["role"], "VIEWER");
    // The plain names mean nothing here.
    let plain = hs256(&claims(&tenant, "viewer", json!({})));
    let msg = refused(&app, &plain).await;
    assert_says(
        &msg,
        "missing claim `https://example.com/tenant`",
        "plain names",
    );
}

/// The caller a JWT becomes, and the tenant check: one database look-up for a tenant, none after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_callers_carry_expiry_and_subject_and_tenants_are_looked_up_once() {
    // No roles: nothing else touches the database, so the statement count is ours alone.
    let idle = Roles {
        serve: false,
        worker: false,
        relay: false,
    };
    let app = TestApp::spawn_with(idle, |l| {
        l.set("jwt_hs256_secret", SECRET);
    })
    .await;
    let platform = Caller {
        tenant_id: uuid::Uuid::nil(),
        role: Role::Admin,
        key_id: None,
        platform_admin: true,
        expires_at: None,
        subject: None,
    };
    let tenant = auth::create_tenant(&app.state.store, &platform, "acme")
        .await
        .unwrap()
        .id;
    let exp = now() + 300;
    let token = hs256(&claims(
        &tenant.to_string(),
        "integrator",
        json!({ "exp": exp, "iss": null, "aud": null }),
    ));

    let before = app.statements();
    let caller = app.state.auth.authenticate(&token).await.unwrap();
    assert_eq!(caller.tenant_id, tenant);
    assert_eq!(caller.role, Role::Integrator);
    assert_eq!(caller.key_id, None);
    assert!(!caller.platform_admin);
    assert_eq!(caller.subject.as_deref(), Some("user-42"));
    assert_eq!(caller.expires_at.unwrap().timestamp(), exp);
    let after_first = app.statements();
    assert!(after_first > before, "the first token looks the tenant up");

    let other = hs256(&claims(
        &tenant.to_string(),
        "viewer",
        json!({ "sub": "user-43", "iss": null, "aud": null }),
    ));
    let caller = app.state.auth.authenticate(&other).await.unwrap();
    assert_eq!(caller.role, Role::Viewer);
    assert_eq!(
        app.statements(),
        after_first,
        "a known tenant costs no query"
    );

    // API keys still resolve as before, without expiry or subject.
    let key = app
        .state
        .auth
        .authenticate(crate::helpers::ADMIN_KEY)
        .await
        .unwrap();
    assert!(key.platform_admin && key.key_id.is_some());
    assert_eq!((key.expires_at, key.subject), (None, None));
}

/// What the test JWKS server answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Unavailable,
}

/// A JWKS endpoint whose keys and availability the test changes, counting requests.
struct JwksServer {
    keys: Mutex<Vec<Value>>,
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    /// `Cache-Control` sent with the keys, if any.
    cache_control: Mutex<Option<String>>,
    url: String,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let server = Arc::new(Self {
            keys: Mutex::new(keys),
            mode: Mutex::new(Mode::Serve),
            requests: AtomicUsize::new(0),
            cache_control: Mutex::new(None),
            url,
        });
        async fn jwks(State(s): State<Arc<JwksServer>>) -> axum::response::Response {
            s.requests.fetch_add(1, Ordering::SeqCst);
            if *s.mode.lock().unwrap() == Mode::Unavailable {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let body = json!({ "keys": *s.keys.lock().unwrap() });
            let mut resp = axum::Json(body).into_response();
            if let Some(cc) = s.cache_control.lock().unwrap().clone() {
                resp.headers_mut()
                    .insert("cache-control", cc.parse().unwrap());
            }
            resp
        }
        let router = axum::Router::new()
            .route("/jwks.json", axum::routing::get(jwks))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        server
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An app taking keys from `jwks`, with the refresh intervals given (seconds).
async fn jwks_app(
    url: &str,
    min_refresh: u64,
    refresh: u64,
    tweak: impl FnOnce(&mut Layers),
) -> TestApp {
    TestApp::spawn_with(SERVE, |l| {
        l.set("jwt_jwks_url", url)
            .set("jwt_issuer", ISSUER)
            .set("jwt_audience", AUDIENCE)
            .set("jwt_jwks_min_refresh_secs", min_refresh.to_string())
            .set("jwt_jwks_refresh_secs", refresh.to_string());
        tweak(l);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_from_the_jwks() {
    let ec = TestKey::p256();
    let server = JwksServer::start(vec![RSA_A.jwk("rsa-1"), ec.jwk("ec-1")]).await;
    let app = jwks_app(&server.url, 30, 600, |_| {}).await;
    let tenant = create_tenant(&app, "acme").await;

    let rs = RSA_A.sign("rsa-1", &claims(&tenant, "analyst", json!({})));
    let v = viewer(&app, &rs).await;
    assert_eq!(
        (v["tenant"]["id"].as_str(), v["role"].as_str()),
        (Some(tenant.as_str()), Some("ANALYST"))
    );
    let es = ec.sign("ec-1", &claims(&tenant, "viewer", json!({})));
    assert_eq!(viewer(&app, &es).await["role"], "VIEWER");
    assert_eq!(server.requests(), 1, "one fetch serves both keys");

    // The key decides the algorithm: an ES256 token naming the RSA key is refused, and so is
    // one signed by another key under a known kid.
    let swapped = ec.sign("rsa-1", &claims(&tenant, "admin", json!({})));
    assert_says(
        &refused(&app, &swapped).await,
        "algorithm not allowed",
        "ES256 on an RSA kid",
    );
    let impostor = RSA_B.sign("rsa-1", &claims(&tenant, "admin", json!({})));
    assert_says(
        &refused(&app, &impostor).await,
        "invalid signature",
        "another RSA key",
    );
    // Claims are checked as for HS256.
    let expired = RSA_A.sign(
        "rsa-1",
        &claims(&tenant, "admin", json!({ "exp": now() - 120 })),
    );
    assert_says(
        &refused(&app, &expired).await,
        "token expired",
        "expired RS256",
    );
    // No kid, no key.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = None;
    let no_kid = encode(
        &header,
        &claims(&tenant, "admin", json!({})),
        &RSA_A.encoding,
    )
    .unwrap();
    assert_says(&refused(&app, &no_kid).await, "no `kid`", "no kid");
    // HS256 is not accepted without a secret.
    let hs = hs256(&claims(&tenant, "admin", json!({})));
    assert_says(
        &refused(&app, &hs).await,
        "algorithm not allowed",
        "HS256 without a secret",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_new_keys_work_at_once_and_removed_keys_stop_after_the_refresh() {
    let server = JwksServer::start(vec![RSA_A.jwk("a")]).await;
    // Refetch on every unknown kid; keys are fresh for 2 s.
    let app = jwks_app(&server.url, 0, 2, |_| {}).await;
    let tenant = create_tenant(&app, "acme").await;
    let token = |key: &TestKey, kid: &str| key.sign(kid, &claims(&tenant, "viewer", json!({})));

    viewer(&app, &token(&RSA_A, "a")).await;
    assert_eq!(server.requests(), 1);

    // The provider publishes key b and signs with it: its tokens work at once.
    server.set_keys(vec![RSA_A.jwk("a"), RSA_B.jwk("b")]);
    viewer(&app, &token(&RSA_B, "b")).await;
    let fetched_b = Instant::now();
    assert_eq!(
        server.requests(),
        2,
        "an unknown kid fetches the JWKS again"
    );

    // Then it removes key a: once the keys are older than the refresh period, a is refused.
    server.set_keys(vec![RSA_B.jwk("b")]);
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(fetched_b.elapsed())).await;
    let msg = refused(&app, &token(&RSA_A, "a")).await;
    assert_says(&msg, "unknown key id `a`", "removed key");
    assert!(server.requests() >= 3, "the stale set was fetched again");
    viewer(&app, &token(&RSA_B, "b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_the_jwks_once() {
    let server = JwksServer::start(vec![RSA_A.jwk("a")]).await;
    let app = Arc::new(jwks_app(&server.url, 3600, 3600, |_| {}).await);
    let tenant = create_tenant(&app, "acme").await;

    // 50 tokens with random kids at once, on a cold cache: they share one fetch, and the kids it
    // did not bring are refused without another.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let app = app.clone();
        let token = RSA_A.sign(
            &uuid::Uuid::new_v4().to_string(),
            &claims(&tenant, "viewer", json!({})),
        );
        tasks.spawn(async move { refused(&app, &token).await });
    }
    while let Some(msg) = tasks.join_next().await {
        assert_says(&msg.unwrap(), "unknown key id", "random kid");
    }
    assert_eq!(server.requests(), 1);

    // The known key works from the cache.
    viewer(
        &app,
        &RSA_A.sign("a", &claims(&tenant, "viewer", json!({}))),
    )
    .await;
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jwks_is_unauthenticated() {
    let server = JwksServer::start(vec![RSA_A.jwk("a")]).await;
    server.set_mode(Mode::Unavailable);
    let app = jwks_app(&server.url, 0, 600, |_| {}).await;
    let tenant = create_tenant(&app, "acme").await;
    let token = |key: &TestKey, kid: &str| key.sign(kid, &claims(&tenant, "viewer", json!({})));

    let msg = refused(&app, &token(&RSA_A, "a")).await;
    assert_says(&msg, "could not be fetched", "JWKS down");
    assert_says(&msg, "503", "JWKS down");

    // Back up: the key works; down again: the cached key keeps working, a new one cannot be
    // checked.
    server.set_mode(Mode::Serve);
    viewer(&app, &token(&RSA_A, "a")).await;
    server.set_mode(Mode::Unavailable);
    viewer(&app, &token(&RSA_A, "a")).await;
    let msg = refused(&app, &token(&RSA_B, "b")).await;
    assert_says(&msg, "could not be fetched", "new key while down");

    // Nothing answering at all: a listener that hangs up on every connection.
    let hangup = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", hangup.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = hangup.accept().await {
            drop(socket);
        }
    });
    let app = jwks_app(&url, 0, 600, |_| {}).await;
    let tenant = create_tenant(&app, "acme").await;
    let msg = refused(
        &app,
        &RSA_A.sign("a", &claims(&tenant, "viewer", json!({}))),
    )
    .await;
    assert_says(&msg, "could not be fetched", "connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let server = JwksServer::start(vec![RSA_A.jwk("a")]).await;
    let pem = RSA_A.public_pem.clone().unwrap();
    let der = RSA_A.public_der.clone().unwrap();
    let forge = |tenant: &str| {
        let c = claims(tenant, "admin", json!({}));
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("a".into());
        [pem.as_bytes(), der.as_slice()]
            .map(|secret| encode(&header, &c, &EncodingKey::from_secret(secret).unwrap()).unwrap())
    };

    // Keys from the JWKS only: HS256 is not an algorithm this server accepts.
    let app = jwks_app(&server.url, 30, 600, |_| {}).await;
    let tenant = create_tenant(&app, "acme").await;
    for token in forge(&tenant) {
        assert_says(
            &refused(&app, &token).await,
            "algorithm not allowed",
            "JWKS only",
        );
    }
    // With an HS256 secret as well, HS256 tokens are checked against the secret alone.
    let app = jwks_app(&server.url, 30, 600, |l| {
        l.set("jwt_hs256_secret", SECRET);
    })
    .await;
    let tenant = create_tenant(&app, "acme").await;
    for token in forge(&tenant) {
        assert_says(
            &refused(&app, &token).await,
            "invalid signature",
            "JWKS and secret",
        );
    }
    // The real key still works there.
    viewer(
        &app,
        &RSA_A.sign("a", &claims(&tenant, "viewer", json!({}))),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_max_age_shortens_the_refresh() {
    let server = JwksServer::start(vec![RSA_A.jwk("a")]).await;
    *server.cache_control.lock().unwrap() = Some("public, max-age=1".into());
    // The configured refresh is an hour, but the provider says one second.
    let app = jwks_app(&server.url, 0, 3600, |_| {}).await;
    let tenant = create_tenant(&app, "acme").await;
    let token = RSA_A.sign("a", &claims(&tenant, "viewer", json!({})));
    viewer(&app, &token).await;
    let fetched = Instant::now();
    assert_eq!(server.requests(), 1);
    server.set_keys(vec![]);
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(fetched.elapsed())).await;
    assert_says(
        &refused(&app, &token).await,
        "unknown key id",
        "removed after max-age",
    );
}

/// API keys are recognised by their prefix, so a bootstrap key without it could never sign in.
#[tokio::test]
async fn a_bootstrap_key_without_the_api_key_prefix_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = crate::helpers::layers(dir.path());
    l.set("bootstrap_admin_key", "platform-admin-secret");
    let err = voicegraph::startup::Application::build(l.settings().unwrap(), SERVE)
        .await
        .err()
        .expect("the app refuses to start");
    assert!(
        err.to_string()
            .contains("VOICEGRAPH_BOOTSTRAP_ADMIN_KEY must start with `vg_`"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Expiry on live connections.
// ---------------------------------------------------------------------------------------------

/// Reads until the server closes the socket; returns the close code (panics after `within`).
async fn close_code(ws: &mut crate::helpers::Subscription, within: Duration) -> u16 {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ws.ws.next()).await {
            Err(_) => panic!("not closed within {within:?}"),
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"ping\"") => {
                ws.send(json!({ "type": "pong" })).await
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => return f.code.into(),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("ended without a close frame: {other:?}"),
        }
    }
}

async fn socket_with(app: &TestApp, token: &str) -> crate::helpers::Subscription {
    let mut ws = crate::helpers::Subscription::connect(&app.addr, "graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
        .await;
    let ack = ws.recv(Duration::from_secs(5)).await.expect("ack");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { callEvents(after: \"0\") { kind callId } }" } }))
        .await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_jwt_ends_its_socket_unless_refreshed_in_band() {
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        l.set("jwt_hs256_secret", SECRET)
            .set("jwt_issuer", ISSUER)
            .set("jwt_audience", AUDIENCE);
    })
    .await;
    let tenant = create_tenant(&app, "expiring").await;
    let other = create_tenant(&app, "other").await;
    // Valid for 2 to 3 s: long enough to refresh first on a slow machine.
    let short = |tenant: &str| hs256(&claims(tenant, "viewer", json!({ "exp": now() + 3 })));
    let long = |tenant: &str, role: &str| hs256(&claims(tenant, role, json!({})));

    // Not refreshed: closed with 4403 once the token expires (and not long before).
    let started = Instant::now();
    let mut plain = socket_with(&app, &short(&tenant)).await;
    // Refreshed in band with a ping: stays, and keeps streaming.
    let mut refreshed = socket_with(&app, &short(&tenant)).await;
    refreshed
        .send(json!({ "type": "ping", "payload": { "Authorization": format!("Bearer {}", long(&tenant, "viewer")) } }))
        .await;
    let pong = refreshed.recv(Duration::from_secs(5)).await.expect("pong");
    assert_eq!(pong["type"], "pong", "{pong}");
    // Refreshing for another tenant, or with a bad token, is refused.
    let mut hijack = socket_with(&app, &short(&tenant)).await;
    hijack
        .send(json!({ "type": "ping", "payload": { "Authorization": format!("Bearer {}", long(&other, "viewer")) } }))
        .await;
    let mut garbage = socket_with(&app, &short(&tenant)).await;
    garbage
        .send(json!({ "type": "ping", "payload": { "Authorization": "Bearer not.a.jwt" } }))
        .await;
    let mut promoted = socket_with(&app, &short(&tenant)).await;
    promoted
        .send(json!({ "type": "ping", "payload": { "Authorization": format!("Bearer {}", long(&tenant, "admin")) } }))
        .await;
    assert_eq!(close_code(&mut hijack, Duration::from_secs(5)).await, 4403);
    assert_eq!(close_code(&mut garbage, Duration::from_secs(5)).await, 4403);
    assert_eq!(
        close_code(&mut promoted, Duration::from_secs(5)).await,
        4403
    );

    assert_eq!(close_code(&mut plain, Duration::from_secs(10)).await, 4403);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed after {:?}, before the token expired",
        started.elapsed()
    );
    // The refreshed one outlived the first token and still gets its tenant's events (the
    // platform admin's call is in another tenant and does not show).
    app.submit_ok(short_call(), json!({})).await;
    assert!(
        refreshed.recv(Duration::from_millis(500)).await.is_none(),
        "another tenant's call leaked"
    );
    let mut key = app
        .gql_ok(
            "mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: INTEGRATOR, name: \"i\"}) { secret } }",
            json!({ "t": tenant }),
        )
        .await;
    let key = key["createApiKey"]["secret"].take();
    let (status, body) = app
        .submit(key.as_str().unwrap(), short_call(), "audio/wav", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mine = body["data"]["submitCall"]["call"]["id"].clone();
    let e = refreshed.next_data(Duration::from_secs(10)).await;
    assert_eq!(e["callEvents"]["callId"], mine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_jwt_ends_its_sse_stream() {
    let app = hs256_app(|_| {}).await;
    let tenant = create_tenant(&app, "sse").await;
    let token = hs256(&claims(&tenant, "viewer", json!({ "exp": now() + 2 })));
    let mut resp = app
        .client
        .post(app.url("/graphql"))
        .header("accept", "text/event-stream")
        .bearer_auth(&token)
        .json(&json!({ "query": "subscription { callEvents { kind } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("event: complete") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("the stream did not end at expiry: {other:?} after {text:?}"),
        }
    }
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    assert!(text.contains("token expired"), "{text}");
}
