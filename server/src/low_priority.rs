//! CPU work in the background that must not take CPU from handshakes: precomputing
//! every key's static-static value after start and after a handshake-key rotation
//! (one X25519 per key, seconds at a million keys). It runs on a thread of its own
//! at the lowest scheduling priority (nice 19), so while requests are being served
//! the kernel gives it only what the request threads leave, and all of an idle CPU.

/// Why the background work gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LowPriorityError {
    /// The thread could not be started.
    #[error("cannot start the background thread `{name}`: {source}")]
    Spawn {
        /// The thread's name.
        name: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The work panicked.
    #[error("the background work `{0}` stopped without an answer")]
    Lost(&'static str),
}

/// The nice value the work runs at: the lowest priority there is.
pub const NICE: i32 = 19;

/// Runs `work` on a new thread named `name` at [`NICE`], and waits for its answer
/// without holding a runtime thread.
pub async fn run<R: Send + 'static>(
    name: &'static str,
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, LowPriorityError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_thread();
            let _ = tx.send(work());
        })
        .map_err(|source| LowPriorityError::Spawn { name, source })?;
    rx.await.map_err(|_| LowPriorityError::Lost(name))
}

/// Sets the calling thread's nice value to [`NICE`] (Linux: per thread). A refusal
/// only costs priority, never the work.
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::debug!(error = %e, "cannot lower the background thread's priority");
    }
}

/// The calling thread's nice value (Linux), for tests.
#[cfg(all(test, target_os = "linux"))]
fn this_thread_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_runs_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let before = this_thread_nice();
        let (nice, name) =
            run("onetrip-test-warm", || (this_thread_nice(), std::thread::current().name().map(str::to_owned)))
                .await
                .expect("an answer");
        assert_eq!(nice, NICE);
        assert_eq!(name.as_deref(), Some("onetrip-test-warm"));
        assert_eq!(this_thread_nice(), before, "only the background thread was lowered");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_error_not_a_hang() {
        let lost = run("onetrip-test-panic", || -> u8 { panic!("boom") }).await;
        assert!(matches!(lost, Err(LowPriorityError::Lost("onetrip-test-panic"))));
    }
}
