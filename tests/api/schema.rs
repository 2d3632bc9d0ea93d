//! The schema as a product: every type, field, argument, input field and enum value carries a
//! description, closed sets are enums, and the custom scalars name their specifications.

use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
use serde_json::Value;
use voicegraph::domain::CallEventKind;

/// Introspection of everything a client can see, deprecated members included.
const INTROSPECTION: &str = r#"{
  __schema {
    types {
      kind name description specifiedByURL
      fields(includeDeprecated: true) {
        name description
        args(includeDeprecated: true) { name description }
        type { ...TypeRef }
      }
      inputFields(includeDeprecated: true) { name description type { ...TypeRef } }
      enumValues(includeDeprecated: true) { name description }
    }
  }
}
fragment TypeRef on __Type {
  kind name ofType { kind name ofType { kind name ofType { kind name } } }
}"#;

/// Types the GraphQL spec defines; their descriptions are not ours to write.
const BUILT_IN: &[&str] = &["String", "Int", "Float", "Boolean", "ID"];

async fn introspect<Q, M, S>(schema: &Schema<Q, M, S>) -> Vec<Value>
where
    Q: async_graphql::ObjectType + 'static,
    M: async_graphql::ObjectType + 'static,
    S: async_graphql::SubscriptionType + 'static,
{
    let response = schema.execute(INTROSPECTION).await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    let data = response.data.into_json().unwrap();
    data["__schema"]["types"].as_array().unwrap().clone()
}

fn undocumented(v: &Value) -> bool {
    v["description"]
        .as_str()
        .is_none_or(|d| d.trim().is_empty())
}

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v[key].as_array().into_iter().flatten()
}

/// Every member without a description, as `Type`, `Type.field`, `Type.field(arg)`,
/// `Input.field` or `Enum.VALUE`.
fn missing_descriptions(types: &[Value]) -> Vec<String> {
    let mut missing = Vec::new();
    for t in types {
        let name = t["name"].as_str().unwrap();
        if name.starts_with("__") || BUILT_IN.contains(&name) {
            continue;
        }
        if undocumented(t) {
            missing.push(name.to_string());
        }
        for f in list(t, "fields") {
            let field = format!("{name}.{}", f["name"].as_str().unwrap());
            if undocumented(f) {
                missing.push(field.clone());
            }
            for a in list(f, "args").filter(|a| undocumented(a)) {
                missing.push(format!("{field}({})", a["name"].as_str().unwrap()));
            }
        }
        for f in list(t, "inputFields").filter(|f| undocumented(f)) {
            missing.push(format!("{name}.{}", f["name"].as_str().unwrap()));
        }
        for v in list(t, "enumValues").filter(|v| undocumented(v)) {
            missing.push(format!("{name}.{}", v["name"].as_str().unwrap()));
        }
    }
    missing
}

/// A type reference in SDL notation, e.g. `[CallEventKind!]`.
fn type_ref(t: &Value) -> String {
    match t["kind"].as_str().unwrap() {
        "NON_NULL" => format!("{}!", type_ref(&t["ofType"])),
        "LIST" => format!("[{}]", type_ref(&t["ofType"])),
        _ => t["name"].as_str().unwrap().to_string(),
    }
}

fn find<'a>(types: &'a [Value], name: &str) -> &'a Value {
    types
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no type {name}"))
}

fn member_type(types: &[Value], owner: &str, member: &str) -> String {
    let t = find(types, owner);
    let m = list(t, "fields")
        .chain(list(t, "inputFields"))
        .find(|f| f["name"] == member)
        .unwrap_or_else(|| panic!("no {owner}.{member}"));
    type_ref(&m["type"])
}

#[tokio::test]
async fn every_member_of_the_schema_is_documented() {
    let types = introspect(&voicegraph::graphql::build_schema(None)).await;
    assert!(types.len() > 40, "only {} types", types.len());
    let missing = missing_descriptions(&types);
    assert!(
        missing.is_empty(),
        "{} members have no description:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

/// The check itself finds what is missing, so that a passing run means something.
#[tokio::test]
async fn the_description_check_reports_undocumented_members() {
    struct Undocumented;
    #[Object]
    impl Undocumented {
        async fn field(&self, arg: i32) -> i32 {
            arg
        }
        /// Documented.
        async fn documented(&self, #[graphql(desc = "Documented.")] arg: i32) -> i32 {
            arg
        }
    }
    let schema = Schema::new(Undocumented, EmptyMutation, EmptySubscription);
    let missing = missing_descriptions(&introspect(&schema).await);
    assert_eq!(
        missing,
        [
            "Undocumented",
            "Undocumented.field",
            "Undocumented.field(arg)"
        ]
    );
}

#[tokio::test]
async fn closed_sets_are_enums_and_scalars_name_their_specifications() {
    let types = introspect(&voicegraph::graphql::build_schema(None)).await;
    assert_eq!(member_type(&types, "CallEvent", "kind"), "CallEventKind!");
    assert_eq!(
        member_type(&types, "CallEventFilter", "kinds"),
        "[CallEventKind!]"
    );
    assert_eq!(member_type(&types, "Sentiment", "label"), "SentimentLabel!");
    assert_eq!(
        member_type(&types, "LabelCount", "label"),
        "SentimentLabel!"
    );
    assert_eq!(member_type(&types, "Call", "createdAt"), "DateTime!");
    assert_eq!(member_type(&types, "Call", "metadata"), "JSON");

    let values = |name: &str| -> Vec<String> {
        list(find(&types, name), "enumValues")
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        values("CallEventKind"),
        CallEventKind::ALL
            .iter()
            .map(|k| k.as_str().to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        values("SentimentLabel"),
        ["NEGATIVE", "NEUTRAL", "POSITIVE"]
    );

    for (scalar, url) in [
        ("DateTime", "https://datatracker.ietf.org/doc/html/rfc3339"),
        ("JSON", "https://www.rfc-editor.org/rfc/rfc8259"),
        (
            "Upload",
            "https://github.com/jaydenseric/graphql-multipart-request-spec",
        ),
    ] {
        let t = find(&types, scalar);
        assert_eq!(t["kind"], "SCALAR");
        assert_eq!(t["specifiedByURL"], url, "{scalar}");
        // The committed SDL carries the same, with the description above it.
        let sdl = voicegraph::graphql::sdl();
        let line = format!("scalar {scalar} @specifiedBy(url: \"{url}\")");
        let at = sdl
            .find(&line)
            .unwrap_or_else(|| panic!("the SDL lacks `{line}`"));
        assert!(
            sdl[..at].ends_with("\"\"\"\n"),
            "{scalar} has no description"
        );
    }
    assert!(find(&types, "DateTime")["description"]
        .as_str()
        .unwrap()
        .contains("RFC 3339"));
}
