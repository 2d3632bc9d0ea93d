//! The command line: `dev` (default, every role in one process), `serve`, `worker`, `relay`,
//! `migrate`, `print-schema`, `print-trusted-documents` and `submit`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "voicegraph",
    version,
    about = "A GraphQL API for tracking voice calls"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process (the default).
    Dev,
    /// GraphQL over HTTP and WebSocket, playground, health and metrics.
    Serve,
    /// Consume jobs and analyse calls.
    Worker,
    /// Deliver the outbox: jobs to the queue, events to subscribers.
    Relay,
    /// Apply database migrations and exit.
    Migrate,
    /// Submit a recording to a running voicegraph and follow it until it is analysed.
    Submit(SubmitArgs),
    /// Print the GraphQL schema (SDL).
    PrintSchema {
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print the trusted documents manifest of the playground's examples (JSON, SHA-256 of each
    /// document to the document), for VOICEGRAPH_TRUSTED_DOCUMENTS.
    PrintTrustedDocuments {
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The recording (WAV, FLAC, MP3 or Ogg Vorbis).
    pub file: PathBuf,
    /// Base URL of the API.
    #[arg(long, env = "VOICEGRAPH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (integrator or admin role).
    #[arg(long, env = "VOICEGRAPH_API_KEY", hide_env_values = true)]
    pub key: String,
    /// The integrator's own id for the call.
    #[arg(long)]
    pub external_id: Option<String>,
    /// Tags (repeat the flag for several).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Makes a repeated submission return the first call.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Return once the call is queued, without following it.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up following after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}
