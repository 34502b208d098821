//! Account homes: `s3://bucket/prefix/` and `file:///dir/` URIs, parsed and resolved against
//! `storage.default_home`.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// An account's home: the root of everything its partner sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// Objects under `prefix` (empty, or ending in `/`) in `bucket`.
    S3 { bucket: String, prefix: String },
    /// Files under an absolute local directory.
    Local { dir: PathBuf },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid home {input:?}: {reason}")]
pub struct HomeError {
    pub input: String,
    pub reason: String,
}

impl Home {
    /// Parses a stored or admin-given URI: `s3://bucket/prefix/` or `file:///absolute/dir`.
    pub fn parse_uri(input: &str) -> Result<Home, HomeError> {
        let err = |reason: &str| HomeError {
            input: input.into(),
            reason: reason.into(),
        };
        if let Some(rest) = input.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket).map_err(|r| err(&r))?;
            let prefix = normalise_relative(prefix).map_err(|r| err(&r))?;
            Ok(Home::S3 {
                bucket: bucket.into(),
                prefix,
            })
        } else if input.starts_with("file://") {
            let u = url::Url::parse(input).map_err(|e| err(&e.to_string()))?;
            if u.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(err("file URIs take no host: use file:///absolute/dir"));
            }
            let dir = u
                .to_file_path()
                .map_err(|_| err("not an absolute local path"))?;
            check_local_dir(&dir).map_err(|r| err(&r))?;
            Ok(Home::Local { dir })
        } else {
            Err(err("expected s3://bucket/prefix/ or file:///absolute/dir"))
        }
    }

    /// The home for a new account: `arg` as given by the admin (a URI, or a path relative to
    /// `default_home`), or `default_home` + `username` + `/`. A relative local `default_home`
    /// is resolved against `cwd` so the stored URI does not depend on where `serve` runs.
    pub fn for_account(
        arg: Option<&str>,
        default_home: &str,
        username: &str,
        cwd: &Path,
    ) -> Result<Home, HomeError> {
        if let Some(a) = arg {
            if a.starts_with("s3://") || a.starts_with("file://") {
                return Home::parse_uri(a);
            }
            if a.contains("://") || a.starts_with('/') {
                return Err(HomeError {
                    input: a.into(),
                    reason: "expected s3://bucket/prefix/, file:///absolute/dir or a path relative to storage.default_home".into(),
                });
            }
        }
        let rel = arg.unwrap_or(username);
        let rel = normalise_relative(rel).map_err(|reason| HomeError {
            input: rel.into(),
            reason,
        })?;
        let base = Home::default_base(default_home, cwd)?;
        Ok(base.join(&rel))
    }

    /// The home that `storage.default_home` names (accounts' homes are below it).
    pub fn default_base(default_home: &str, cwd: &Path) -> Result<Home, HomeError> {
        if default_home.starts_with("s3://") || default_home.starts_with("file://") {
            return Home::parse_uri(default_home);
        }
        let dir = cwd.join(default_home);
        check_local_dir(&dir).map_err(|reason| HomeError {
            input: default_home.into(),
            reason: format!("storage.default_home: {reason}"),
        })?;
        Ok(Home::Local { dir })
    }

    fn join(&self, rel: &str) -> Home {
        match self {
            Home::S3 { bucket, prefix } => Home::S3 {
                bucket: bucket.clone(),
                prefix: format!("{prefix}{rel}"),
            },
            Home::Local { dir } => Home::Local {
                dir: dir.join(rel.trim_end_matches('/')),
            },
        }
    }

    /// The canonical URI stored in the database and shown to admins.
    pub fn to_uri(&self) -> String {
        match self {
            Home::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Home::Local { dir } => {
                let mut u = url::Url::from_directory_path(dir)
                    .map(|u| u.to_string())
                    .unwrap_or_else(|_| format!("file://{}/", dir.display()));
                if !u.ends_with('/') {
                    u.push('/');
                }
                u
            }
        }
    }
}

impl fmt::Display for Home {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

fn validate_bucket(b: &str) -> Result<(), String> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let ends_ok = b
        .bytes()
        .next()
        .zip(b.bytes().last())
        .is_some_and(|(f, l)| f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric());
    if (3..=63).contains(&b.len()) && ok_chars && ends_ok {
        Ok(())
    } else {
        Err(format!(
            "bucket name {b:?} must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
        ))
    }
}

/// A relative `a/b/` prefix: no `..`, `.`, empty segments, control characters or leading `/`.
/// Returns it with exactly one trailing `/` (or empty).
fn normalise_relative(p: &str) -> Result<String, String> {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("path segments must be non-empty and not '.' or '..'".into());
        }
        if seg.chars().any(char::is_control) {
            return Err("control characters are not allowed".into());
        }
    }
    Ok(format!("{trimmed}/"))
}

fn check_local_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err("a local home must be an absolute directory".into());
    }
    if dir.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("'..' is not allowed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_home_is_local_dir_plus_username() {
        let h = Home::for_account(None, "data/", "acme", Path::new("/srv/wharf")).unwrap();
        assert_eq!(h.to_uri(), "file:///srv/wharf/data/acme/");
        assert_eq!(Home::parse_uri(&h.to_uri()).unwrap(), h);
    }

    #[test]
    fn s3_default_and_overrides() {
        let h = Home::for_account(None, "s3://reports/in/", "acme", Path::new("/")).unwrap();
        assert_eq!(h.to_uri(), "s3://reports/in/acme/");
        let h = Home::for_account(Some("s3://other/x"), "data/", "acme", Path::new("/")).unwrap();
        assert_eq!(
            h,
            Home::S3 {
                bucket: "other".into(),
                prefix: "x/".into()
            }
        );
        let h = Home::for_account(Some("s3://bkt"), "data/", "a", Path::new("/")).unwrap();
        assert_eq!(h.to_uri(), "s3://bkt/");
        let h = Home::for_account(Some("team/acme"), "s3://rep/p/", "a", Path::new("/")).unwrap();
        assert_eq!(h.to_uri(), "s3://rep/p/team/acme/");
    }

    #[test]
    fn rejects_bad_homes() {
        for bad in [
            "s3://Bad_Bucket/x/",
            "s3://ab/",
            "s3://bucket/../x/",
            "file://host/dir",
            "http://x/",
            "/abs/path",
            "../escape",
            "a//b",
        ] {
            assert!(
                Home::for_account(Some(bad), "data/", "u", Path::new("/srv")).is_err(),
                "{bad} accepted"
            );
        }
    }
}
