//! The command line: `dev` (default, every role in one process), `serve`, `worker`, `relay`,
//! `migrate`, `print-schema`, `print-trusted-documents`, and the clients `submit` and `calls`.

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
    /// Submit a recording to a running voicegraph and follow it until it is analysed. Exit
    /// codes: 0 completed (or queued with --no-wait), 1 server error, 2 usage, 3 the call
    /// failed, 4 input refused, 5 authentication, 6 network, 7 gave up waiting.
    Submit(SubmitArgs),
    /// List, show or watch the tenant's calls (the same options and exit codes as submit).
    Calls(CallsArgs),
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

/// What every client command takes: where the API is, the key, and the output's form.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the API (a trailing `/graphql` is fine).
    #[arg(
        long,
        env = "VOICEGRAPH_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key (integrator or admin role to submit; any role to read).
    #[arg(
        long,
        env = "VOICEGRAPH_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub key: Option<String>,
    /// One JSON object per line on standard output (errors too), for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The recording (WAV, FLAC, MP3 or Ogg Vorbis; checked by its first bytes before uploading).
    pub file: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// Give up following after this many seconds (exit code 7).
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct CallsArgs {
    #[command(subcommand)]
    pub command: CallsCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum CallsCommand {
    /// A page of the tenant's calls, newest first, with filters.
    List {
        /// Only calls with this status (QUEUED, PROCESSING, COMPLETED, FAILED…; repeat for several).
        #[arg(long)]
        status: Vec<String>,
        /// Only calls with this tag (repeat: calls with all of them).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Only calls whose transcript or summary contains this text.
        #[arg(long)]
        text: Option<String>,
        /// Only the call with this external id.
        #[arg(long)]
        external_id: Option<String>,
        /// How many calls (at most the server's page size).
        #[arg(long, default_value_t = 20)]
        first: u32,
        /// The page after this cursor (printed with the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// One call and its results.
    Get {
        /// The call's id.
        id: String,
    },
    /// Follow events: one call's until it is analysed (exit 0, or 3 when it failed), or every
    /// call's of the tenant until interrupted or `--timeout-secs`.
    Watch {
        /// The call to follow; all of the tenant's calls when absent.
        id: Option<String>,
        /// Resume after this event cursor (`0` replays the tenant's whole history first).
        #[arg(long)]
        after: Option<String>,
        /// Only these event kinds (SUBMITTED, PROCESSING, COMPLETED, FAILED…; repeat for several).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
