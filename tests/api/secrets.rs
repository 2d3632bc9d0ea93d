//! The Secrets Manager layer: `fetch` reads a JSON secret from moto, its errors never quote the
//! secret, and `load_settings` merges it over every other layer before the app is built.

use serde_json::json;
use voicegraph::adapters::secrets_manager;
use voicegraph::startup::{Application, Roles};

use crate::{backends, helpers};

const SERVE_ONLY: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

/// Creates a secret with `text` as its string value; returns its name.
async fn create_secret(sdk: &aws_config::SdkConfig, text: &str) -> String {
    let name = backends::unique("voicegraph/test");
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(&name)
        .secret_string(text)
        .send()
        .await
        .expect("create secret");
    name
}

#[tokio::test]
async fn fetch_returns_the_json_object() {
    let _ = crate::require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let text = json!({
        "max_page_size": 7,
        "database_url": "postgres://vg:pw@db.internal/voicegraph",
        "jwt_hs256_secret": "s3cr3t",
    })
    .to_string();
    let id = create_secret(&sdk, &text).await;

    let map = secrets_manager::fetch(&sdk, &id).await.expect("fetch");
    assert_eq!(map.len(), 3);
    assert_eq!(map["max_page_size"], 7);
    assert_eq!(
        map["database_url"],
        "postgres://vg:pw@db.internal/voicegraph"
    );
    assert_eq!(map["jwt_hs256_secret"], "s3cr3t");
}

#[tokio::test]
async fn bad_and_missing_secrets_are_errors_that_do_not_quote_the_secret() {
    let _ = crate::require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;

    for text in [
        "database_url=postgres://vg:hunter2@db/voicegraph",
        "{\"database_url\": hunter2}",
        "[\"hunter2\"]",
        "\"hunter2\"",
    ] {
        let id = create_secret(&sdk, text).await;
        let e = secrets_manager::fetch(&sdk, &id)
            .await
            .expect_err("a secret that is not a JSON object is refused");
        let msg = format!("{e:#} {e:?}");
        assert!(msg.contains(&id), "the error names the secret: {msg}");
        assert!(msg.contains("JSON"), "the error says what is wrong: {msg}");
        assert!(
            !msg.contains("hunter2"),
            "the error quotes the secret: {msg}"
        );
    }

    let missing = backends::unique("voicegraph/missing");
    let e = secrets_manager::fetch(&sdk, &missing)
        .await
        .expect_err("a missing secret is an error");
    assert!(format!("{e:#}").contains(&missing), "{e:#}");
}

/// Without `secret_id` no secret is read, so no AWS access is needed.
#[tokio::test]
async fn settings_without_a_secret_come_from_the_other_layers() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = helpers::layers(dir.path());
    l.set("max_page_size", "50");
    let settings = voicegraph::wiring::load_settings(l)
        .await
        .expect("load settings");
    assert_eq!(settings.max_page_size, 50);
    assert_eq!(settings.secret_id, None);
    let expected = helpers::layers(dir.path())
        .settings()
        .unwrap()
        .database_url();
    assert_eq!(settings.database_url(), expected);
}

/// The secret is the top layer: its database URL wins over the others, and the app really uses
/// it.
#[tokio::test]
async fn the_secret_is_merged_over_the_other_layers() {
    let _ = crate::require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let db = elsewhere.path().join("from-secret.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let id = create_secret(
        &sdk,
        &json!({ "max_page_size": 7, "database_url": url }).to_string(),
    )
    .await;

    let mut l = helpers::layers(data.path());
    // Only the database the secret names (no owner's URL of the suite's Postgres database).
    l.set("migrate_database_url", "")
        .set("database_runtime_role", "");
    l.set("max_page_size", "50")
        .set(
            "database_url",
            format!("sqlite://{}/not-this.db?mode=rwc", data.path().display()),
        )
        .set("secret_id", id.clone());
    let settings = voicegraph::wiring::load_settings(l)
        .await
        .expect("load settings");
    assert_eq!(settings.database_url(), url);
    assert_eq!(settings.max_page_size, 7);
    assert_eq!(settings.secret_id.as_deref(), Some(id.as_str()));

    assert!(!db.exists());
    let app = Application::build(settings, SERVE_ONLY)
        .await
        .expect("app builds on the secret's database");
    assert!(db.exists(), "the database named only in the secret is used");
    assert!(!data.path().join("not-this.db").exists());
    assert!(!data.path().join("voicegraph.db").exists());
    drop(app);
}

/// A secret that cannot be read stops the start-up with an error naming it.
#[tokio::test]
async fn a_missing_secret_stops_loading() {
    let _ = crate::require!(backends::aws_endpoint());
    let dir = tempfile::tempdir().unwrap();
    let missing = backends::unique("voicegraph/missing");
    let mut l = helpers::layers(dir.path());
    l.set("secret_id", missing.clone());
    let e = voicegraph::wiring::load_settings(l)
        .await
        .expect_err("a missing secret is an error");
    assert!(format!("{e:#}").contains(&missing), "{e:#}");
}

/// Password secrets (RDS's `{"username", "password"}` shape, or a bare token) are put into the
/// URLs they belong to, percent-encoded, over any password the URL had; the app connects with
/// them; an unreadable one stops loading without quoting any URL.
#[tokio::test]
async fn password_secrets_go_into_their_urls() {
    let _ = crate::require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let rds = create_secret(
        &sdk,
        &json!({ "username": "voicegraph_owner", "password": "p@ss:w/rd?#%" }).to_string(),
    )
    .await;
    let token = create_secret(&sdk, "redis-token_42").await;
    let app = create_secret(&sdk, &json!({ "password": "app pw" }).to_string()).await;

    let dir = tempfile::tempdir().unwrap();
    let mut l = helpers::layers(dir.path());
    l.set(
        "database_url",
        "postgres://voicegraph_app:old@db.internal:5432/voicegraph",
    )
    .set("database_password_secret_id", app.clone())
    .set(
        "migrate_database_url",
        "postgres://voicegraph_owner@db.internal/voicegraph",
    )
    .set("migrate_database_password_secret_id", rds.clone())
    .set("redis_url", "rediss://cache.internal:6379")
    .set("redis_password_secret_id", token.clone());
    let s = voicegraph::wiring::load_settings(l)
        .await
        .expect("load settings");
    assert_eq!(
        s.database_url(),
        "postgres://voicegraph_app:app%20pw@db.internal:5432/voicegraph"
    );
    assert_eq!(
        s.migrate_database_url.as_deref(),
        Some("postgres://voicegraph_owner:p%40ss%3Aw%2Frd%3F%23%25@db.internal/voicegraph")
    );
    assert_eq!(
        s.redis_url.as_deref(),
        Some("rediss://:redis-token_42@cache.internal:6379")
    );

    // A secret without a password, a missing one, and a password with no URL to go in.
    let no_password = create_secret(&sdk, &json!({ "username": "u" }).to_string()).await;
    let missing = backends::unique("voicegraph/missing");
    for (secret, url) in [
        (no_password.as_str(), Some("postgres://u:hunter2@db/x")),
        (missing.as_str(), Some("postgres://u:hunter2@db/x")),
        (app.as_str(), None),
    ] {
        let mut l = helpers::layers(dir.path());
        l.set("database_url", url.unwrap_or(""))
            .set("database_password_secret_id", secret);
        let e = format!(
            "{:#}",
            voicegraph::wiring::load_settings(l)
                .await
                .expect_err("refused")
        );
        assert!(e.contains("VOICEGRAPH_DATABASE"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("app pw"), "{e}");
    }
}
