//! Lock identity: validated owner ids and fields, and the lock-file names they map to.
//!
//! Invariant: a [`LockKey`] can only be built through [`LockKey::new`], which checks the
//! owner against a strict character set and length and the field against the configured
//! set of its namespace. Because the owner can contain neither `/` nor NUL nor start with
//! `.`, and fields are plain words, every file name made from a key is a single path
//! component inside the locks directory: nothing here can name a path outside it.

pub use crate::config::is_word;
use crate::config::{Config, Namespace};
use std::fmt;

/// Longest owner id accepted, in bytes. The longest default file name is then
/// 200 + `_uploaded_documents_list.lock` (29) bytes, well under the 255-byte name limit.
pub const MAX_OWNER_LEN: usize = 200;

/// How the main lock's field `""` is written in URL paths and on the command line.
pub const MAIN_FIELD_ALIAS: &str = "main";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("owner id is empty")]
    EmptyOwner,
    #[error("owner id is {0} bytes long; the limit is {MAX_OWNER_LEN}")]
    OwnerTooLong(usize),
    #[error("owner id {0:?} has a character outside [A-Za-z0-9@+_.-] or starts with '.' or '-'")]
    OwnerCharacters(String),
    #[error("unknown field {field:?} for {namespace} locks (known: {known})")]
    UnknownField {
        namespace: String,
        field: String,
        known: String,
    },
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
}

/// Checks an owner id: 1..=200 bytes of `[A-Za-z0-9@+_.-]`, not starting with `.` or `-`.
/// The set covers the chat app's ids (`user@example.com_<random>`) and hex document ids.
pub fn check_owner(owner: &str) -> Result<(), IdError> {
    if owner.is_empty() {
        return Err(IdError::EmptyOwner);
    }
    if owner.len() > MAX_OWNER_LEN {
        return Err(IdError::OwnerTooLong(owner.len()));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '@' | '+' | '_' | '.' | '-');
    if !owner.chars().all(ok_char) || owner.starts_with('.') || owner.starts_with('-') {
        return Err(IdError::OwnerCharacters(printable(owner)));
    }
    Ok(())
}

/// Shortens and escapes untrusted text for error messages.
fn printable(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    let mut out = cut.escape_debug().to_string();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// A validated lock identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    namespace: String,
    owner: String,
    field: String,
}

