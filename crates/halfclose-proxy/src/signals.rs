//! The process's signals: SIGINT and SIGTERM (Ctrl-C off Unix) start the
//! graceful shutdown, a second one ends the tunnels at once; SIGHUP asks for
//! a reload. Listeners are registered when the functions are called, so a
//! signal is never lost nor left to its default action once the proxy has
//! said it is up.
//!
//! Imports nothing of the crate. It knows nothing of what a shutdown or a
//! reload does: `serve` awaits the futures and imports this module.

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

/// SIGHUP, one after another: each asks for a reload. The listener is
/// registered by [`new`](Hangups::new), so that SIGHUP never takes its
/// default action (ending the process) once we said we are up. Off Unix,
/// and if the listener cannot be registered, [`next`](Hangups::next)
/// never resolves.
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    pub(crate) fn new() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /reload");
                })
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// Resolves at the next SIGHUP.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}
