//! Partner folders (logical directories): a client path such as `/inbound` mapped to its own
//! storage location with its own permissions. An account with folders sees only them; one
//! without sees its home at `/`, as always.

use serde::{Deserialize, Serialize};

use super::Permissions;
use crate::session::path::VirtualPath;
use crate::storage::Home;

/// One folder of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// Where the partner sees it: `/inbound`, `/reports/out` (never `/`).
    pub path: VirtualPath,
    pub home: Home,
    pub permissions: Permissions,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FolderError {
    #[error("invalid folder path {0:?}: use an absolute path below / such as /inbound")]
    BadPath(String),
    #[error("folder {0} overlaps folder {1}: one folder cannot hold another")]
    Overlaps(String, String),
    #[error("folder {0} already exists")]
    Exists(String),
    #[error("no folder {0}")]
    Unknown(String),
    #[error("stored folders are unreadable: {0}")]
    Corrupt(String),
}

/// Parses an admin-given folder path.
pub fn parse_path(input: &str) -> Result<VirtualPath, FolderError> {
    let p = VirtualPath::parse(&VirtualPath::root(), input)
        .map_err(|_| FolderError::BadPath(input.into()))?;
    if p.is_root() || !input.starts_with('/') {
        return Err(FolderError::BadPath(input.into()));
    }
    Ok(p)
}

/// Adds `folder` to `folders`, refusing a duplicate or a folder inside another.
pub fn add(folders: &mut Vec<Folder>, folder: Folder) -> Result<(), FolderError> {
    for f in folders.iter() {
        if f.path == folder.path {
            return Err(FolderError::Exists(folder.path.to_string()));
        }
        if f.path.starts_with(&folder.path) || folder.path.starts_with(&f.path) {
            return Err(FolderError::Overlaps(
                folder.path.to_string(),
                f.path.to_string(),
            ));
        }
    }
    folders.push(folder);
    folders.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}

/// Removes the folder at `path`.
pub fn remove(folders: &mut Vec<Folder>, path: &VirtualPath) -> Result<(), FolderError> {
    let before = folders.len();
    folders.retain(|f| &f.path != path);
    if folders.len() == before {
        return Err(FolderError::Unknown(path.to_string()));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Stored {
    path: String,
    home: String,
    permissions: String,
}

/// The `folders` column: a JSON list.
pub fn to_column(folders: &[Folder]) -> String {
    let list: Vec<Stored> = folders
        .iter()
        .map(|f| Stored {
            path: f.path.to_string(),
            home: f.home.to_uri(),
            permissions: f.permissions.to_string(),
        })
        .collect();
    serde_json::to_string(&list).expect("folders serialise")
}

pub fn from_column(s: &str) -> Result<Vec<Folder>, FolderError> {
    let list: Vec<Stored> =
        serde_json::from_str(s).map_err(|e| FolderError::Corrupt(e.to_string()))?;
    list.into_iter()
        .map(|f| {
            Ok(Folder {
                path: parse_path(&f.path)?,
                home: Home::parse_uri(&f.home).map_err(|e| FolderError::Corrupt(e.to_string()))?,
                permissions: f
                    .permissions
                    .parse()
                    .map_err(|e| FolderError::Corrupt(format!("{e}")))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(path: &str) -> Folder {
        Folder {
            path: parse_path(path).unwrap(),
            home: Home::parse_uri("s3://reports/acme/in/").unwrap(),
            permissions: "list,upload".parse().unwrap(),
        }
    }

    #[test]
    fn folders_are_absolute_distinct_and_never_nested() {
        assert!(parse_path("/").is_err());
        assert!(parse_path("inbound").is_err());
        assert!(parse_path("/../x").is_err());
        assert_eq!(parse_path("/in//x/").unwrap().to_string(), "/in/x");
        let mut fs = Vec::new();
        add(&mut fs, folder("/outbound")).unwrap();
        add(&mut fs, folder("/inbound")).unwrap();
        assert_eq!(
            add(&mut fs, folder("/inbound")),
            Err(FolderError::Exists("/inbound".into()))
        );
        assert!(matches!(
            add(&mut fs, folder("/inbound/x")),
            Err(FolderError::Overlaps(..))
        ));
        add(&mut fs, folder("/in")).unwrap();
        assert_eq!(from_column(&to_column(&fs)).unwrap(), fs);
        assert_eq!(fs[0].path.to_string(), "/in");
        remove(&mut fs, &parse_path("/in").unwrap()).unwrap();
        assert!(remove(&mut fs, &parse_path("/in").unwrap()).is_err());
        assert_eq!(from_column("[]").unwrap(), Vec::new());
        assert!(from_column("{").is_err());
    }
}
