//! `VirtualPath`: a client path parsed into normalised segments inside the account's home.
//! Parse, don't validate: once a `VirtualPath` exists it cannot point outside the jail, and
//! its names are in Unicode NFC, whatever form the client sent (so `é` typed as one code
//! point or as `e` and a combining accent is one name, for folder rules, for names a folder
//! accepts once, and in storage).

use std::fmt;

use unicode_normalization::UnicodeNormalization as _;

use crate::storage::RESERVED_PREFIX;

/// Longest client path accepted, in bytes (S3's key limit).
pub const MAX_PATH_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualPath {
    segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path contains a NUL or control character")]
    ControlCharacter,
    /// The SFTP decoder turns bytes that are not UTF-8 into U+FFFD; storing that would name
    /// the file differently from what the client sent, so such a path is refused instead.
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("path leads outside the home directory")]
    Escapes,
    #[error("name {0:?} is reserved")]
    Reserved(String),
}

impl VirtualPath {
    pub fn root() -> Self {
        VirtualPath {
            segments: Vec::new(),
        }
    }

    /// Resolves `input` (absolute, or relative to `cwd`) into the home. `.` and empty segments
    /// vanish; `..` climbs, and climbing above the home is refused rather than clamped, so a
    /// client never writes somewhere it did not name.
    pub fn parse(cwd: &VirtualPath, input: &str) -> Result<Self, PathError> {
        if input.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if input.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        if input.contains(char::REPLACEMENT_CHARACTER) {
            return Err(PathError::NotUtf8);
        }
        let normalised: String;
        let input = if unicode_normalization::is_nfc(input) {
            input
        } else {
            normalised = input.nfc().collect();
            if normalised.len() > MAX_PATH_LEN {
                return Err(PathError::TooLong);
            }
            &normalised
        };
        let mut segments = if input.starts_with('/') {
            Vec::new()
        } else {
            cwd.segments.clone()
        };
        for seg in input.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    if segments.pop().is_none() {
                        return Err(PathError::Escapes);
                    }
                }
                s if s.starts_with(RESERVED_PREFIX) => {
                    return Err(PathError::Reserved(s.to_string()))
                }
                s => segments.push(s.to_string()),
            }
        }
        let p = VirtualPath { segments };
        if p.relative().len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        Ok(p)
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The home-relative form storage takes: `a/b/c`, or `""` for the home itself.
    pub fn relative(&self) -> String {
        self.segments.join("/")
    }

    pub fn file_name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// Whether `self` is `prefix` or inside it.
    pub fn starts_with(&self, prefix: &VirtualPath) -> bool {
        self.segments.starts_with(&prefix.segments)
    }

    /// What is left of `self` below `prefix` (the root when they are equal).
    pub fn strip_prefix(&self, prefix: &VirtualPath) -> Option<VirtualPath> {
        self.starts_with(prefix).then(|| VirtualPath {
            segments: self.segments[prefix.segments.len()..].to_vec(),
        })
    }

    /// The name of the child of `self` on the way to `descendant` (`/a` towards `/a/b/c`:
    /// `b`), when `descendant` is strictly below `self`.
    pub fn child_towards<'a>(&self, descendant: &'a VirtualPath) -> Option<&'a str> {
        (descendant.segments.len() > self.segments.len() && descendant.starts_with(self))
            .then(|| descendant.segments[self.segments.len()].as_str())
    }

    pub fn parent(&self) -> VirtualPath {
        let mut segments = self.segments.clone();
        segments.pop();
        VirtualPath { segments }
    }
}

/// The client-visible absolute form: `/a/b/c`, or `/`.
impl fmt::Display for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<String, PathError> {
        VirtualPath::parse(&VirtualPath::root(), s).map(|v| v.to_string())
    }

    #[test]
    fn normalises_inside_the_home() {
        assert_eq!(p("/").unwrap(), "/");
        assert_eq!(p("").unwrap(), "/");
        assert_eq!(p(".").unwrap(), "/");
        assert_eq!(p("a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(p("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(p("a/..").unwrap(), "/");
        let cwd = VirtualPath::parse(&VirtualPath::root(), "/in").unwrap();
        assert_eq!(
            VirtualPath::parse(&cwd, "x.csv").unwrap().relative(),
            "in/x.csv"
        );
        assert_eq!(VirtualPath::parse(&cwd, "/x").unwrap().relative(), "x");
    }

    #[test]
    fn refuses_escapes_and_hostile_names() {
        assert_eq!(p(".."), Err(PathError::Escapes));
        assert_eq!(p("/../etc/passwd"), Err(PathError::Escapes));
        assert_eq!(p("a/../../b"), Err(PathError::Escapes));
        assert_eq!(p("a\0b"), Err(PathError::ControlCharacter));
        assert_eq!(p("a\nb"), Err(PathError::ControlCharacter));
        assert_eq!(p("bad-\u{FFFD}.csv"), Err(PathError::NotUtf8));
        assert_eq!(p(&"a".repeat(1025)), Err(PathError::TooLong));
        assert!(matches!(
            p("in/.wharf-upload-123"),
            Err(PathError::Reserved(_))
        ));
        // Backslashes are ordinary characters, never separators.
        assert_eq!(p("..\\..\\x").unwrap(), "/..\\..\\x");
    }
}
