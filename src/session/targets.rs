//! Where an arrival's receipt and decrypted plaintext go: the folder the account's rules name,
//! resolved through the same routing as a partner's own paths.

use super::fs::Place;
use super::intent::{DecryptTarget, ReceiptTarget};
use super::path::VirtualPath;
use super::{Mount, Session};

impl Session {
    /// Where the plaintext of `path` (at `rel` in `m`) goes, when `m` decrypts PGP files and
    /// the name has a PGP suffix: the folder `--decrypt-to` names, at the same path inside it
    /// without the suffix. A file arriving inside that target itself is not decrypted.
    pub(super) fn decrypt_target(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
    ) -> Option<DecryptTarget> {
        let to = m.rules.decrypt_to.as_ref()?;
        let lower = rel.to_ascii_lowercase();
        let suffix = self
            .ctx
            .pgp_suffixes
            .iter()
            .find(|s| lower.ends_with(&s.to_ascii_lowercase()))?;
        let plain_rel = &rel[..rel.len() - suffix.len()];
        if plain_rel.is_empty() || plain_rel.ends_with('/') {
            return None;
        }
        let to = VirtualPath::parse(&VirtualPath::root(), to).ok()?;
        if path.starts_with(&to) {
            return None;
        }
        let client = format!("{}/{plain_rel}", to.to_string().trim_end_matches('/'));
        let target = VirtualPath::parse(&VirtualPath::root(), &client)
            .ok()
            .and_then(|p| match self.place(&p) {
                Ok(Place::In(t, trel)) if !trel.is_empty() => Some(DecryptTarget {
                    source_home: m.home.to_uri(),
                    source_path: rel.to_string(),
                    source_client_path: path.to_string(),
                    target_home: t.home.to_uri(),
                    target_path: trel,
                    target_client_path: p.to_string(),
                    require_signature: m.rules.require_signature,
                }),
                _ => None,
            });
        if target.is_none() {
            tracing::warn!(parent: &self.span, decrypt_to = %client, "the decryption target is in none of the account's folders: the file is not decrypted");
        }
        target
    }

    /// Where the receipt of `name` arriving in `m` goes, when `m` writes receipts.
    pub(super) fn receipt_target(&self, m: &Mount, name: &str) -> Option<ReceiptTarget> {
        let template = m.rules.receipt.as_ref()?;
        let client = template.replace("{name}", name);
        let target = VirtualPath::parse(&VirtualPath::root(), &client)
            .ok()
            .and_then(|p| match self.place(&p) {
                Ok(Place::In(t, rel)) if !rel.is_empty() => Some(ReceiptTarget {
                    home: t.home.to_uri(),
                    path: rel,
                    client_path: p.to_string(),
                }),
                _ => None,
            });
        if target.is_none() {
            tracing::warn!(parent: &self.span, receipt = %client, "the receipt path is in none of the account's folders: no receipt is written");
        }
        target
    }
}
