//! What an account may do: `list,upload,download,overwrite,delete,rename,mkdir`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    List,
    Upload,
    Download,
    Overwrite,
    Delete,
    Rename,
    Mkdir,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::List,
        Permission::Upload,
        Permission::Download,
        Permission::Overwrite,
        Permission::Delete,
        Permission::Rename,
        Permission::Mkdir,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::List => "list",
            Permission::Upload => "upload",
            Permission::Download => "download",
            Permission::Overwrite => "overwrite",
            Permission::Delete => "delete",
            Permission::Rename => "rename",
            Permission::Mkdir => "mkdir",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Permission`]s, written as a comma list in the CLI and the database.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown permission {0:?}; expected a comma list of list,upload,download,overwrite,delete,rename,mkdir")]
pub struct UnknownPermission(pub String);

impl Permissions {
    pub const fn none() -> Self {
        Permissions(0)
    }

    pub fn has(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn with(self, p: Permission) -> Self {
        Permissions(self.0 | p.bit())
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.into_iter().filter(move |p| self.has(*p))
    }
}

/// The ingestion default: no download, no delete.
impl Default for Permissions {
    fn default() -> Self {
        [
            Permission::List,
            Permission::Upload,
            Permission::Overwrite,
            Permission::Rename,
            Permission::Mkdir,
        ]
        .into_iter()
        .fold(Permissions::none(), Permissions::with)
    }
}

impl FromStr for Permissions {
    type Err = UnknownPermission;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = Permissions::none();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = Permission::ALL
                .into_iter()
                .find(|p| p.name() == part)
                .ok_or_else(|| UnknownPermission(part.into()))?;
            set = set.with(p);
        }
        Ok(set)
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Permission::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown() {
        let p: Permissions = "upload, list,delete".parse().unwrap();
        assert_eq!(p.to_string(), "list,upload,delete");
        assert_eq!(
            Permissions::default().to_string(),
            "list,upload,overwrite,rename,mkdir"
        );
        assert_eq!(
            "list,chmod".parse::<Permissions>(),
            Err(UnknownPermission("chmod".into()))
        );
        assert_eq!("".parse::<Permissions>().unwrap(), Permissions::none());
    }
}
