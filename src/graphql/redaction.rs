//! Redaction: the tenant's policy (`redactionPolicy`, `setRedactionPolicy`), a call's override
//! on `submitCall`, and what was found in a call (`Call.redaction`, `Call.redactions`).

use async_graphql::{Context, Enum, ErrorExtensions, InputObject, Object, Result, SimpleObject};

use crate::domain::redaction::{RedactionOverride, RedactionPolicy as Policy, RedactionSpan};
use crate::graphql::{caller, state};
use crate::services::redaction;

/// What is redacted in a tenant's calls, or in one call.
#[derive(SimpleObject, Clone, Copy)]
#[graphql(name = "RedactionPolicy")]
pub struct RedactionPolicyGql {
    /// Personal data in the transcript and insights (segments, summary, intent, topics, action
    /// items, issues, the integrator's transcript, a model's raw answers) is replaced by typed
    /// placeholders such as `[CARD_NUMBER]`.
    pub transcript: bool,
    /// The recording is replaced by a WAV copy in which every stretch where personal data is
    /// said (placed in time from the transcript's segments) is covered by a 1 kHz tone.
    pub audio: bool,
    /// With `audio`: the original recording is deleted once the redacted copy is stored.
    /// Otherwise it is kept, out of every URL's reach, until the call is deleted.
    pub delete_original: bool,
}

impl From<Policy> for RedactionPolicyGql {
    fn from(p: Policy) -> Self {
        Self {
            transcript: p.transcript,
            audio: p.audio,
            delete_original: p.delete_original,
        }
    }
}

/// The tenant's redaction policy, for the calls submitted from now on.
#[derive(InputObject)]
pub struct RedactionPolicyInput {
    /// Replace personal data in transcripts and insights by placeholders.
    pub transcript: bool,
    /// Cover personal data in the recording with a tone.
    pub audio: bool,
    /// Delete the original recording once the redacted copy is stored (needs `audio`;
    /// BAD_USER_INPUT otherwise).
    pub delete_original: bool,
}

/// One call's changes to its tenant's redaction policy; a field left out is as the tenant's.
#[derive(InputObject, Default)]
pub struct RedactionOverrideInput {
    /// Replace personal data in the transcript and insights.
    pub transcript: Option<bool>,
    /// Cover personal data in the recording with a tone.
    pub audio: Option<bool>,
    /// Delete the original recording once redacted (only with `audio`).
    pub delete_original: Option<bool>,
}

impl From<RedactionOverrideInput> for RedactionOverride {
    fn from(o: RedactionOverrideInput) -> Self {
        Self {
            transcript: o.transcript,
            audio: o.audio,
            delete_original: o.delete_original,
        }
    }
}

/// A kind of personal data redaction finds.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum PersonalDataKind {
    /// A payment card number (13 to 19 digits, written or spoken, passing the Luhn check).
    CardNumber,
    /// A card's security code (3 or 4 digits near a card number or named as one).
    SecurityCode,
    /// A phone number.
    Phone,
    /// An e-mail address, written or spoken ("jane dot doe at example dot com").
    Email,
    /// A national identity number (US Social Security number, UK National Insurance number).
    NationalId,
    /// A bank account: an IBAN (checked), or an account, routing number or sort code named as
    /// one.
    BankAccount,
}

impl PersonalDataKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CARD_NUMBER" => Self::CardNumber,
            "SECURITY_CODE" => Self::SecurityCode,
            "PHONE" => Self::Phone,
            "EMAIL" => Self::Email,
            "NATIONAL_ID" => Self::NationalId,
            "BANK_ACCOUNT" => Self::BankAccount,
            _ => return None,
        })
    }
}

/// One personal datum found in a call.
pub struct Redaction(pub RedactionSpan);

/// One personal datum found in a call, and where it was.
#[Object]
impl Redaction {
    /// What it was.
    async fn kind(&self) -> Option<PersonalDataKind> {
        PersonalDataKind::parse(&self.0.kind)
    }
    /// The field it was in: `segments[3].text` (the transcript's fourth segment), `transcript`,
    /// `summary`, `intent`, `topics[0]`, `actionItems[1].text`, `issues[0].text`.
    async fn field(&self) -> &str {
        &self.0.field
    }
    /// Where it is in the field's text, in characters (Unicode scalar values), from 0: where
    /// its placeholder now is when the transcript was redacted, else where the datum is.
    async fn start(&self) -> i32 {
        self.0.start as i32
    }
    /// Where it ends (exclusive), in characters.
    async fn end(&self) -> i32 {
        self.0.end as i32
    }
    /// Where in the recording it is said (milliseconds; padded, estimated from its place in the
    /// segment's text); null outside the transcript's segments.
    async fn start_ms(&self) -> Option<i64> {
        self.0.start_ms
    }
    /// Where in the recording it ends being said (milliseconds); null outside segments.
    async fn end_ms(&self) -> Option<i64> {
        self.0.end_ms
    }
}

#[derive(Default)]
pub struct RedactionQuery;

#[Object]
impl RedactionQuery {
    /// The tenant's redaction policy (all false when none is set). ADMIN.
    async fn redaction_policy(&self, ctx: &Context<'_>) -> Result<RedactionPolicyGql> {
        Ok(redaction::policy(state(ctx), caller(ctx)?)
            .await
            .map_err(|e| e.extend())?
            .into())
    }
}

#[derive(Default)]
pub struct RedactionMutation;

#[Object]
impl RedactionMutation {
    /// Sets what is redacted in the tenant's calls submitted from now on (each call keeps the
    /// policy it was submitted under; `submitCall(input: {redaction})` overrides it for one
    /// call). ADMIN. BAD_USER_INPUT for `deleteOriginal` without `audio`.
    async fn set_redaction_policy(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The policy.")] input: RedactionPolicyInput,
    ) -> Result<RedactionPolicyGql> {
        let policy = Policy {
            transcript: input.transcript,
            audio: input.audio,
            delete_original: input.delete_original,
        };
        Ok(redaction::set_policy(state(ctx), caller(ctx)?, policy)
            .await
            .map_err(|e| e.extend())?
            .into())
    }
}
