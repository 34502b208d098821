//! PGP on arrival: the deployment's decryption keys (`Keyring`, from `[pgp] keys`), partners'
//! signing keys as admins add them, the streaming decryption (`decrypt.rs`) and the built-in
//! `decrypt` sink that runs each arrival's decryption job (`sink.rs`).

pub mod decrypt;
pub mod sink;
pub mod worker;

use std::path::Path;

use anyhow::{bail, Context as _};
use pgp::composed::{Deserializable, SignedPublicKey, SignedSecretKey};
use pgp::packet::{SecretKey, SecretSubkey};
use pgp::types::{KeyDetails as _, Password};

use zeroize::Zeroizing;

use crate::config::PgpConfig;
use crate::identity::pgp::PartnerKey;

/// The deployment's secret keys, unlocked by one passphrase.
pub struct Keyring {
    keys: Vec<SignedSecretKey>,
    /// The same keys with their secret material unlocked, armored: what a decryption worker
    /// is given. The passphrase's S2K (65 million bytes of SHA-1 by GnuPG's defaults, 0.1 s
    /// or more per key) runs once here, not in every decryption.
    unlocked: Vec<Zeroizing<String>>,
}

/// A key as `wharf pgp keys` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub fingerprint: String,
    pub user_ids: Vec<String>,
    /// The subkeys' fingerprints (files are usually encrypted to one of these).
    pub subkeys: Vec<String>,
    pub file: String,
}

/// A fingerprint as wharf prints and stores it: upper-case hex.
pub fn fingerprint_hex(fp: &pgp::types::Fingerprint) -> String {
    hex::encode_upper(fp.as_bytes())
}

fn user_ids(users: &[pgp::types::SignedUser]) -> Vec<String> {
    users
        .iter()
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .collect()
}

impl Keyring {
    /// No keys: every decryption fails with `no_key`.
    pub fn empty() -> Keyring {
        Keyring {
            keys: Vec::new(),
            unlocked: Vec::new(),
        }
    }

    /// Loads every armored secret key the `keys` globs name (relative to `base`), and checks
    /// that the passphrase unlocks each. A glob that names no file is an error: a typo must
    /// not start an instance that cannot decrypt.
    pub fn load(cfg: &PgpConfig, base: &Path) -> anyhow::Result<(Keyring, Vec<KeyInfo>)> {
        let passphrase = match cfg.passphrase_env.as_ref().filter(|v| !v.is_empty()) {
            Some(var) => match std::env::var(var) {
                Ok(v) => Password::from(v),
                Err(_) => bail!(
                    "pgp.passphrase_env names {var}, which is not set: set it to the keys' passphrase"
                ),
            },
            None => Password::empty(),
        };
        let mut keys = Vec::new();
        let mut unlocked = Vec::new();
        let mut infos = Vec::new();
        for pattern in &cfg.keys {
            let full = if Path::new(pattern).is_absolute() {
                pattern.clone()
            } else {
                base.join(pattern).to_string_lossy().into_owned()
            };
            let files: Vec<_> = glob::glob(&full)
                .with_context(|| format!("pgp.keys: {pattern:?} is not a valid pattern"))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("pgp.keys: reading {pattern:?}"))?;
            if files.is_empty() {
                bail!("pgp.keys: {pattern:?} names no file");
            }
            for file in files {
                let text = std::fs::read(&file)
                    .with_context(|| format!("pgp.keys: cannot read {}", file.display()))?;
                let parsed = SignedSecretKey::from_armor_many(&text[..])
                    .with_context(|| {
                        format!("pgp.keys: {} is not an armored secret key", file.display())
                    })?
                    .0
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!("pgp.keys: {} is not an armored secret key", file.display())
                    })?;
                if parsed.is_empty() {
                    bail!("pgp.keys: {} holds no secret key", file.display());
                }
                for key in parsed {
                    key.verify_bindings().with_context(|| {
                        format!("pgp.keys: {} has invalid self-signatures", file.display())
                    })?;
                    let open = unlock(&key, &passphrase).with_context(|| {
                        format!(
                            "pgp.keys: the passphrase does not unlock {} (key {}){}",
                            file.display(),
                            fingerprint_hex(&key.primary_key.fingerprint()),
                            if cfg.passphrase_env.as_deref().unwrap_or("").is_empty() {
                                "; no passphrase is configured: set pgp.passphrase_env"
                            } else {
                                ""
                            }
                        )
                    })?;
                    infos.push(KeyInfo {
                        fingerprint: fingerprint_hex(&key.primary_key.fingerprint()),
                        user_ids: user_ids(&key.details.users),
                        subkeys: key
                            .secret_subkeys
                            .iter()
                            .map(|s| fingerprint_hex(&s.key.fingerprint()))
                            .collect(),
                        file: file.display().to_string(),
                    });
                    keys.push(key);
                    unlocked.push(open);
                }
            }
        }
        Ok((Keyring { keys, unlocked }, infos))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, unlocked and armored, for a decryption worker.
    pub(crate) fn unlocked(&self) -> &[Zeroizing<String>] {
        &self.unlocked
    }
}

/// The key with its secret material (the primary's and every subkey's) unlocked by `pw`,
/// armored; an error if `pw` does not unlock all of it.
fn unlock(key: &SignedSecretKey, pw: &Password) -> anyhow::Result<Zeroizing<String>> {
    let err = |e: pgp::errors::Error| anyhow::anyhow!("{e}");
    let mut open = key.clone();
    open.primary_key.remove_password(pw).map_err(err)?;
    // New packets, so their headers give the unlocked material's length.
    open.primary_key = SecretKey::new(
        open.primary_key.public_key().clone(),
        open.primary_key.secret_params().clone(),
    )
    .map_err(err)?;
    for sub in &mut open.secret_subkeys {
        sub.key.remove_password(pw).map_err(err)?;
        sub.key = SecretSubkey::new(
            sub.key.public_key().clone(),
            sub.key.secret_params().clone(),
        )
        .map_err(err)?;
    }
    Ok(Zeroizing::new(
        open.to_armored_string(Default::default()).map_err(err)?,
    ))
}

/// Parses a partner's public key as an admin gives it (armored, as `gpg --export --armor`
/// writes it), checking its self-signatures. A secret key is refused: wharf must never hold
/// a partner's.
pub fn parse_partner_key(armored: &[u8]) -> anyhow::Result<PartnerKey> {
    let text = std::str::from_utf8(armored).context("not an armored OpenPGP public key")?;
    if text.contains("PRIVATE KEY BLOCK") {
        bail!("this is a secret key: give the partner's public key (gpg --export --armor)");
    }
    let (key, _) = SignedPublicKey::from_armor_single(armored)
        .context("not an armored OpenPGP public key (gpg --export --armor writes one)")?;
    key.verify_bindings()
        .context("the key's self-signatures do not verify")?;
    let armored = key
        .to_armored_string(Default::default())
        .context("cannot re-armor the key")?;
    Ok(PartnerKey {
        fingerprint: fingerprint_hex(&key.primary_key.fingerprint()),
        user_ids: user_ids(&key.details.users),
        armored,
        added_at: crate::identity::now(),
    })
}

/// The public key of a stored partner key.
pub fn public_key(k: &PartnerKey) -> anyhow::Result<SignedPublicKey> {
    Ok(SignedPublicKey::from_armor_single(k.armored.as_bytes())?.0)
}
