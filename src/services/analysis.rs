//! One analysis of a call, composed: the audio's acoustic facts (an `Acoustics` adapter), the
//! talk-time metrics they imply (`domain::conversation`), and the insights an `InsightsSource`
//! reads from the call (the lexicon, or a model) — joined into one `Analysis` whose duration,
//! channels and metrics always come from the audio.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{compose, Analysis, AnalysisRequest, InsightsInput};
use crate::ports::{Acoustics, AnalyzeError, Analyzer, Audio, InsightsSource};

/// The analysis pipeline behind the `Analyzer` port the worker calls.
pub struct Pipeline {
    pub acoustics: Arc<dyn Acoustics>,
    pub insights: Arc<dyn InsightsSource>,
}

#[async_trait]
impl Analyzer for Pipeline {
    fn name(&self) -> String {
        self.insights.name()
    }

    async fn analyze(
        &self,
        audio: Audio,
        request: AnalysisRequest,
    ) -> Result<Analysis, AnalyzeError> {
        let facts = self.acoustics.facts(audio.clone()).await?;
        let input = InsightsInput::of(facts, request);
        let insights = self.insights.insights(&audio, input.clone()).await?;
        Ok(compose(&input, insights))
    }
}
