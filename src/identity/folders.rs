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
    pub rules: Rules,
}

/// What a folder accepts, beyond permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Globs on the file name (`*.csv`); when any, a name must match one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Globs on the file name that are refused even if allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Largest upload accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// A name that once arrived here is refused for ever after (even once the pipeline has
    /// moved the file away): for processors that deduplicate by file name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_reuse_names: bool,
    /// Client path of the receipt written for each arrival, `{name}` standing for the file's
    /// name (`/outbound/receipts/{name}.receipt.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    /// Client path of the folder that files arriving here with a PGP suffix are decrypted
    /// into (`pgp/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decrypt_to: Option<String>,
    /// With `decrypt_to`: only files signed by one of the account's PGP keys are decrypted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_signature: bool,
    /// What an arrival whose SHA-256 and size equal an earlier one's (here, within
    /// `duplicate_window`) is: let through, flagged in its event, or refused.
    #[serde(default, skip_serializing_if = "Duplicates::is_allow")]
    pub duplicates: Duplicates,
    /// How far back an arrival counts for `duplicates`, in seconds (default 31 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_window_s: Option<u64>,
    /// Whether uploads here are scanned for malware (`--scan`, `--no-scan`); none: as
    /// `scan.by_default` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<bool>,
}

/// What a folder does with a file whose content already arrived there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Duplicates {
    #[default]
    Allow,
    /// It lands, and its event says which earlier arrival it repeats.
    Flag,
    /// It is refused before it becomes visible.
    Refuse,
}

impl Duplicates {
    pub fn is_allow(&self) -> bool {
        *self == Duplicates::Allow
    }

    pub fn name(self) -> &'static str {
        match self {
            Duplicates::Allow => "allow",
            Duplicates::Flag => "flag",
            Duplicates::Refuse => "refuse",
        }
    }
}

impl std::str::FromStr for Duplicates {
    type Err = FolderError;
    fn from_str(s: &str) -> Result<Self, FolderError> {
        match s {
            "allow" => Ok(Duplicates::Allow),
            "flag" => Ok(Duplicates::Flag),
            "refuse" => Ok(Duplicates::Refuse),
            other => Err(FolderError::BadDuplicates(other.into())),
        }
    }
}

/// How far back an arrival counts as the one a new file duplicates, by default.
pub const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(31 * 86400);

impl Rules {
    /// How far back an earlier arrival makes a file a duplicate.
    pub fn duplicate_window(&self) -> std::time::Duration {
        self.duplicate_window_s
            .map_or(DUPLICATE_WINDOW, std::time::Duration::from_secs)
    }
}

impl Rules {
    /// Parses comma lists of globs, refusing a pattern that is not one.
    pub fn patterns(list: &str) -> Result<Vec<String>, FolderError> {
        list.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                glob::Pattern::new(p)
                    .map(|_| p.to_string())
                    .map_err(|e| FolderError::BadPattern(p.into(), e.msg.into()))
            })
            .collect()
    }

    /// Checks a receipt template: an absolute path with `{name}` in its last segment.
    pub fn receipt(template: &str) -> Result<String, FolderError> {
        let bad = || FolderError::BadReceipt(template.into());
        let last = template.rsplit('/').next().unwrap_or_default();
        if !last.contains("{name}") {
            return Err(bad());
        }
        parse_path(&template.replace("{name}", "x")).map_err(|_| bad())?;
        Ok(template.to_string())
    }

    /// Why a file may not be named `name` here, if it may not. Patterns match whatever the
    /// case (`*.exe` refuses `PAYLOAD.EXE`): partners' systems do not agree on case.
    pub fn refuse_name(&self, name: &str) -> Option<String> {
        let options = glob::MatchOptions {
            case_sensitive: false,
            ..glob::MatchOptions::new()
        };
        let matches =
            |p: &String| glob::Pattern::new(p).is_ok_and(|g| g.matches_with(name, options));
        if let Some(p) = self.deny.iter().find(|p| matches(p)) {
            return Some(format!("{name:?} matches the refused pattern {p:?}"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(matches) {
            return Some(format!(
                "{name:?} is not an accepted name here ({})",
                self.allow.join(", ")
            ));
        }
        None
    }
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
    #[error("invalid name pattern {0:?}: {1}")]
    BadPattern(String, String),
    #[error("invalid receipt path {0:?}: use an absolute path whose file name holds {{name}}, such as /outbound/receipts/{{name}}.receipt.json")]
    BadReceipt(String),
    #[error("invalid --duplicates {0:?}: use allow, flag or refuse")]
    BadDuplicates(String),
    #[error("--decrypt-to {0}: that path is in none of the account's folders; add the folder for the plaintext first, one the partner can only read (wharf user dir add ACCOUNT {0} LOCATION --permissions list,download)")]
    DecryptTargetMissing(String),
    #[error("--decrypt-to {0}: the plaintext would land in folder {1}, where the partner can {2}; verified plaintext must go to a folder the partner can only read (its permissions at most list,download)")]
    DecryptTargetWritable(String, String, String),
}

/// What a partner must not be able to do where verified plaintext lands: put a file there,
/// replace one, rename one in or out, or delete one.
const WRITES: [super::Permission; 5] = [
    super::Permission::Upload,
    super::Permission::Overwrite,
    super::Permission::Rename,
    super::Permission::Delete,
    super::Permission::Mkdir,
];

/// The folder holding client path `path`, if any.
pub fn containing<'a>(folders: &'a [Folder], path: &VirtualPath) -> Option<&'a Folder> {
    folders.iter().find(|f| path.starts_with(&f.path))
}

