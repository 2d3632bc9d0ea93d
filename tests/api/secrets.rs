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
