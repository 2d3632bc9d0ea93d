//! The Gemini insights adapter called directly against the stand-in server: what it asks for
//! (the answer's schema, the tenant's categories in the prompt), and how the windows' action
//! items, issues, categories, intent and outcome are checked and stitched onto the call's
//! grounded segments.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use voicegraph::adapters::gemini::insights::{
    GeminiInsights, GeminiInsightsConfig, PROMPT_VERSION,
};
use voicegraph::adapters::gemini::{GeminiClient, GeminiConfig};
use voicegraph::domain::{
    AnalysisRequest, CallOutcome, CategoryMatch, CategoryRule, Insights, InsightsInput, Quote,
};
use voicegraph::ports::{AnalyzeError, Audio, InsightsSource};

use crate::gemini_server::{GeminiServer, Reply};
use crate::helpers::wav;

const MODEL: &str = "gemini-2.5-flash";

fn adapter(server: &GeminiServer) -> GeminiInsights {
    let mut config = GeminiConfig::new(server.base_url(), SecretString::from(server.key()), MODEL);
    config.request_timeout = Duration::from_secs(20);
    config.max_attempts = 1;
    config.backoff_base = Duration::from_millis(20);
    let client = GeminiClient::new(config).unwrap();
    // 10 s windows overlapping by 4 s: a 16 s call is windows at 0–10 s and 6–16 s, the first
    // speaking for 0–8 s and the second for 8 s on.
    GeminiInsights::new(
        client,
        GeminiInsightsConfig {
            model: MODEL.into(),
            window_ms: 10_000,
            overlap_ms: 4_000,
            inline_limit_bytes: u64::MAX,
            parallel_windows: 2,
        },
    )
}

fn rule(name: &str, instructions: &str, keywords: &[&str]) -> CategoryRule {
    CategoryRule {
        id: uuid::Uuid::new_v4(),
        name: name.into(),
        instructions: Some(instructions.into()),
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
    }
}

fn rules() -> Vec<CategoryRule> {
    vec![
        rule(
            "Billing",
            "the caller disputes a charge or an invoice",
            &["invoice", "charged twice"],
        ),
        rule(
            "Cancellation",
            "the customer asks to cancel a plan",
            &["cancel", "close my account"],
        ),
        rule("Unused", "the caller praises the weather", &["sunshine"]),
    ]
}

/// agent 1.0–2.5 s, customer 3.0–5.0 s, agent 6.5–7.5 s, customer 8.5–9.5 s, agent 12–14 s.
fn long_call() -> Vec<u8> {
    wav(
        16.0,
        2,
        8000,
        &[
            (0, 1.0, 2.5),
            (1, 3.0, 5.0),
            (0, 6.5, 7.5),
            (1, 8.5, 9.5),
            (0, 12.0, 14.0),
        ],
    )
}

async fn run(
    server: &GeminiServer,
    audio: Vec<u8>,
    categories: Vec<CategoryRule>,
) -> Result<Insights, AnalyzeError> {
    let facts = voicegraph::adapters::local::acoustic::facts(&audio).unwrap();
    let request = AnalysisRequest {
        categories,
        ..Default::default()
    };
    adapter(server)
        .insights(
            &Audio::Bytes(audio.into()),
            InsightsInput::of(facts, request),
        )
        .await
}

