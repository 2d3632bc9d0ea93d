//! The command line: `dev` (default, every role in one process), `serve`, `worker`, `relay`,
//! `migrate` and `print-schema`.

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
    /// Print the GraphQL schema (SDL).
    PrintSchema {
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}
