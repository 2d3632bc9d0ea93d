//! `Application::build` starts voicegraph the same way for `main` and for tests: it binds its own
//! listener (port 0 works), wires the backends and runs the chosen roles until told to stop.

use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::graphql::build_schema;
use crate::services::{auth, events, live};
use crate::state::AppState;
use crate::{http, relay, wiring, worker};

/// Which roles this process plays.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub serve: bool,
    pub worker: bool,
    pub relay: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        serve: true,
        worker: true,
        relay: true,
    };
}

pub struct Application {
    listener: Option<TcpListener>,
    port: u16,
    /// The separate `/metrics` listener (`VOICEGRAPH_METRICS_LISTEN`), for any role.
    metrics_listener: Option<TcpListener>,
    limits: http::server::Limits,
    state: AppState,
    roles: Roles,
    shutdown: CancellationToken,
    /// A platform-admin key generated at first start (development only).
    pub generated_admin_key: Option<String>,
}

impl Application {
    pub async fn build(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        // Purge freed pages in the background, so memory returns to the system after load.
        if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!(error = %e, "jemalloc background threads are unavailable");
        }
        let listener = if roles.serve {
            let l = TcpListener::bind(&settings.listen).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (VOICEGRAPH_LISTEN): {e}",
                    settings.listen
                )
            })?;
            Some(l)
        } else {
            None
        };
        let metrics_listener = match &settings.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (VOICEGRAPH_METRICS_LISTEN): {e}")
            })?),
            None => None,
        };
        // Connections are capped below the descriptor limit, so that the process keeps
        // descriptors for its pool, Redis, files and uploads, and `/healthz` keeps answering.
        let fd_limit = http::server::raise_fd_limit();
        let limits = http::server::Limits::from_settings(&settings, fd_limit);
        if roles.serve {
            if let Some(limit) = fd_limit {
                if limits.max_connections as u64 > limit.saturating_sub(64) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        fd_limit = limit,
                        "VOICEGRAPH_MAX_CONNECTIONS leaves no file descriptors for the process itself"
                    );
                }
            }
        }
        let addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let port = addr.map_or(0, |a| a.port());
        let public_url = settings.public_url.clone().unwrap_or_else(|| {
            addr.map_or_else(
                || format!("http://{}", settings.listen),
                |a| format!("http://{a}"),
            )
        });
        let production = settings.is_production();
        let admin_key = settings
            .bootstrap_admin_key
            .as_ref()
            .map(|k| k.expose_secret().to_string());
        // Only tokens with the API-key prefix are looked up as keys.
        anyhow::ensure!(
            admin_key
                .as_deref()
                .is_none_or(|k| k.starts_with(auth::API_KEY_PREFIX)),
            "VOICEGRAPH_BOOTSTRAP_ADMIN_KEY must start with `{}`, like every API key",
            auth::API_KEY_PREFIX
        );
        let state = wiring::build_state(
            settings,
            &public_url,
            wiring::EventRoles {
                subscribes: roles.serve,
                publishes: roles.relay,
            },
        )
        .await?;
        let generated_admin_key = if admin_key.is_some() || !production {
            auth::bootstrap(&state.store, admin_key.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
        } else {
            None
        };
        // One token stops everything: the roles, and the sockets and streams they serve.
        let shutdown = state.shutdown.clone();
        Ok(Self {
            listener,
            port,
            metrics_listener,
            limits,
            state,
            roles,
            shutdown,
            generated_admin_key,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address of the separate metrics listener, when there is one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The connection caps and timeouts of the main listener.
    pub fn limits(&self) -> &http::server::Limits {
        &self.limits
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling it stops every role gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            limits,
            state,
            roles,
            shutdown,
            ..
        } = self;
        let mut tasks = JoinSet::new();
        if let Some(l) = metrics_listener {
            tracing::info!(addr = %l.local_addr()?, "serving /metrics");
            tasks.spawn(http::server::serve(
                l,
                http::metrics::router(state.clone()),
                http::server::Limits::for_metrics(&state.settings),
                state.metrics.clone(),
                shutdown.clone(),
            ));
        }
        if roles.worker {
            tasks.spawn(worker::run(
                state.clone(),
                shutdown.clone(),
                Duration::from_secs(30),
            ));
        }
        if roles.relay {
            tasks.spawn(relay::run(state.clone(), shutdown.clone()));
            if let Some(rt) = state.realtime.clone() {
                tasks.spawn(crate::realtime::run(
                    rt.sqs.clone(),
                    rt.queue_url.clone(),
                    rt.fanout.clone(),
                    shutdown.clone(),
                ));
            }
        }
        if let Some(listener) = listener {
            let feed = live::start(&state).await?;
            tasks.spawn(live::run(state.clone(), feed, shutdown.clone()));
            tasks.spawn(events::run_watermark(
                state.clone(),
                state.settings.watermark_poll,
                shutdown.clone(),
            ));
            tasks.spawn(state.revocations.clone().run(shutdown.clone()));
            let schema = build_schema(Some(state.clone()));
            let app = http::router(state.clone(), schema)?;
            if state.settings.playground && http::playground::ASSETS != "built" {
                tracing::warn!(
                    why = http::playground::ASSETS,
                    "the playground at / has no GraphiQL: its assets were not built with this \
                     binary (install Node.js and npm, then build again)"
                );
            }
            tracing::info!(
                addr = %listener.local_addr()?,
                max_connections = limits.max_connections,
                max_connections_per_address = ?limits.max_connections_per_address,
                playground = state.settings.playground,
                "serving GraphQL on /graphql"
            );
            http::server::serve(
                listener,
                app,
                limits,
                state.metrics.clone(),
                shutdown.clone(),
            )
            .await;
            // WebSockets live outside the server once upgraded: give them a moment to send
            // their going-away close frames.
            let metrics = state.metrics.clone();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while metrics.ws_connections.get() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        } else {
            shutdown.cancelled().await;
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}
