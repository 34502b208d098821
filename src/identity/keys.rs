//! Partner SSH public keys: parsing OpenSSH `authorized_keys` lines, the supported
//! algorithms, and SHA256 fingerprints exactly as `ssh-keygen -lf` prints them.

use russh::keys::ssh_key::authorized_keys::Entry;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PublicKey};

/// The smallest RSA modulus accepted, as NIST and OpenSSH's own defaults advise.
pub const MIN_RSA_BITS: u32 = 2048;

/// A partner's public key as stored: the key line and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKey {
    /// `SHA256:<base64 without padding>`, the form `ssh-keygen -lf` prints.
    pub fingerprint: String,
    /// The SSH algorithm name (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`).
    pub algorithm: String,
    /// `<algorithm> <base64>` without comment or options.
    pub public_key: String,
    pub comment: String,
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("line {line}: not an OpenSSH public key ({reason})")]
    Malformed { line: usize, reason: String },
    #[error("line {line}: unsupported key type {algorithm} (use ed25519, ecdsa or rsa of at least 2048 bits)")]
    Unsupported { line: usize, algorithm: String },
    #[error("line {line}: RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS} required)")]
    WeakRsa { line: usize, bits: u32 },
    #[error("line {line}: authorized_keys options ({options}) are not supported; use --allow-ip for address limits")]
    Options { line: usize, options: String },
    #[error("no public key found in the input")]
    Empty,
}

/// Parses every non-blank, non-comment line of `input` as an OpenSSH public key.
pub fn parse_authorized_keys(input: &str) -> Result<Vec<AccountKey>, KeyError> {
    let mut keys = Vec::new();
    for (i, raw) in input.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(parse_line(i + 1, line)?);
    }
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(keys)
}

fn parse_line(line_no: usize, line: &str) -> Result<AccountKey, KeyError> {
    // Name the key type before asking the parser, so DSA or small RSA get a precise error
    // even where the parser itself refuses them.
    let first = line.split_whitespace().next().unwrap_or_default();
    if first == "ssh-dss" {
        return Err(KeyError::Unsupported {
            line: line_no,
            algorithm: first.into(),
        });
    }
    if let Some(bits) = rsa_bits_of_line(line) {
        if bits < MIN_RSA_BITS {
            return Err(KeyError::WeakRsa {
                line: line_no,
                bits,
            });
        }
    }
    let entry: Entry =
        line.parse()
            .map_err(|e: russh::keys::ssh_key::Error| KeyError::Malformed {
                line: line_no,
                reason: e.to_string(),
            })?;
    if !entry.config_opts().is_empty() {
        return Err(KeyError::Options {
            line: line_no,
            options: entry.config_opts().as_str().into(),
        });
    }
    let key = entry.public_key();
    check_supported(line_no, key)?;
    Ok(account_key(key))
}

/// Builds the stored form of an already-parsed key (the server does this at login).
pub fn account_key(key: &PublicKey) -> AccountKey {
    let bare = PublicKey::new(key.key_data().clone(), "");
    AccountKey {
        fingerprint: fingerprint(key),
        algorithm: key.algorithm().as_str().to_string(),
        public_key: bare
            .to_openssh()
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        comment: key.comment().as_str_lossy().to_string(),
        created_at: None,
    }
}

/// `SHA256:…` exactly as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn check_supported(line: usize, key: &PublicKey) -> Result<(), KeyError> {
    match key.algorithm() {
        Algorithm::Ed25519 => Ok(()),
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256 | EcdsaCurve::NistP384 | EcdsaCurve::NistP521,
        } => Ok(()),
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map_or(0, |r| r.key_size());
            if bits < MIN_RSA_BITS {
                Err(KeyError::WeakRsa { line, bits })
            } else {
                Ok(())
            }
        }
        other => Err(KeyError::Unsupported {
            line,
            algorithm: other.as_str().to_string(),
        }),
    }
}

/// The RSA modulus size of an `ssh-rsa` line, read straight from the wire encoding.
fn rsa_bits_of_line(line: &str) -> Option<u32> {
    use base64::Engine as _;
    let mut parts = line.split_whitespace();
    // Skip options, if any, up to the key type.
    let b64 = loop {
        let p = parts.next()?;
        if p == "ssh-rsa" {
            break parts.next()?;
        }
        if p.starts_with("ssh-") || p.starts_with("ecdsa-") || p.starts_with("sk-") {
            return None;
        }
    };
    let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let mut rest = blob.as_slice();
    let mut next = || -> Option<&[u8]> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let field = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(field)
    };
    let _kind = next()?;
    let _e = next()?;
    let n = next()?;
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return Some(0),
    };
    Some(n.len() as u32 * 8 - n[0].leading_zeros())
}
