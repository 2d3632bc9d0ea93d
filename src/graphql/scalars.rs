//! The schema's own scalars, `DateTime` and `JSON`: real descriptions, `@specifiedBy` URLs, and
//! input errors that name the expected format with `extensions.code` `BAD_USER_INPUT`.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime, SecondsFormat, Utc};

/// A point in time, `DateTime` in GraphQL (async-graphql's own `DateTime<Utc>` scalar carries no
/// useful description).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t)
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(t: Timestamp) -> Self {
        t.0
    }
}

fn bad_input<T: async_graphql::InputType>(message: String) -> InputValueError<T> {
    InputValueError::custom(message).with_extension("code", "BAD_USER_INPUT")
}

/// A point in time as an RFC 3339 date-time string. Output is always in UTC with the offset
/// written `+00:00` and as many fractional-second digits as needed (e.g.
/// `2026-11-24T09:00:00+00:00`, `2026-11-24T09:00:00.250+00:00`). Input accepts any RFC 3339
/// date-time with a `Z` or numeric offset (e.g. `2026-11-24T10:00:00+01:00`) and is normalised to
/// UTC; a value without an offset or in another format is refused with `BAD_USER_INPUT`.
#[Scalar(
    name = "DateTime",
    specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339"
)]
impl ScalarType for Timestamp {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(s) = &value else {
            return Err(bad_input(format!(
                "expected an RFC 3339 date-time string such as \"2026-11-24T09:00:00Z\", found {value}"
            )));
        };
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self(t.with_timezone(&Utc)))
            .map_err(|e| {
                bad_input(format!(
                    "{s:?} is not an RFC 3339 date-time with an offset, such as \"2026-11-24T09:00:00Z\" ({e})"
                ))
            })
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::AutoSi, false))
    }
}

/// Any JSON value, `JSON` in GraphQL (async-graphql's `Json` has no `@specifiedBy`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Json(pub serde_json::Value);

/// Any JSON value, sent and received as itself (an object, array, string, number, boolean or
/// null), not as a string holding JSON. Where a field narrows it (e.g. `metadata` must be an
/// object), its description says so.
#[Scalar(
    name = "JSON",
    specified_by_url = "https://www.rfc-editor.org/rfc/rfc8259"
)]
impl ScalarType for Json {
    fn parse(value: Value) -> InputValueResult<Self> {
        value
            .into_json()
            .map(Self)
            .map_err(|e| bad_input(format!("not a JSON value: {e}")))
    }

    fn to_value(&self) -> Value {
        Value::from_json(self.0.clone()).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Timestamp, String> {
        <Timestamp as ScalarType>::parse(Value::String(s.into())).map_err(|e| {
            let e = e.into_server_error(Default::default());
            let code = e
                .extensions
                .as_ref()
                .and_then(|x| x.get("code").cloned())
                .unwrap_or(Value::Null);
            format!("{code}: {}", e.message)
        })
    }

    #[test]
    fn date_times_with_any_offset_become_utc() {
        let t = parse("2026-11-24T10:30:00+01:30").unwrap();
        assert_eq!(
            t.to_value(),
            Value::String("2026-11-24T09:00:00+00:00".into())
        );
        let z = parse("2026-11-24T09:00:00.250Z").unwrap();
        assert_eq!(
            z.to_value(),
            Value::String("2026-11-24T09:00:00.250+00:00".into())
        );
        // Output matches what chrono's `to_rfc3339` wrote before this scalar existed.
        assert_eq!(z.to_value(), Value::String(z.0.to_rfc3339()));
    }

    #[test]
    fn bad_date_times_name_the_format_and_the_code() {
        for bad in ["2026-11-24", "2026-11-24T09:00:00", "yesterday", ""] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("\"BAD_USER_INPUT\": "), "{bad:?}: {e}");
            assert!(e.contains("RFC 3339"), "{bad:?}: {e}");
        }
        let e = <Timestamp as ScalarType>::parse(Value::Number(5.into()))
            .unwrap_err()
            .into_server_error(Default::default());
        assert!(e.message.contains("RFC 3339"), "{}", e.message);
    }

    #[test]
    fn json_is_any_value_both_ways() {
        let v = serde_json::json!({ "a": [1, "two", null, true, { "b": 2.5 }] });
        let parsed = <Json as ScalarType>::parse(Value::from_json(v.clone()).unwrap()).unwrap();
        assert_eq!(parsed.0, v);
        assert_eq!(parsed.to_value(), Value::from_json(v).unwrap());
        assert_eq!(
            <Json as ScalarType>::parse(Value::Null).unwrap().0,
            serde_json::Value::Null
        );
    }
}
