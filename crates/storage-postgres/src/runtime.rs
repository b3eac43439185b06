//! Calls made on a thread of a tokio runtime.
//!
//! The client library (`postgres`, rust-postgres's synchronous client)
//! drives each connection with a small tokio runtime of its own and blocks
//! on it for every statement, and when a connection closes. Tokio forbids
//! that on a thread that is driving a runtime already (an async task, or
//! the body of `#[tokio::main]` / `Runtime::block_on`): it panics with
//! "Cannot start a runtime from within a runtime". Prodigy is tokio-based,
//! and the `Storage` trait is synchronous, so the store can be called there:
//! a `LockGuard` dropped in async code, a quick `get` in a test, or a
//! `PgStorage` dropped at the end of an async function.
//!
//! So every place that blocks on the client goes through [`off_runtime`]:
//! on a thread where tokio has a runtime context, the work runs on a
//! short-lived thread of its own (scoped: it borrows, and the caller waits
//! for it); anywhere else it runs right here. Tokio does not tell a thread
//! that drives a runtime from one of its blocking pool (where blocking is
//! allowed): both carry the runtime's context. A caller on the blocking
//! pool says so with a [`BlockingSection`] (`storage-tokio` enters one
//! around every call it runs there), and the call runs right here too:
//! the extra thread would cost more than a short query.

use storage_core::BlockingSection;

/// Runs `f` where the client library may block: here, unless this thread
/// has a tokio runtime context and is in no [`BlockingSection`]; then on a
/// thread of its own, waited for. A panic in `f` is passed on.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if BlockingSection::is_entered() || tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("prodigy-pg".into())
            .spawn_scoped(s, f)
            .expect("the system can start a thread");
        match worker.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_it_runs_here_and_inside_on_another_thread() {
        let here = std::thread::current().id();
        assert_eq!(off_runtime(|| std::thread::current().id()), here);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (there, nested) = rt.block_on(async {
            off_runtime(|| {
                // A runtime of its own may block here (what the client does).
                let inner = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                (std::thread::current().id(), inner.block_on(async { 7 }))
            })
        });
        assert_ne!(there, here);
        assert_eq!(nested, 7);
        // On the blocking pool, in a section: here.
        let (id, on) = rt.block_on(async {
            rt.spawn_blocking(|| {
                let _may_block = BlockingSection::enter();
                (
                    std::thread::current().id(),
                    off_runtime(|| std::thread::current().id()),
                )
            })
            .await
            .expect("the blocking task")
        });
        assert_eq!(id, on);
    }
}
