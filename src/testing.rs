//! Fault injection for the crash-safety tests: `crash_point(name)` ends the process on the
//! spot when `WHARF_TEST_CRASH_AT` names that point, and stops it (SIGSTOP, as a paused VM
//! is stopped) the first time it gets there when `WHARF_TEST_PAUSE_AT` does; the test sends
//! SIGCONT. Only debug builds (what the tests run) look at the variables; release builds
//! compile them away.

/// Aborts the process (as a kill -9 would end it: no unwinding, no cleanup) when
/// `WHARF_TEST_CRASH_AT` is `name`, or stops it once when `WHARF_TEST_PAUSE_AT` is, in debug
/// builds.
pub fn crash_point(name: &str) {
    #[cfg(debug_assertions)]
    {
        if std::env::var("WHARF_TEST_CRASH_AT").is_ok_and(|v| v == name) {
            eprintln!("wharf: crash point {name} reached (WHARF_TEST_CRASH_AT)");
            std::process::abort();
        }
        static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if std::env::var("WHARF_TEST_PAUSE_AT").is_ok_and(|v| v == name)
            && !PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            eprintln!("wharf: pause point {name} reached (WHARF_TEST_PAUSE_AT)");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
