//! Shutdown as an input: a signal (SIGTERM/SIGINT) flips a watch that every
//! front waits on (stop accepting), and a second watch closes the open
//! connections once the drain is done; server.rs bounds the drain with
//! --exit-timeout-secs.

use tokio::sync::watch;

/// A cloneable view of "has shutdown begun".
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The trigger side: `send(true)` starts the shutdown.
pub type Trigger = watch::Sender<bool>;

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (tx, Shutdown(rx))
}

impl Shutdown {
    /// Resolves once shutdown has begun.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|&begun| begun).await;
    }
}

/// What the fronts wait on: when to stop accepting connections (the
/// signal), and when to close the open ones (once in-flight requests have
/// been answered).
#[derive(Clone)]
pub struct Phases {
    pub accept_until: Shutdown,
    pub serve_until: Shutdown,
}

/// Resolves on the first SIGTERM or SIGINT, naming it.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