/// Checks that every folder's `--decrypt-to` names a place in a folder the partner can only
/// read: plaintext there carries a verified signature, and the partner (or whoever holds its
/// password but not its signing key) must not be able to replace it.
pub fn check_decrypt_targets(folders: &[Folder]) -> Result<(), FolderError> {
    for f in folders {
        let Some(to) = &f.rules.decrypt_to else {
            continue;
        };
        let path = parse_path(to)?;
        let Some(target) = containing(folders, &path) else {
            return Err(FolderError::DecryptTargetMissing(to.clone()));
        };
        let can: Vec<&str> = WRITES
            .iter()
            .filter(|p| target.permissions.has(**p))
            .map(|p| p.name())
            .collect();
        if !can.is_empty() {
            return Err(FolderError::DecryptTargetWritable(
                to.clone(),
                target.path.to_string(),
                can.join(", "),
            ));
        }
    }
    Ok(())
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
    #[serde(default, flatten)]
    rules: Rules,
}

/// The `folders` column: a JSON list.
pub fn to_column(folders: &[Folder]) -> String {
    let list: Vec<Stored> = folders
        .iter()
        .map(|f| Stored {
            path: f.path.to_string(),
            home: f.home.to_uri(),
            permissions: f.permissions.to_string(),
            rules: f.rules.clone(),
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
                rules: f.rules,
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
            rules: Rules::default(),
        }
    }

    #[test]
    fn names_are_checked_against_deny_then_allow() {
        let r = Rules {
            allow: Rules::patterns("*.csv, *.xml,*.pgp").unwrap(),
            deny: Rules::patterns("tmp-*").unwrap(),
            max_size: None,
            no_reuse_names: true,
            receipt: Some(Rules::receipt("/out/{name}.receipt.json").unwrap()),
            ..Default::default()
        };
        assert!(Rules::receipt("/out/receipt.json").is_err());
        assert!(Rules::receipt("out/{name}.json").is_err());
        assert!(Rules::receipt("/{name}/x.json").is_err());
        assert_eq!(r.refuse_name("settle-2026-12-01.csv"), None);
        assert_eq!(r.refuse_name("ack.xml"), None);
        assert!(r
            .refuse_name("evil.exe")
            .unwrap()
            .contains("not an accepted name"));
        assert!(r.refuse_name("tmp-1.csv").unwrap().contains("tmp-*"));
        // Patterns match whatever the case.
        assert_eq!(r.refuse_name("SETTLE.CSV"), None);
        assert!(r.refuse_name("TMP-1.CSV").unwrap().contains("tmp-*"));
        assert!(r.refuse_name("PAYLOAD.EXE").is_some());
        assert_eq!(Rules::default().refuse_name("anything"), None);
        assert!(matches!(
            Rules::patterns("[a-"),
            Err(FolderError::BadPattern(..))
        ));
        let f = Folder {
            rules: r.clone(),
            ..folder("/in")
        };
        assert_eq!(
            from_column(&to_column(std::slice::from_ref(&f))).unwrap(),
            vec![f]
        );
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
