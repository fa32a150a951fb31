//! API-key authentication: keys are stored as SHA-256 hashes in config, compared in constant
//! time against every configured key (no early exit), and each key writes one tenant only.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::TenantConfig;
use crate::error::ConfigError;

/// Maps presented API keys to tenants.
#[derive(Clone)]
pub struct Authenticator {
    keys: Vec<([u8; 32], String)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the hashes.
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The SHA-256 of `key` as lower-case hex: what goes into the config file.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Authenticator {
    /// Builds the key table; every hash must be 64 hex digits.
    pub fn new(tenants: &[TenantConfig]) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for t in tenants {
            for h in &t.api_key_sha256 {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(h.trim(), &mut hash).map_err(|_| {
                    ConfigError(format!("tenant {:?}: api_key_sha256 entries must be 64 hex digits (sha256 of the key)", t.id))
                })?;
                // One key, one tenant: a hash listed under two tenants would write the events
                // of its key under whichever came last, and refuse the other tenant's own key.
                if let Some((_, first)) = keys.iter().find(|(k, _)| *k == hash) {
                    return Err(ConfigError(if *first == t.id {
                        format!("tenant {:?}: an api_key_sha256 entry is listed twice", t.id)
                    } else {
                        format!(
                            "tenants {first:?} and {:?} list the same api_key_sha256 entry: a key \
                             belongs to one tenant",
                            t.id
                        )
                    }));
                }
                keys.push((hash, t.id.clone()));
            }
        }
        Ok(Authenticator { keys })
    }

    /// The tenant of `presented`, if it is a configured key.
    pub fn tenant(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (hash, tenant) in &self.keys {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(tenant.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> Vec<TenantConfig> {
        vec![
            TenantConfig {
                id: "acme".into(),
                api_key_sha256: vec![hash_key("k-acme-1"), hash_key("k-acme-2")],
                events_per_second: None,
            },
            TenantConfig {
                id: "lucky".into(),
                api_key_sha256: vec![hash_key("k-lucky")],
                events_per_second: None,
            },
        ]
    }

    #[test]
    fn keys_map_to_their_tenant() {
        let a = Authenticator::new(&tenants()).expect("config");
        assert_eq!(a.tenant("k-acme-1"), Some("acme"));
        assert_eq!(a.tenant("k-acme-2"), Some("acme"));
        assert_eq!(a.tenant("k-lucky"), Some("lucky"));
        assert_eq!(a.tenant("k-acme-3"), None);
        assert_eq!(a.tenant(""), None);
    }

    #[test]
    fn bad_hashes_are_a_config_error_and_debug_hides_them() {
        let bad = vec![TenantConfig {
            id: "x".into(),
            api_key_sha256: vec!["abc".into()],
            events_per_second: None,
        }];
        assert!(Authenticator::new(&bad).is_err());
        // A key under two tenants, or twice under one, is refused, naming them (not the hash).
        let mut shared = tenants();
        shared[1].api_key_sha256.push(hash_key("k-acme-2"));
        let e = Authenticator::new(&shared).expect_err("shared key").0;
        assert!(
            e.contains("tenants \"acme\" and \"lucky\" list the same api_key_sha256 entry"),
            "{e}"
        );
        assert!(!e.contains(&hash_key("k-acme-2")));
        let mut twice = tenants();
        twice[0].api_key_sha256.push(hash_key("k-acme-1"));
        let e = Authenticator::new(&twice).expect_err("listed twice").0;
        assert!(
            e.contains("tenant \"acme\": an api_key_sha256 entry is listed twice"),
            "{e}"
        );
        let a = Authenticator::new(&tenants()).expect("config");
        assert!(!format!("{a:?}").contains(&hash_key("k-lucky")));
    }
}
