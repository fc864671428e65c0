//! The process's signals: SIGINT and SIGTERM (Ctrl-C off Unix) start the
//! graceful shutdown, a second one ends the tunnels at once; SIGHUP reloads
//! the TLS certificate. Listeners are registered when the functions are
//! called, so a signal is never lost nor left to its default action once the
//! proxy has said it is up.
//!
//! Imports: `tls` (the certificate to reload). It knows nothing of what a
//! shutdown does: `serve` awaits the futures and imports this module.

/// Resolves on SIGINT or SIGTERM (Ctrl-C off Unix) received after this call.
/// The listeners are registered here, not at the first poll: a signal that
/// arrives before the future is polled is not lost.
#[cfg(unix)]
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let term = async {
            match term.as_mut() {
                Some(s) => drop(s.recv().await),
                None => std::future::pending().await,
            }
        };
        let int = async {
            match int.as_mut() {
                Some(s) => drop(s.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = int => {}
        }
    }
}

/// Resolves on Ctrl-C (Ctrl-Break and console close off Unix are not waited
/// for: `ctrl_c` is tokio's portable signal).
#[cfg(not(unix))]
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    }
}

/// On SIGHUP, loads the TLS certificate again (a no-op without one). The
/// listener is registered before the call returns, so that SIGHUP never takes
/// its default action (ending the process) once we said we are up.
#[cfg(unix)]
pub(crate) fn reload_on_sighup(
    #[cfg(feature = "tls")] cert: Option<std::sync::Arc<crate::tls::Certificate>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificates will not be reloaded");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            #[cfg(feature = "tls")]
            if let Some(cert) = &cert {
                match cert.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %cert.cert_path().display(), "TLS certificate reloaded");
                        say!(
                            "reloaded TLS certificate from {}",
                            cert.cert_path().display()
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: keeping the certificate in use");
                        say!("TLS certificate not reloaded, keeping the one in use: {e}");
                    }
                }
                continue;
            }
            tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
        }
    });
}
