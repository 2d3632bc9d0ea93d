//! The local analyser behind the `Analyzer` port: decodes and measures the audio off the async
//! runtime. A recording it cannot read is a permanent failure; nothing here is worth a retry.

use async_trait::async_trait;

use super::acoustic::{analyze_audio, analyze_file};
use crate::domain::{Analysis, AnalysisRequest};
use crate::ports::{AnalyzeError, Analyzer, Audio};

#[derive(Debug, Default, Clone)]
pub struct LocalAnalyzer;

#[async_trait]
impl Analyzer for LocalAnalyzer {
    fn name(&self) -> String {
        "local".into()
    }

    async fn analyze(
        &self,
        audio: Audio,
        request: AnalysisRequest,
    ) -> Result<Analysis, AnalyzeError> {
        tokio::task::spawn_blocking(move || match audio {
            Audio::Bytes(bytes) => analyze_audio(&bytes, &request),
            Audio::File(path) => analyze_file(&path, &request),
        })
        .await
        .map_err(|e| AnalyzeError::Transient(anyhow::anyhow!("analysis task failed: {e}")))?
        .map_err(|e| AnalyzeError::Permanent(e.to_string()))
    }
}
