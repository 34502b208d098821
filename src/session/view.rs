//! A session's short-lived view of the names it asked about, the directories it listed and
//! the files it wrote, so the stats a client sends around every upload cost no request to
//! remote storage: a name stat'ed a moment ago answers again, and once a session asks about
//! a second name in a directory that directory is listed, and answers for every name in it
//! (those missing included). Only this session's own requests fill it, it forgets within
//! `FRESH`, and nothing decides a permission on it (the commit checks storage under its lock).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::storage::{DirEntry, Meta};

/// How long what the view learnt is trusted.
pub const FRESH: Duration = Duration::from_secs(5);
/// Directories remembered at once, and names per directory.
const MAX_DIRS: usize = 16;
const MAX_ENTRIES: usize = 2000;

struct Dir {
    /// Names known: present with their metadata, or absent.
    names: HashMap<String, Option<Meta>>,
    /// Whether `names` is the whole directory (a complete listing): a name not in it is absent.
    complete: bool,
    /// The directory took more than a page to list: not worth listing again while fresh.
    too_big: bool,
    at: Instant,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            names: HashMap::new(),
            complete: false,
            too_big: false,
            at: Instant::now(),
        }
    }

    fn fresh(&self) -> bool {
        self.at.elapsed() < FRESH
    }
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

    /// The fresh entry for `dir`, made when missing (None when the view is full).
    fn entry<'a>(dirs: &'a mut HashMap<String, Dir>, dir: &str) -> Option<&'a mut Dir> {
        if dirs.get(dir).is_some_and(|d| !d.fresh()) {
            dirs.remove(dir);
        }
        if !dirs.contains_key(dir) {
            if dirs.len() >= MAX_DIRS {
                dirs.retain(|_, d| d.fresh());
                if dirs.len() >= MAX_DIRS {
                    return None;
                }
            }
            dirs.insert(dir.to_string(), Dir::new());
        }
        dirs.get_mut(dir)
    }

    /// What this session learnt a moment ago of `name` in `dir`.
    pub fn lookup(&self, dir: &str, name: &str) -> Known {
        let dirs = self.lock();
        match dirs.get(dir) {
            Some(d) if d.fresh() => match d.names.get(name) {
                Some(Some(m)) => Known::Present(m.clone()),
                Some(None) => Known::Absent,
                None if d.complete => Known::Absent,
                None => Known::Unknown,
            },
            _ => Known::Unknown,
        }
    }

    /// Whether to list `dir` to answer for `name`: the session already asked about another
    /// name there (so it is likely to ask about more), and the directory is not known to be
    /// too big for one page.
    pub fn worth_listing(&self, dir: &str, name: &str) -> bool {
        let dirs = self.lock();
        dirs.get(dir).is_some_and(|d| {
            d.fresh() && !d.complete && !d.too_big && d.names.keys().any(|n| n != name)
        })
    }

    /// Remembers what storage said of one name.
    pub fn noted(&self, dir: &str, name: &str, meta: Option<Meta>) {
        let mut dirs = self.lock();
        if let Some(d) = Self::entry(&mut dirs, dir) {
            if d.names.len() < MAX_ENTRIES {
                d.names.insert(name.to_string(), meta);
            }
        }
    }

    /// Remembers a complete listing of `dir`.
    pub fn listed(&self, dir: &str, entries: &[DirEntry]) {
        if entries.len() > MAX_ENTRIES {
            return self.too_big(dir);
        }
        let mut dirs = self.lock();
        dirs.remove(dir);
        if let Some(d) = Self::entry(&mut dirs, dir) {
            d.names = entries
                .iter()
                .map(|e| (e.name.clone(), Some(e.meta.clone())))
                .collect();
            d.complete = true;
        }
    }

    /// `dir` did not fit in one page.
    pub fn too_big(&self, dir: &str) {
        let mut dirs = self.lock();
        if let Some(d) = Self::entry(&mut dirs, dir) {
            d.too_big = true;
        }
    }

    /// This session put `name` in `dir` (an upload it committed, a directory it made).
    pub fn wrote(&self, dir: &str, name: &str, meta: Meta) {
        if let Some(d) = self.lock().get_mut(dir) {
            if d.names.len() < MAX_ENTRIES || d.names.contains_key(name) {
                d.names.insert(name.to_string(), Some(meta));
            } else {
                d.names.remove(name);
                d.complete = false;
            }
        }
    }

    /// This session removed `name` from `dir` (a delete, a rename's source).
    pub fn removed(&self, dir: &str, name: &str) {
        if let Some(d) = self.lock().get_mut(dir) {
            if d.complete {
                d.names.remove(name);
            } else if d.names.len() < MAX_ENTRIES || d.names.contains_key(name) {
                d.names.insert(name.to_string(), None);
            } else {
                d.names.remove(name);
            }
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

    #[test]
    fn a_second_name_makes_a_directory_worth_listing_unless_it_is_too_big() {
        let v = View::default();
        assert!(!v.worth_listing("in", "a.csv"));
        v.noted("in", "a.csv", None);
        assert_eq!(v.lookup("in", "a.csv"), Known::Absent);
        // Asking about the same name again is answered; a new one is not known yet.
        assert!(!v.worth_listing("in", "a.csv"));
        assert_eq!(v.lookup("in", "b.csv"), Known::Unknown);
        assert!(v.worth_listing("in", "b.csv"));
        v.too_big("in");
        assert!(!v.worth_listing("in", "b.csv"));
        // What a directory too big to list still remembers by name.
        v.wrote("in", "a.csv", file(9));
        assert_eq!(v.lookup("in", "a.csv"), Known::Present(file(9)));
        v.removed("in", "a.csv");
        assert_eq!(v.lookup("in", "a.csv"), Known::Absent);
        assert_eq!(v.lookup("in", "c.csv"), Known::Unknown);
    }
}
