//! argon2id password hashing: PHC strings, generated passwords, and verification on the
//! blocking pool behind a semaphore with a dummy hash for unknown users.

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{
    PasswordHash as PhcHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// A stored argon2id PHC string. Not a secret in the sense of a password, but it must never be
/// printed: it is what an attacker would crack offline.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string read from the database, checking that it parses.
    pub fn from_phc(s: String) -> Result<Self, String> {
        PhcHash::new(&s).map_err(|e| format!("stored password hash is not a PHC string: {e}"))?;
        Ok(PasswordHash(s))
    }

    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("password must not be empty")]
    Empty,
    #[error("password is longer than 1024 bytes")]
    TooLong,
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// Hashes and verifies passwords with one set of argon2id costs.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    /// Bounds concurrent verifications so a login storm cannot take every core and all memory.
    permits: Arc<Semaphore>,
    /// Verified against when the user is unknown so the reply takes the same time.
    dummy: Arc<PasswordHash>,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, PasswordError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        let mut h = Hasher {
            params,
            permits: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            dummy: Arc::new(PasswordHash(String::new())),
        };
        let dummy = h.hash(&SecretString::from(generate_password()))?;
        h.dummy = Arc::new(dummy);
        Ok(h)
    }

    /// The costs configured in `[security]`.
    pub fn from_config(s: &crate::config::SecurityConfig) -> Result<Self, PasswordError> {
        Hasher::new(
            s.argon2_memory_kib,
            s.argon2_iterations,
            s.argon2_parallelism,
        )
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes a new password. Blocking: CPU- and memory-heavy by design.
    pub fn hash(&self, password: &SecretString) -> Result<PasswordHash, PasswordError> {
        let pw = password.expose_secret();
        if pw.is_empty() {
            return Err(PasswordError::Empty);
        }
        if pw.len() > 1024 {
            return Err(PasswordError::TooLong);
        }
        let salt = SaltString::generate(&mut OsRng);
        let phc = self
            .argon2()
            .hash_password(pw.as_bytes(), &salt)
            .map_err(|e| PasswordError::Hash(e.to_string()))?;
        Ok(PasswordHash(phc.to_string()))
    }

    /// Checks `password` against `stored`, or against a dummy hash when there is none, on the
    /// blocking pool. Returns true only for a real hash that matches.
    pub async fn verify(&self, stored: Option<&PasswordHash>, password: &SecretString) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let is_real = stored.is_some();
        let phc = stored.unwrap_or(&self.dummy).0.clone();
        let pw = SecretString::from(password.expose_secret().to_owned());
        let argon2 = self.argon2();
        let ok = tokio::task::spawn_blocking(move || {
            let pw = pw.expose_secret();
            if pw.len() > 1024 {
                return false;
            }
            // Stored hashes keep their own parameters, so costs can change without a rehash.
            PhcHash::new(&phc)
                .map(|h| argon2.verify_password(pw.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok && is_real
    }
}

/// A 24-character password from the OS CSPRNG over an unambiguous alphabet (~137 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = OsRng;
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = Hasher::new(64, 1, 1).unwrap();
        let pw = SecretString::from("correct horse");
        let stored = h.hash(&pw).unwrap();
        assert!(stored.as_phc().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(h.verify(Some(&stored), &pw).await);
        assert!(!h.verify(Some(&stored), &SecretString::from("wrong")).await);
        assert!(!h.verify(None, &pw).await);
        assert!(!format!("{stored:?}").contains("argon2"));
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password();
        assert!(a.len() >= 20);
        assert_ne!(a, generate_password());
    }
}