impl LockKey {
    /// Validates `owner` and `field` (the field as stored: `""` for the main lock; the
    /// alias `main` is accepted too) against the namespace's configuration.
    pub fn new(ns: &Namespace, owner: &str, field: &str) -> Result<LockKey, IdError> {
        check_owner(owner)?;
        let field = if field == MAIN_FIELD_ALIAS { "" } else { field };
        if !ns.fields.iter().any(|f| f == field) {
            return Err(IdError::UnknownField {
                namespace: ns.name.clone(),
                field: printable(field),
                known: ns
                    .fields
                    .iter()
                    .map(|f| {
                        if f.is_empty() {
                            MAIN_FIELD_ALIAS
                        } else {
                            f.as_str()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(LockKey {
            namespace: ns.name.clone(),
            owner: owner.to_string(),
            field: field.to_string(),
        })
    }

    /// Like [`LockKey::new`], looking the namespace up by name (None: the default).
    pub fn in_config(
        config: &Config,
        namespace: Option<&str>,
        owner: &str,
        field: &str,
    ) -> Result<LockKey, IdError> {
        LockKey::new(namespace_of(config, namespace)?, owner, field)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
    /// The field as stored (`""` for the main lock).
    pub fn field(&self) -> &str {
        &self.field
    }
    /// The field as written in paths: `main` for the main lock.
    pub fn field_in_path(&self) -> &str {
        if self.field.is_empty() {
            MAIN_FIELD_ALIAS
        } else {
            &self.field
        }
    }

    /// The bare lock-file name, e.g. `conv42_messages.lock` or `conv42_.lock`.
    pub fn file_name(&self, ns: &Namespace) -> String {
        ns.pattern
            .replace("{owner}", &self.owner)
            .replace("{field}", &self.field)
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, display_field(&self.field))
    }
}

/// A field as people read it: the main lock (empty field) is `(main)`.
pub fn display_field(field: &str) -> &str {
    if field.is_empty() {
        "(main)"
    } else {
        field
    }
}

/// `owner/field` as every message names a lock (`owner/(main)` for the main lock).
pub fn lock_name(owner: &str, field: &str) -> String {
    format!("{owner}/{}", display_field(field))
}

pub fn namespace_of<'c>(config: &'c Config, name: Option<&str>) -> Result<&'c Namespace, IdError> {
    match name {
        None => Ok(config.default_namespace()),
        Some(n) => config
            .namespace(n)
            .ok_or_else(|| IdError::UnknownNamespace(printable(n))),
    }
}

/// Reads a lock-file name back into `(owner, field)` for a namespace. The longest
/// matching field wins, so `a_message_operations.lock` is never read as another field.
pub fn parse_file_name(ns: &Namespace, file_name: &str) -> Option<(String, String)> {
    let mut fields: Vec<&String> = ns.fields.iter().collect();
    fields.sort_by_key(|f| std::cmp::Reverse(f.len()));
    for field in fields {
        let pattern = ns.pattern.replace("{field}", field);
        let (prefix, suffix) = pattern.split_once("{owner}")?;
        if file_name.len() <= prefix.len() + suffix.len() {
            continue;
        }
        if let Some(owner) = file_name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
        {
            if check_owner(owner).is_ok() {
                return Some((owner.to_string(), field.clone()));
            }
        }
    }
    None
}

/// The key of a lock file of `owner` whose key is not configured: `file_name` is
/// `{owner}_{key}.lock` (by the namespace's pattern) for a plain-word `key` that is not a
/// configured field, and the name is not better read as a configured lock of another
/// owner. Owner ids may contain `_`, so `conv42_x_messages.lock` could be conv42's key
/// `x_messages` or owner `conv42_x`'s `messages` lock: the configured reading wins, as it
/// does in [`parse_file_name`].
pub fn unconfigured_key(ns: &Namespace, owner: &str, file_name: &str) -> Option<String> {
    let with_owner = ns.pattern.replace("{owner}", owner);
    let (prefix, suffix) = with_owner.split_once("{field}")?;
    let key = file_name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if !is_word(key) || ns.fields.iter().any(|f| f == key) {
        return None;
    }
    if parse_file_name(ns, file_name).is_some() {
        return None;
    }
    Some(key.to_string())
}

/// The part of a lock-file name before the key, for `owner` (to find its files).
pub fn owner_prefix(ns: &Namespace, owner: &str) -> Option<String> {
    let with_owner = ns.pattern.replace("{owner}", owner);
    let (prefix, _) = with_owner.split_once("{field}")?;
    Some(prefix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Namespace {
        Config::defaults("/tmp").namespaces[0].clone()
    }
    fn doc() -> Namespace {
        Config::defaults("/tmp").namespaces[1].clone()
    }

    #[test]
    fn file_names_follow_the_chat_app() {
        let k = LockKey::new(&conv(), "conv42", "messages").unwrap();
        assert_eq!(k.file_name(&conv()), "conv42_messages.lock");
        let main = LockKey::new(&conv(), "conv42", "").unwrap();
        assert_eq!(main.file_name(&conv()), "conv42_.lock");
        assert_eq!(main.field_in_path(), "main");
        assert_eq!(LockKey::new(&conv(), "conv42", "main").unwrap(), main);
        assert_eq!(main.to_string(), "conv42/(main)");
        let d = LockKey::new(&doc(), "abc123", "indices").unwrap();
        assert_eq!(d.file_name(&doc()), "abc123-indices.lock");
    }

    #[test]
    fn hostile_owner_ids_are_refused() {
        let long = "a".repeat(300);
        let cases: [(&str, &str); 12] = [
            ("../x", "path climb"),
            ("..", "dot-dot"),
            ("a/b", "slash"),
            ("/etc/passwd", "absolute"),
            ("a\0b", "NUL"),
            ("", "empty"),
            (&long, "300 chars"),
            (".hidden", "leading dot"),
            ("-rf", "leading dash"),
            ("a b", "space"),
            ("a\\b", "backslash"),
            ("é", "non-ascii"),
        ];
        for (owner, why) in cases {
            assert!(
                LockKey::new(&conv(), owner, "messages").is_err(),
                "{why}: {owner:?} accepted"
            );
        }
        assert_eq!(check_owner(&long), Err(IdError::OwnerTooLong(300)));
        assert!(check_owner(&"a".repeat(MAX_OWNER_LEN)).is_ok());
    }

    #[test]
    fn realistic_owner_ids_are_accepted() {
        for owner in ["conv42", "user@example.com_a1B2c3", "x+y.z-1", "0123abcdef"] {
            LockKey::new(&conv(), owner, "").unwrap();
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_the_known_list() {
        let e = LockKey::new(&conv(), "c1", "../messages").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(e.to_string().contains("uploaded_documents_list"), "{e}");
        assert!(LockKey::new(&conv(), "c1", "indices").is_err());
        assert!(LockKey::new(&doc(), "d1", "indices").is_ok());
    }

    #[test]
    fn file_names_parse_back_unambiguously() {
        let ns = conv();
        for field in &ns.fields {
            for owner in ["c1", "a_b", "user@x.com_abc", "messages"] {
                let k = LockKey::new(&ns, owner, field).unwrap();
                let name = k.file_name(&ns);
                assert_eq!(
                    parse_file_name(&ns, &name),
                    Some((owner.to_string(), field.clone())),
                    "{name}"
                );
            }
        }
        assert_eq!(parse_file_name(&ns, "_messages.lock"), None);
        assert_eq!(parse_file_name(&ns, "notalock.txt"), None);
        assert_eq!(parse_file_name(&ns, "..__.lock"), None);
    }

    #[test]
    fn every_file_name_is_one_path_component() {
        // Exhaustively combine hostile fragments; whatever is accepted must be a plain name.
        let parts = ["", ".", "..", "/", "a", "\0", "_", "-", "%2e", "main", "@"];
        for a in parts {
            for b in parts {
                for c in parts {
                    let owner = format!("{a}{b}{c}");
                    if let Ok(k) = LockKey::new(&conv(), &owner, "all") {
                        let name = k.file_name(&conv());
                        let p = std::path::Path::new(&name);
                        assert_eq!(p.components().count(), 1, "{name:?}");
                        assert!(
                            !name.contains('/') && !name.contains('\0') && !name.starts_with('.')
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn unconfigured_keys_are_read_only_when_nothing_configured_fits() {
        let ns = conv();
        assert_eq!(
            unconfigured_key(&ns, "conv42", "conv42_summaries.lock"),
            Some("summaries".into())
        );
        // Configured keys are not "unconfigured".
        assert_eq!(
            unconfigured_key(&ns, "conv42", "conv42_messages.lock"),
            None
        );
        // Another owner's configured lock, not conv42's key `x_messages`.
        assert_eq!(
            unconfigured_key(&ns, "conv42", "conv42_x_messages.lock"),
            None
        );
        // Not a plain word, another owner, another pattern.
        assert_eq!(unconfigured_key(&ns, "conv42", "conv42_A-b.lock"), None);
        assert_eq!(
            unconfigured_key(&ns, "conv42", "conv43_summaries.lock"),
            None
        );
        assert_eq!(
            unconfigured_key(&ns, "conv42", "conv42-summaries.lock"),
            None
        );
        assert_eq!(unconfigured_key(&ns, "conv42", ".token-ceiling"), None);
        assert_eq!(owner_prefix(&ns, "conv42").as_deref(), Some("conv42_"));
    }
}
