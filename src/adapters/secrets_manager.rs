//! Secrets Manager: reads the JSON secret whose keys are setting names, for the wiring to merge
//! over the other configuration layers. Errors name the secret, never its content.

use anyhow::Context;
use serde_json::{Map, Value};

/// Fetches `secret_id` (name or ARN) and returns its JSON object.
pub async fn fetch(
    sdk: &aws_config::SdkConfig,
    secret_id: &str,
) -> anyhow::Result<Map<String, Value>> {
    let text = fetch_string(sdk, secret_id).await?;
    parse(secret_id, &text)
}

/// Fetches a password secret: the `password` of a JSON object (how RDS-managed and generated
/// secrets keep it), or else the whole string.
pub async fn fetch_password(
    sdk: &aws_config::SdkConfig,
    secret_id: &str,
) -> anyhow::Result<String> {
    let text = fetch_string(sdk, secret_id).await?;
    password(secret_id, &text)
}

async fn fetch_string(sdk: &aws_config::SdkConfig, secret_id: &str) -> anyhow::Result<String> {
    let response = crate::adapters::aws::secrets_client(sdk)
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .with_context(|| format!("reading secret {secret_id:?} from Secrets Manager"))?;
    response
        .secret_string()
        .map(str::to_string)
        .with_context(|| format!("secret {secret_id:?} has no string value"))
}

fn password(secret_id: &str, text: &str) -> anyhow::Result<String> {
    let password = if text.trim_start().starts_with('{') {
        match parse(secret_id, text)?.get("password") {
            Some(Value::String(p)) => p.clone(),
            _ => anyhow::bail!("secret {secret_id:?} has no string `password`"),
        }
    } else {
        text.to_string()
    };
    anyhow::ensure!(
        !password.is_empty(),
        "secret {secret_id:?} holds an empty password"
    );
    Ok(password)
}

/// Parses the secret's text. Only the position of a syntax error is reported: serde's messages
/// may quote the offending input, which is secret.
fn parse(secret_id: &str, text: &str) -> anyhow::Result<Map<String, Value>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "secret {secret_id:?} is not valid JSON (error at line {} column {}): store the settings as a JSON object",
            e.line(),
            e.column()
        )
    })?;
    let kind = match value {
        Value::Object(map) => return Ok(map),
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
    };
    anyhow::bail!(
        "secret {secret_id:?} is {kind}, not a JSON object of settings (e.g. {{\"database_url\": \"postgres://…\"}})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_and_errors_hide_the_content() {
        let map = parse(
            "s",
            r#"{"database_url": "postgres://u:pw@h/db", "max_page_size": 7}"#,
        )
        .unwrap();
        assert_eq!(map["max_page_size"], 7);
        for bad in [
            "hunter2-not-json",
            "\"hunter2-string\"",
            "[\"hunter2\"]",
            "{\"a\": hunter2}",
            "",
        ] {
            let e = format!("{:#}", parse("vg/prod", bad).unwrap_err());
            assert!(e.contains("vg/prod"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_password_is_the_objects_password_or_the_whole_string() {
        let rds = r#"{"username": "voicegraph_owner", "password": "p@ss:w/rd"}"#;
        assert_eq!(password("s", rds).unwrap(), "p@ss:w/rd");
        assert_eq!(password("s", "plain-token").unwrap(), "plain-token");
        for bad in [
            r#"{"username": "hunter2"}"#,
            r#"{"password": 7}"#,
            "",
            "{hunter2",
        ] {
            let e = format!("{:#}", password("vg/db", bad).unwrap_err());
            assert!(e.contains("vg/db") && !e.contains("hunter2"), "{e}");
        }
    }
}
