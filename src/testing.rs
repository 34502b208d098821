//! Fault injection for the crash-safety tests: `crash_point(name)` ends the process on the
//! spot when `WHARF_TEST_CRASH_AT` names that point. Only debug builds (what the tests run)
//! look at the variable; release builds compile it away.

/// Aborts the process (as a kill -9 would end it: no unwinding, no cleanup) when
/// `WHARF_TEST_CRASH_AT` is `name`, in debug builds.
pub fn crash_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("WHARF_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("wharf: crash point {name} reached (WHARF_TEST_CRASH_AT)");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
