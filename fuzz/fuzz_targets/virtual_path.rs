//! Client paths through the jail: never a panic, and whatever is accepted stays inside the
//! home, normalised, within the length limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::session::path::VirtualPath;

fn check(p: &VirtualPath) {
    let rel = p.relative();
    assert!(rel.len() <= 1024, "{rel:?} is too long");
    assert!(!rel.starts_with('/'), "{rel:?} is absolute");
    if !rel.is_empty() {
        for seg in rel.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{rel:?} has segment {seg:?}"
            );
            assert!(
                !seg.chars().any(char::is_control),
                "{rel:?} has a control character"
            );
        }
    }
    assert!(p.to_string().starts_with('/'));
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Two paths: the second is resolved against the first (a cwd), as clients do.
    let (a, b) = text.split_once('\u{1}').unwrap_or((&text, ""));
    let root = VirtualPath::root();
    if let Ok(cwd) = VirtualPath::parse(&root, a) {
        check(&cwd);
        if let Ok(p) = VirtualPath::parse(&cwd, b) {
            check(&p);
        }
    }
});
