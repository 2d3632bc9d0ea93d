//! Thin entry point: parse the command line, load settings, start logging, run a subcommand.

use clap::Parser;
use voicegraph::cli::{Cli, Command};
use voicegraph::config::Layers;
use voicegraph::startup::{Application, Roles};
use voicegraph::{graphql, telemetry, wiring};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let code = match run().await {
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
    };
    // The spans not exported yet go out before the process ends (it blocks: off the runtime).
    let _ = tokio::task::spawn_blocking(telemetry::shutdown).await;
    code
}

async fn run() -> anyhow::Result<std::process::ExitCode> {
    // TLS (Redis over `rediss://`, Postgres with `sslmode`) uses one crypto provider: several
    // are linked, so rustls cannot pick one by itself.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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
    match cli.command {
        Some(Command::Submit(args)) => {
            let json = args.client.json;
            let outcome = voicegraph::client::submit(args, &mut std::io::stdout()).await;
            return Ok(client_exit(outcome, json));
        }
        Some(Command::Calls(args)) => {
            let json = args.client.json;
            let outcome = voicegraph::client::calls(args, &mut std::io::stdout()).await;
            return Ok(client_exit(outcome, json));
        }
        _ => {}
    }
    let layers = Layers::from_process()?;
    // Invalid settings stop the start below, with their own error.
    let unknown = layers.unknown().unwrap_or_default();
    let settings = wiring::load_settings(layers).await?;
    let command = cli.command.unwrap_or(Command::Dev);
    let process = match &command {
        Command::Serve => "serve",
        Command::Worker => "worker",
        Command::Relay => "relay",
        Command::Migrate => "migrate",
        // Every role in one process.
        _ => "dev",
    };
    let traces = settings
        .otlp_traces_url()
        .map(|url| telemetry::TraceExport {
            url,
            service: format!("voicegraph-{process}"),
        });
    telemetry::init_with(settings.log_format, traces)?;
    for key in unknown {
        tracing::warn!(
            variable = %format!("VOICEGRAPH_{}", key.to_ascii_uppercase()),
            "not a setting of this version: ignored"
        );
    }
    let roles = match command {
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
        | Command::Submit(_)
        | Command::Calls(_) => unreachable!("handled above"),
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

/// A client command's exit code, its error reported as the output goes (JSON or text).
fn client_exit(
    outcome: voicegraph::client::ClientResult<voicegraph::client::ExitKind>,
    json: bool,
) -> std::process::ExitCode {
    match outcome {
        Ok(kind) => std::process::ExitCode::from(kind.code()),
        Err(e) => {
            voicegraph::client::report(&e, json);
            std::process::ExitCode::from(e.kind.code())
        }
    }
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
