//! The Gemini REST wire format (`v1beta`, camelCase JSON) as the API reference documents it:
//! what `generateContent` and the Files API take and answer, and Google's error envelope.

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// The body of `POST /v1beta/models/{model}:generateContent`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest<'a> {
    pub contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content<'a>>,
    pub generation_config: GenerationConfig<'a>,
}

/// One turn: a role (`user`; omitted for the system instruction) and its parts.
#[derive(Debug, Serialize)]
pub struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    pub parts: Vec<PartOut<'a>>,
}

/// A part is an object with exactly one of `text`, `inlineData` or `fileData`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PartOut<'a> {
    Text(&'a str),
    InlineData(Blob<'a>),
    FileData(FileData<'a>),
}

/// Inline media: the bytes travel base64-encoded (standard alphabet, padded) in `data`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob<'a> {
    pub mime_type: &'a str,
    #[serde(serialize_with = "base64_str")]
    pub data: &'a [u8],
}

/// A file uploaded through the Files API, referred to by its `uri`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileData<'a> {
    pub mime_type: &'a str,
    pub file_uri: &'a str,
}

/// `generationConfig`: structured output is asked for with `responseMimeType` and
/// `responseSchema` (an OpenAPI-subset schema object).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig<'a> {
    pub response_mime_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// Encodes straight into the serializer's output, so large audio is not copied into a second
/// `String` first.
fn base64_str<S: Serializer>(data: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&Base64Display::new(data, &STANDARD))
}

/// The answer of `generateContent`. Every field is optional on the wire; unknown ones (safety
/// ratings, citations, grounding…) are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GenerateContentResponse {
    pub candidates: Vec<Candidate>,
    pub prompt_feedback: Option<PromptFeedback>,
    pub usage_metadata: Option<UsageMetadata>,
    pub model_version: Option<String>,
    pub response_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Candidate {
    pub content: Option<ContentIn>,
    /// `STOP`, `MAX_TOKENS`, `SAFETY`, `RECITATION`, `LANGUAGE`, `OTHER`, `BLOCKLIST`,
    /// `PROHIBITED_CONTENT`, `SPII`, `MALFORMED_FUNCTION_CALL`, `IMAGE_SAFETY`, … (kept as a
    /// string: the list grows).
    pub finish_reason: Option<String>,
    pub finish_message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContentIn {
    pub role: Option<String>,
    pub parts: Vec<PartIn>,
}

/// Only text parts matter here; `thought` marks a thinking model's thought summary.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PartIn {
    pub text: Option<String>,
    pub thought: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PromptFeedback {
    /// `SAFETY`, `OTHER`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `IMAGE_SAFETY`, …
    pub block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UsageMetadata {
    pub prompt_token_count: i64,
    pub candidates_token_count: i64,
    /// Thinking models: tokens spent thinking, billed as output, not in `candidatesTokenCount`.
    pub thoughts_token_count: i64,
    pub cached_content_token_count: i64,
    pub total_token_count: i64,
}

/// Google's error envelope: `{"error": {"code", "message", "status", "details": [Any…]}}`.
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub code: i64,
    pub message: String,
    /// The canonical code's name, e.g. `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`.
    pub status: String,
    /// `google.protobuf.Any` values, each tagged by `@type`.
    pub details: Vec<Value>,
}

pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

impl ErrorBody {
    /// `RetryInfo.retryDelay` (a protobuf Duration such as `"17s"` or `"0.2s"`), if any.
    pub fn retry_delay(&self) -> Option<&str> {
        self.details
            .iter()
            .find(|d| d.get("@type").and_then(Value::as_str) == Some(RETRY_INFO_TYPE))
            .and_then(|d| d.get("retryDelay"))
            .and_then(Value::as_str)
    }
}

/// The JSON body that starts a resumable upload (`POST /upload/v1beta/files`).
#[derive(Debug, Serialize)]
pub struct CreateFileRequest<'a> {
    pub file: NewFile<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewFile<'a> {
    pub display_name: &'a str,
}

/// What the finalizing upload answers: the new `File`, wrapped.
#[derive(Debug, Deserialize)]
pub struct FileEnvelope {
    pub file: File,
}

/// The `File` resource (`files.get` answers it unwrapped).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct File {
    /// `files/{id}`.
    pub name: String,
    pub display_name: Option<String>,
    pub mime_type: Option<String>,
    /// An int64, which proto JSON writes as a string.
    pub size_bytes: Option<String>,
    pub uri: Option<String>,
    /// `STATE_UNSPECIFIED`, `PROCESSING`, `ACTIVE` or `FAILED`.
    pub state: Option<String>,
    pub error: Option<Status>,
}

/// A `google.rpc.Status`, as in `File.error`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub code: i64,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_serialize_as_the_reference_shows() {
        let schema = json!({"type": "OBJECT"});
        let body = GenerateContentRequest {
            contents: vec![Content {
                role: Some("user"),
                parts: vec![
                    PartOut::Text("hi"),
                    PartOut::InlineData(Blob {
                        mime_type: "audio/wav",
                        data: b"\x00\xffab",
                    }),
                    PartOut::FileData(FileData {
                        mime_type: "audio/mpeg",
                        file_uri: "https://x/v1beta/files/a",
                    }),
                ],
            }],
            system_instruction: Some(Content {
                role: None,
                parts: vec![PartOut::Text("be brief")],
            }),
            generation_config: GenerationConfig {
                response_mime_type: "application/json",
                response_schema: Some(&schema),
                temperature: None,
                max_output_tokens: Some(10),
            },
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({
                "contents": [{"role": "user", "parts": [
                    {"text": "hi"},
                    {"inlineData": {"mimeType": "audio/wav", "data": "AP9hYg=="}},
                    {"fileData": {"mimeType": "audio/mpeg", "fileUri": "https://x/v1beta/files/a"}},
                ]}],
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseSchema": {"type": "OBJECT"},
                    "maxOutputTokens": 10,
                },
            })
        );
    }

    #[test]
    fn retry_info_is_found_among_the_details() {
        let body: ErrorEnvelope = serde_json::from_value(json!({"error": {
            "code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": RETRY_INFO_TYPE, "retryDelay": "17s"},
            ],
        }}))
        .unwrap();
        assert_eq!(body.error.retry_delay(), Some("17s"));
    }
}
