//! Tenants' API keys as the keys file stores them: salted hashes, never the key.
//!
//! A key is `<key_id>.<secret>`: the id finds its entry, the entry holds a random salt and
//! SHA-256(salt ‖ secret). `aifab keys create` makes one and prints it once; the file
//! keeps only `{"key_id", "salt", "key_sha256_salted", "tenant"}`, so a copy of the file
//! (or of a backup, or of a ConfigMap) lets nobody in.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The shortest secret part a key may have (hex characters).
pub const MIN_SECRET_LEN: usize = 32;

/// A salted key entry, as the keys file holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaltedKey {
    pub key_id: String,
    /// Hex.
    pub salt: String,
    /// Hex SHA-256 of the salt's bytes followed by the secret's.
    pub key_sha256_salted: String,
    pub tenant: String,
}

/// A new key for `tenant`: the key to hand over (once) and the entry to store.
pub fn create(tenant: &str) -> (String, SaltedKey) {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    rng.fill_bytes(&mut salt);
    let (key_id, secret) = (format!("ak{}", hex::encode(id)), hex::encode(secret));
    let entry = SaltedKey {
        key_sha256_salted: salted_sha256(&salt, &secret),
        key_id: key_id.clone(),
        salt: hex::encode(salt),
        tenant: tenant.to_string(),
    };
    (format!("{key_id}.{secret}"), entry)
}

/// A tenant name ingest accepts: 1-64 of `A-Z a-z 0-9 _ . -`, starting alphanumeric.
pub fn valid_tenant(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// SHA-256(salt ‖ secret), hex.
pub fn salted_sha256(salt: &[u8], secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// A presented key's id and secret, when it has the `<key_id>.<secret>` form.
pub fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('.')
        .filter(|(id, secret)| !id.is_empty() && secret.len() >= MIN_SECRET_LEN)
}

impl SaltedKey {
    /// Whether `secret` is this entry's (constant time in the digest).
    pub fn matches(&self, secret: &str) -> bool {
        let Ok(salt) = hex::decode(&self.salt) else {
            return false;
        };
        let got = salted_sha256(&salt, secret);
        let want = self.key_sha256_salted.to_ascii_lowercase();
        crate::access::constant_time_eq(got.as_bytes(), want.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_matches_its_entry_and_nothing_else() {
        let (key, entry) = create("acme");
        let (id, secret) = split(&key).expect("the key's form");
        assert_eq!(id, entry.key_id);
        assert!(secret.len() >= MIN_SECRET_LEN);
        assert!(entry.matches(secret));
        assert!(!entry.matches(&format!("{secret}0")));
        assert!(!key.contains(&entry.key_sha256_salted) && !entry.salt.contains(secret));
        let (key2, entry2) = create("acme");
        assert_ne!(key, key2);
        assert_ne!(entry.salt, entry2.salt, "every key its own salt");
        assert_eq!(split("short.abc"), None);
        assert_eq!(split("no-dot"), None);
    }
}
