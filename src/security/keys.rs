//! The API key file (--auth-keys): one key per line, `ID GROUPS SHA256HEX`,
//! `#` comments and blank lines allowed. Only the SHA-256 of each key is
//! held; a presented key is hashed and compared with every digest in
//! constant time, so neither the key nor the timing tells which one matched.

use super::groups::Groups;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub type Digest = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Named in logs and audit lines in place of the key.
    pub id: Arc<str>,
    pub groups: Groups,
    digest: Digest,
}

#[derive(Debug, Default)]
pub struct Keys(Vec<Key>);

pub fn sha256(bytes: &[u8]) -> Digest {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes; this is a bug")
}

impl Keys {
    /// Parses a key file; an error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", number + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, groups, hex] = fields[..] else {
                return Err(at(format!("expected `ID GROUPS SHA256HEX`, found {} fields", fields.len())));
            };
            let groups = Groups::parse(groups).map_err(at)?;
            let digest = parse_digest(hex).map_err(at)?;
            if keys.iter().any(|k| &*k.id == id) {
                return Err(at(format!("the key ID {id} appears twice")));
            }
            if keys.iter().any(|k| k.digest == digest) {
                return Err(at(format!("key {id} has the same digest as another key")));
            }
            keys.push(Key { id: id.into(), groups, digest });
        }
        Ok(Keys(keys))
    }

    /// The key whose digest is the SHA-256 of `presented`. Every digest is
    /// compared, in constant time, whichever matches.
    pub fn find(&self, presented: &[u8]) -> Option<&Key> {
        let digest = sha256(presented);
        let mut found = None;
        for key in &self.0 {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_digest(hex: &str) -> Result<Digest, String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!("the digest must be 64 hex digits (SHA-256), found {} characters", bytes.len()));
    }
    let mut digest = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| "the digest is not hex".to_string())?;
        digest[i] = u8::from_str_radix(text, 16).map_err(|_| format!("the digest is not hex: {text:?}"))?;
    }
    Ok(digest)
}

/// Lower-case hex, as `sha256sum` prints it.
pub fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::groups::Group;

    fn line(id: &str, groups: &str, key: &str) -> String {
        format!("{id} {groups} {}\n", hex(&sha256(key.as_bytes())))
    }

    #[test]
    fn keys_are_found_by_their_digest() {
        let text = format!(
            "# ops keys\n\n{}{}",
            line("app", "inference,metadata", "s3cret-app"),
            line("ops", "*", "s3cret-ops")
        );
        let keys = Keys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        let app = keys.find(b"s3cret-app").unwrap();
        assert_eq!(&*app.id, "app");
        assert!(app.groups.contains(Group::Inference) && !app.groups.contains(Group::ModelRepository));
        assert!(keys.find(b"s3cret-ops").unwrap().groups.contains(Group::Canary));
        assert!(keys.find(b"s3cret").is_none());
        assert!(keys.find(b"").is_none());
    }

    #[test]
    fn the_readme_example_is_a_key_file() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let (_, after) = readme.split_once("**API keys**").expect("README's API keys paragraph");
        let block = after.split("```").nth(1).expect("the example key file");
        let keys = Keys::parse(block).unwrap();
        assert_eq!(keys.len(), 4);
        assert_eq!(&*keys.find(b"app-key").unwrap().id, "app");
        assert!(keys.find(b"ops-key").unwrap().groups.contains(Group::Canary));
        assert!(keys.find(b"deployer-key").unwrap().groups.contains(Group::ModelRepository));
        assert!(keys.find(b"prom-key").unwrap().groups.contains(Group::Metrics));
    }

    #[test]
    fn the_digest_matches_sha256sum() {
        // printf abc | sha256sum
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("app inference\n", "line 1: expected `ID GROUPS SHA256HEX`, found 2 fields"),
            ("app admin 00\n", "line 1: unknown API group \"admin\""),
            ("\napp * abc\n", "line 2: the digest must be 64 hex digits"),
            (&format!("app * {}\n", "zz".repeat(32)), "line 1: the digest is not hex"),
        ];
        for (text, expected) in cases {
            let error = Keys::parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
        let twice = format!("{}{}", line("a", "*", "k1"), line("a", "*", "k2"));
        assert!(Keys::parse(&twice).unwrap_err().contains("appears twice"));
        let same = format!("{}{}", line("a", "*", "k1"), line("b", "*", "k1"));
        assert!(Keys::parse(&same).unwrap_err().contains("same digest"));
    }
}
