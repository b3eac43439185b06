//! [`BlockingSection`]: telling a store that the current thread may block.
//!
//! A store whose client library blocks on an async runtime of its own (the
//! PostgreSQL store: rust-postgres's synchronous client drives each
//! connection with a small tokio runtime) must not do so on a thread that
//! drives a tokio runtime already: tokio panics. Tokio does not say which
//! threads those are, though: its blocking pool, where blocking is the
//! point, carries the same runtime context as its workers. So such a store
//! runs each call made on a thread with a runtime context on a thread of
//! its own, which costs tens of microseconds a call, unless the caller
//! says the thread may block: an adapter that runs store calls on tokio's
//! blocking pool (`storage-tokio` does) enters a [`BlockingSection`]
//! around them. No I/O here: a thread-local counter.

use std::cell::Cell;
use std::marker::PhantomData;

thread_local! {
    static ENTERED: Cell<usize> = const { Cell::new(0) };
}

/// While it lives, the current thread is one where a store may block on a
/// runtime of its own (a thread of tokio's blocking pool, or a plain
/// thread). Never enter one on a thread that drives a tokio runtime (an
/// async task, `block_on`): a store would block there, and tokio panics.
///
/// Not `Send`: it belongs to the thread that entered it. Sections nest.
#[must_use = "the section ends as soon as the guard is dropped"]
#[derive(Debug)]
pub struct BlockingSection {
    _this_thread: PhantomData<*const ()>,
}

impl BlockingSection {
    /// Marks the current thread until the guard is dropped.
    pub fn enter() -> Self {
        ENTERED.with(|n| n.set(n.get() + 1));
        Self {
            _this_thread: PhantomData,
        }
    }

    /// Whether the current thread is in a section (for stores).
    #[must_use]
    pub fn is_entered() -> bool {
        // While the thread's locals are being destroyed (a guard dropped by
        // another thread-local's destructor), no section is known.
        ENTERED.try_with(|n| n.get() > 0).unwrap_or(false)
    }
}

impl Drop for BlockingSection {
    fn drop(&mut self) {
        let _ = ENTERED.try_with(|n| n.set(n.get().saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::BlockingSection;

    #[test]
    fn a_section_marks_its_thread_only_and_nests() {
        assert!(!BlockingSection::is_entered());
        let outer = BlockingSection::enter();
        let inner = BlockingSection::enter();
        assert!(BlockingSection::is_entered());
        std::thread::spawn(|| assert!(!BlockingSection::is_entered()))
            .join()
            .expect("the other thread");
        drop(inner);
        assert!(BlockingSection::is_entered());
        drop(outer);
        assert!(!BlockingSection::is_entered());
    }
}
