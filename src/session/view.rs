//! A session's short-lived view of the directories it listed and the files it wrote, so the
//! stat a client sends before every upload (and after it) costs no request to remote storage:
//! a directory listed in full a moment ago answers for the names in it, and those missing.
//! Only this session's own requests fill it, it forgets within `FRESH`, and nothing decides a
//! permission on it (the commit checks storage itself under its lock).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::storage::{DirEntry, Meta};

/// How long a listing is trusted.
pub const FRESH: Duration = Duration::from_secs(5);
/// Directories remembered at once, and entries per directory.
const MAX_DIRS: usize = 16;
const MAX_ENTRIES: usize = 2000;

struct Dir {
    entries: HashMap<String, Meta>,
    at: Instant,
}

#[derive(Default)]
pub struct View {
    dirs: Mutex<HashMap<String, Dir>>,
}

/// What the view knows of a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Known {
    Present(Meta),
    Absent,
    Unknown,
}

impl View {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Dir>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the listing of `dir` (fresh and complete) says of `name`.
    pub fn lookup(&self, dir: &str, name: &str) -> Known {
        let dirs = self.lock();
        match dirs.get(dir) {
            Some(d) if d.at.elapsed() < FRESH => match d.entries.get(name) {
                Some(m) => Known::Present(m.clone()),
                None => Known::Absent,
            },
            _ => Known::Unknown,
        }
    }

    /// Remembers a complete listing of `dir`.
    pub fn listed(&self, dir: &str, entries: &[DirEntry]) {
        if entries.len() > MAX_ENTRIES {
            return;
        }
        let mut dirs = self.lock();
        if dirs.len() >= MAX_DIRS && !dirs.contains_key(dir) {
            dirs.retain(|_, d| d.at.elapsed() < FRESH);
            if dirs.len() >= MAX_DIRS {
                return;
            }
        }
        dirs.insert(
            dir.to_string(),
            Dir {
                entries: entries
                    .iter()
                    .map(|e| (e.name.clone(), e.meta.clone()))
                    .collect(),
                at: Instant::now(),
            },
        );
    }

    /// This session put `name` in `dir` (an upload it committed, a directory it made).
    pub fn wrote(&self, dir: &str, name: &str, meta: Meta) {
        if let Some(d) = self.lock().get_mut(dir) {
            if d.entries.len() < MAX_ENTRIES {
                d.entries.insert(name.to_string(), meta);
            } else {
                d.at = Instant::now() - FRESH;
            }
        }
    }

    /// This session removed `name` from `dir` (a delete, a rename's source).
    pub fn removed(&self, dir: &str, name: &str) {
        if let Some(d) = self.lock().get_mut(dir) {
            d.entries.remove(name);
        }
    }

    /// Forgets everything (a directory was removed or renamed).
    pub fn forget(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Meta {
        Meta {
            is_dir: false,
            size,
            modified: None,
        }
    }

    #[test]
    fn a_listed_directory_answers_for_present_and_missing_names() {
        let v = View::default();
        assert_eq!(v.lookup("in", "a.csv"), Known::Unknown);
        v.listed(
            "in",
            &[DirEntry {
                name: "a.csv".into(),
                meta: file(3),
            }],
        );
        assert_eq!(v.lookup("in", "a.csv"), Known::Present(file(3)));
        assert_eq!(v.lookup("in", "b.csv"), Known::Absent);
        v.wrote("in", "b.csv", file(7));
        assert_eq!(v.lookup("in", "b.csv"), Known::Present(file(7)));
        v.removed("in", "a.csv");
        assert_eq!(v.lookup("in", "a.csv"), Known::Absent);
        assert_eq!(v.lookup("out", "a.csv"), Known::Unknown);
        v.forget();
        assert_eq!(v.lookup("in", "b.csv"), Known::Unknown);
    }
}
