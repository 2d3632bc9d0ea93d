//! Thin entry point: parse the command line, load settings, start logging, run a subcommand.

use clap::Parser;
use voicegraph::cli::{Cli, Command};
use voicegraph::config::Layers;
use voicegraph::startup::{Application, Roles};
use voicegraph::{graphql, telemetry, wiring};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            // The cause chain on one line; backtraces are for panics, not for refusals. Through
            // the logger once it runs (JSON in production), else on standard error.
            if telemetry::initialized() {
                tracing::error!(error = %format!("{e:#}"), "voicegraph stopped");
            } else {
                eprintln!("voicegraph: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    if let Some(Command::PrintSchema { output }) = &cli.command {
        let sdl = graphql::sdl();
        match output {
            Some(path) => std::fs::write(path, sdl)?,
            None => print!("{sdl}"),
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(Command::PrintTrustedDocuments { output }) = &cli.command {
        let manifest = voicegraph::http::playground::trusted_documents();
        match output {
            Some(path) => std::fs::write(path, manifest)?,
            None => print!("{manifest}"),
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(Command::Submit(args)) = cli.command {
        let completed = voicegraph::client::submit(args, &mut std::io::stdout()).await?;
        return Ok(if completed {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(2)
        });
    }
    let settings = wiring::load_settings(Layers::from_process()?).await?;
    telemetry::init(settings.log_format);
    let roles = match cli.command.unwrap_or(Command::Dev) {
        Command::Dev => Roles::ALL,
        Command::Serve => Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        Command::Worker => Roles {
            serve: false,
            worker: true,
            relay: false,
        },
        Command::Relay => Roles {
            serve: false,
            worker: false,
            relay: true,
        },
        Command::Migrate => {
            let metrics = voicegraph::http::metrics::Metrics::new();
            wiring::migrate_as_owner(&settings, &metrics).await?;
            tracing::info!("migrations applied");
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Command::PrintSchema { .. }
        | Command::PrintTrustedDocuments { .. }
        | Command::Submit(_) => unreachable!("handled above"),
    };
    let listen = settings.listen.clone();
    let app = Application::build(settings, roles).await?;
    if let Some(key) = &app.generated_admin_key {
        println!();
        println!(
            "  voicegraph created tenant `default` and a platform-admin API key (shown once):"
        );
        println!();
        println!("      {key}");
        println!();
        println!("  Set VOICEGRAPH_BOOTSTRAP_ADMIN_KEY to choose it yourself on a fresh data dir.");
        println!();
    }
    if roles.serve {
        let at = display(&listen, app.port());
        tracing::info!(
            playground = %format!("http://{at}/"),
            graphql = %format!("http://{at}/graphql"),
            "voicegraph is listening"
        );
    }
    let token = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    app.run_until_stopped().await?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn display(listen: &str, port: u16) -> String {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    format!("{host}:{port}")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
