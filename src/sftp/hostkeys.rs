//! The server's SSH host keys: ed25519, ecdsa-sha2-nistp256 (for clients such as JSch 0.1.5x
//! that know neither ed25519 nor rsa-sha2) and rsa-3072, generated on first start in
//! `sftp.host_key_dir`, then kept and reused so every instance pointed at the same directory
//! presents the same identity.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::RsaKeypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, EcdsaCurve, PrivateKey};

use crate::identity::keys::fingerprint;

/// Missing keys are generated, so a directory from an older wharf gains the ECDSA key on its
/// next start while the keys partners already pinned stay as they are.
const FILES: [(&str, KeyKind); 3] = [
    ("ssh_host_ed25519_key", KeyKind::Ed25519),
    ("ssh_host_ecdsa_key", KeyKind::EcdsaP256),
    ("ssh_host_rsa_key", KeyKind::Rsa3072),
];

#[derive(Clone, Copy)]
enum KeyKind {
    Ed25519,
    EcdsaP256,
    Rsa3072,
}

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("host key {path} is not a readable OpenSSH private key: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("generating a host key failed: {0}")]
    Generate(String),
}

/// Loads the host keys from `dir`, generating the missing ones.
pub fn load_or_generate(dir: &Path) -> Result<Vec<PrivateKey>, HostKeyError> {
    std::fs::create_dir_all(dir).map_err(|e| HostKeyError::Io {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let mut keys = Vec::new();
    for (name, kind) in FILES {
        let path = dir.join(name);
        if !path.exists() {
            generate(&path, kind)?;
        }
        keys.push(load(&path)?);
    }
    Ok(keys)
}

fn load(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| HostKeyError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    PrivateKey::from_openssh(text.replace("\r\n", "\n")).map_err(|e| HostKeyError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes a new key under a temporary name and links it into place, so two instances
/// starting at once end up sharing one key instead of overwriting each other's.
fn generate(path: &Path, kind: KeyKind) -> Result<(), HostKeyError> {
    let mut rng = rand010::rng();
    let key = match kind {
        KeyKind::Ed25519 => PrivateKey::random(&mut rng, Algorithm::Ed25519),
        KeyKind::EcdsaP256 => PrivateKey::random(
            &mut rng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        ),
        KeyKind::Rsa3072 => RsaKeypair::random(&mut rng, 3072).map(PrivateKey::from),
    }
    .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    let io = |e: std::io::Error| HostKeyError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(e)),
    }
    if let Ok(public) = key.public_key().to_openssh() {
        let _ = std::fs::write(path.with_extension("pub"), format!("{public}\n"));
    }
    tracing::info!(path = %path.display(), fingerprint = %fingerprint(key.public_key()), "generated host key");
    Ok(())
}

/// `(algorithm, SHA256 fingerprint)` of each key, as `wharf hostkey list` prints them.
pub fn fingerprints(keys: &[PrivateKey]) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| {
            (
                k.algorithm().as_str().to_string(),
                fingerprint(k.public_key()),
            )
        })
        .collect()
}