/// Which window a request is for (0-based), from its first text part.
fn window_of(request: &Value) -> usize {
    let text = request["contents"][0]["parts"][0]["text"].as_str().unwrap();
    let n: usize = text
        .strip_prefix("Window ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    n - 1
}

fn segment(speaker: &str, start: f64, end: f64, text: &str) -> Value {
    json!({"speaker": speaker, "startSeconds": start, "endSeconds": end, "text": text, "sentiment": 0.0})
}

fn answer(segments: Vec<Value>, extra: Value) -> Value {
    let mut a = json!({
        "segments": segments, "summary": "A billing call.", "sentiment": 0.0, "topics": [],
        "actionItems": [], "issues": [], "intent": "",
    });
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

/// The two windows' answers. Times are window-relative: the second window starts at 6 s.
fn two_windows(outcome_of_last: &str) -> impl Fn(&Value, &[(String, Vec<u8>)]) -> Reply {
    let last = outcome_of_last.to_string();
    move |request, _| {
        let a = if window_of(request) == 0 {
            answer(
                vec![
                    segment("agent", 1.0, 2.5, "Hello, how can I help?"),
                    // Empty words are dropped: the segments after it keep their citations.
                    segment("agent", 2.6, 2.8, "  "),
                    segment(
                        "customer",
                        3.0,
                        5.0,
                        "My invoice is wrong, I was charged twice.",
                    ),
                    segment("agent", 6.5, 7.5, "I will send a corrected invoice."),
                    // Starts at 8.5 s: the second window's to keep.
                    segment("customer", 8.5, 9.5, "Please also cancel my plan."),
                ],
                json!({
                    "actionItems": [
                        {"text": "Send a corrected invoice", "segments": [3]},
                        // Cites only the segment this window does not keep.
                        {"text": "Cancel the plan", "segments": [4]},
                        // Cites only words that are not there.
                        {"text": "Say nothing", "segments": [1]},
                    ],
                    "issues": [{"text": "Invoice is wrong", "segments": [2, 1]}],
                    "intent": "Dispute an invoice",
                    "outcome": "UNRESOLVED",
                    "categories": [
                        {"name": "Billing", "segments": [3, 2]},
                        {"name": "Cancellation", "segments": [4]},
                    ],
                }),
            )
        } else {
            answer(
                vec![
                    // 6.5 s: the first window's.
                    segment("agent", 0.5, 1.5, "I will send a corrected invoice."),
                    segment("customer", 2.5, 3.5, "Please also cancel my plan."),
                    segment("agent", 6.0, 8.0, "I'll call you back tomorrow to confirm."),
                ],
                json!({
                    "actionItems": [
                        {"text": "send a corrected invoice", "segments": [0]},
                        {"text": "cancel the plan", "segments": [1]},
                        {"text": "Call back tomorrow", "segments": [2, 2]},
                    ],
                    "issues": [{"text": "invoice is WRONG", "segments": [1]}],
                    "intent": "Cancel a plan",
                    "outcome": last,
                    "categories": [
                        {"name": "Cancellation", "segments": [1]},
                        {"name": "Billing", "segments": [0]},
                    ],
                }),
            )
        };
        Reply::json(a, (100, 20, 120))
    }
}

fn schema_of(request: &Value) -> &Value {
    &request["generationConfig"]["responseSchema"]
}

#[tokio::test]
async fn the_request_asks_for_cited_insights_and_lists_the_categories() {
    let server = GeminiServer::start().await;
    server.answer_with(two_windows("FOLLOW_UP"));
    run(&server, long_call(), rules()).await.unwrap();
    let requests = server.generate_requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        let body = r.json.as_ref().unwrap();
        let props = &schema_of(body)["properties"];
        for cited in ["actionItems", "issues"] {
            let item = &props[cited]["items"];
            assert_eq!(item["properties"]["text"]["type"], "STRING", "{cited}");
            assert_eq!(item["properties"]["segments"]["items"]["type"], "INTEGER");
        }
        assert_eq!(props["intent"]["type"], "STRING");
        assert_eq!(
            props["outcome"]["enum"],
            json!(["RESOLVED", "UNRESOLVED", "FOLLOW_UP", "ESCALATED"])
        );
        let category = &props["categories"]["items"]["properties"];
        assert_eq!(
            category["name"]["enum"],
            json!(["Billing", "Cancellation", "Unused"])
        );
        assert_eq!(category["segments"]["items"]["type"], "INTEGER");
        let required = schema_of(body)["required"].as_array().unwrap();
        for name in ["actionItems", "issues", "intent", "categories"] {
            assert!(required.contains(&json!(name)), "{name} in {required:?}");
        }
        let prompt: String = body["contents"][0]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for c in rules() {
            assert!(prompt.contains(&c.name), "{prompt}");
            assert!(
                prompt.contains(c.instructions.as_deref().unwrap()),
                "{prompt}"
            );
            for k in &c.keywords {
                assert!(prompt.contains(&format!("\"{k}\"")), "{k}: {prompt}");
            }
        }
        let system = body["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .unwrap();
        assert!(system.contains("starting at 0"), "{system}");
    }

    // Without categories, the schema and the prompt leave them out.
    let server = GeminiServer::start().await;
    server.answer_with(two_windows("FOLLOW_UP"));
    let err = run(&server, long_call(), vec![]).await.unwrap_err();
    // The stand-in still answers categories, which were not asked for.
    assert!(err.to_string().contains("unknown category"), "{err}");
    let body = server.generate_requests()[0].json.clone().unwrap();
    assert!(schema_of(&body)["properties"].get("categories").is_none());
    assert!(!schema_of(&body)["required"]
        .as_array()
        .unwrap()
        .contains(&json!("categories")));
    let texts = body["contents"][0]["parts"].to_string();
    assert!(!texts.contains("Categories"), "{texts}");
}

#[tokio::test]
async fn two_windows_are_stitched_onto_the_grounded_segments() {
    let server = GeminiServer::start().await;
    server.answer_with(two_windows("FOLLOW_UP"));
    let rules = rules();
    let i = run(&server, long_call(), rules.clone()).await.unwrap();
    let texts: Vec<&str> = i
        .segments
        .iter()
        .map(|s| s.text.as_deref().unwrap())
        .collect();
    // Each stretch of speech once, in time order; the empty segment is gone.
    assert_eq!(
        texts,
        vec![
            "Hello, how can I help?",
            "My invoice is wrong, I was charged twice.",
            "I will send a corrected invoice.",
            "Please also cancel my plan.",
            "I'll call you back tomorrow to confirm.",
        ]
    );
    assert_eq!(
        i.action_items,
        vec![
            Quote::new("Send a corrected invoice", vec![2]),
            // The first window's citation lay in the second's part: the second's counts.
            Quote::new("cancel the plan", vec![3]),
            Quote::new("Call back tomorrow", vec![4]),
        ]
    );
    // The same issue in both windows, whatever the case: one quote, both segments.
    assert_eq!(i.issues, vec![Quote::new("Invoice is wrong", vec![1, 3])]);
    assert_eq!(
        i.categories,
        vec![
            CategoryMatch {
                category_id: rules[0].id,
                name: "Billing".into(),
                segments: vec![1, 2],
            },
            CategoryMatch {
                category_id: rules[1].id,
                name: "Cancellation".into(),
                segments: vec![3],
            },
        ]
    );
    // The first window's intent; the last window's outcome.
    assert_eq!(i.intent.as_deref(), Some("Dispute an invoice"));
    assert_eq!(i.outcome, Some(CallOutcome::FollowUp));
    assert_eq!(i.model.as_deref(), Some(MODEL));
    assert_eq!(i.prompt_version.as_deref(), Some(PROMPT_VERSION));
    for q in i.action_items.iter().chain(&i.issues) {
        assert!(q.segments.iter().all(|&s| s < i.segments.len()), "{q:?}");
    }

    // When the last window does not say how the call ended, an earlier one that did decides.
    let server = GeminiServer::start().await;
    server.answer_with(two_windows(""));
    let i = run(&server, long_call(), rules).await.unwrap();
    assert_eq!(i.outcome, Some(CallOutcome::Unresolved));
}

#[tokio::test]
async fn citations_and_names_outside_the_answer_fail_for_good() {
    // agent 0.5–2.0 s, customer 2.5–4.0 s: one window.
    let short = || wav(6.0, 2, 8000, &[(0, 0.5, 2.0), (1, 2.5, 4.0)]);
    let segments = || {
        vec![
            segment("agent", 0.5, 2.0, "I will call you back."),
            segment("customer", 2.5, 4.0, "Thanks."),
        ]
    };
    for (extra, why) in [
        (
            json!({"actionItems": [{"text": "call back", "segments": [2]}]}),
            "action item 0 cites segment 2, but the answer has 2 segments",
        ),
        (
            json!({"issues": [{"text": "x", "segments": [0]}, {"text": "y", "segments": [-1]}]}),
            "issue 1 cites segment -1",
        ),
        (
            json!({"categories": [{"name": "Billing", "segments": [7]}]}),
            "cites segment 7",
        ),
        (
            json!({"categories": [{"name": "Refunds", "segments": [0]}]}),
            "unknown category \"Refunds\"",
        ),
        (
            json!({"categories": [{"name": "Billing", "segments": []}]}),
            "category \"Billing\" cites no segment",
        ),
        (json!({"outcome": "MAYBE"}), "the outcome \"MAYBE\""),
        // Action items as bare strings, the schema before citations.
        (json!({"actionItems": ["call back"]}), "invalid type"),
    ] {
        let server = GeminiServer::start().await;
        server.push([Reply::json(answer(segments(), extra.clone()), (1, 1, 2))]);
        match run(&server, short(), rules()).await {
            Err(AnalyzeError::Permanent(message)) => {
                assert!(
                    message.contains("does not fit the schema") && message.contains(why),
                    "{extra}: {message}"
                );
            }
            other => panic!("{extra}: expected a permanent failure, got {other:?}"),
        }
    }

    // Within range, a lone window's answer is taken as it is; an empty outcome is no outcome.
    let server = GeminiServer::start().await;
    server.push([Reply::json(
        answer(
            segments(),
            json!({
                "actionItems": [{"text": "Call back", "segments": [0]}],
                "intent": "  ", "outcome": "",
                "categories": [{"name": "Cancellation", "segments": [1, 0, 1]}],
            }),
        ),
        (1, 1, 2),
    )]);
    let rules = rules();
    let i = run(&server, short(), rules.clone()).await.unwrap();
    assert_eq!(i.action_items, vec![Quote::new("Call back", vec![0])]);
    assert_eq!((i.intent, i.outcome), (None, None));
    assert_eq!(
        i.categories,
        vec![CategoryMatch {
            category_id: rules[1].id,
            name: "Cancellation".into(),
            segments: vec![0, 1],
        }]
    );
}
