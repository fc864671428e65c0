//! The process's signals: SIGINT and SIGTERM (Ctrl-C off Unix) start the
//! graceful shutdown, a second one ends the tunnels at once; SIGHUP asks for
//! a reload, SIGUSR1 for the access log to be reopened. Listeners are registered when the functions are called, so a
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

/// A signal that asks for something each time it comes: SIGHUP (reload
/// the config), SIGUSR1 (reopen the access log). The listener is
/// registered by the constructor, so that the signal never takes its
/// default action (ending the process) once we said we are up. Off Unix,
/// and if the listener cannot be registered, [`next`](Repeated::next)
/// never resolves.
pub(crate) struct Repeated {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Repeated {
    /// SIGHUP.
    pub(crate) fn hangup() -> Repeated {
        #[cfg(unix)]
        return Repeated::unix(
            tokio::signal::unix::SignalKind::hangup(),
            "SIGHUP",
            "reload with POST /reload",
        );
        #[cfg(not(unix))]
        Repeated {}
    }

    /// SIGUSR1.
    pub(crate) fn user1() -> Repeated {
        #[cfg(unix)]
        return Repeated::unix(
            tokio::signal::unix::SignalKind::user_defined1(),
            "SIGUSR1",
            "the access log will not be reopened",
        );
        #[cfg(not(unix))]
        Repeated {}
    }

    #[cfg(unix)]
    fn unix(kind: tokio::signal::unix::SignalKind, name: &str, then: &str) -> Repeated {
        let signal = tokio::signal::unix::signal(kind)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {name}; {then}"))
            .ok();
        Repeated { signal }
    }

    /// Resolves when the signal next comes.
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
