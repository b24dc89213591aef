//! Lock identities and lock-file names (`src/ids.rs`).
//!
//! Input: `flags owner 0xFF field`. 0xFF never occurs in UTF-8, so it splits the input
//! without restricting what the two strings can be. If the flags' top bit is set, the
//! field is instead picked from the namespace's configured list (or its `main` alias),
//! so the fuzzer reaches the accepted path without having to guess field names.
//!
//! Properties, for both namespaces (and the default one):
//! - whenever `LockKey::in_config` accepts, the file name is one plain path component
//!   (no `/`, no NUL, no leading `.`, not `.`/`..`, at most 255 bytes) and
//!   `parse_file_name` reads it back as exactly `(owner, field as stored)`;
//! - `parse_file_name` on the raw input never panics, and whatever it returns builds
//!   a key whose file name is that input again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lockledger::config::Namespace;
use lockledger::ids::{parse_file_name, LockKey, MAIN_FIELD_ALIAS};
use lockledger::Config;
use std::path::{Component, Path};
use std::sync::OnceLock;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::defaults("/tmp/x"))
}

fn check_name(name: &str) {
    assert!(!name.contains('/'), "slash in {name:?}");
    assert!(!name.contains('\0'), "NUL in {name:?}");
    assert!(!name.starts_with('.'), "leading dot in {name:?}");
    assert!(name != "." && name != "..", "{name:?}");
    assert!(name.len() <= 255, "{} bytes: {name:?}", name.len());
    let mut parts = Path::new(name).components();
    assert!(
        matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none(),
        "not one normal component: {name:?}"
    );
}

fn check_key(config: &Config, ns_name: Option<&str>, owner: &str, field: &str) {
    let Ok(key) = LockKey::in_config(config, ns_name, owner, field) else {
        return;
    };
    let ns: &Namespace = match ns_name {
        Some(n) => config.namespace(n).expect("accepted namespace exists"),
        None => config.default_namespace(),
    };
    let stored = if field == MAIN_FIELD_ALIAS { "" } else { field };
    assert_eq!(key.owner(), owner);
    assert_eq!(key.field(), stored);
    assert_eq!(key.namespace(), ns.name);

    let name = key.file_name(ns);
    check_name(&name);
    assert_eq!(
        parse_file_name(ns, &name),
        Some((owner.to_string(), stored.to_string())),
        "{name:?} does not read back"
    );
}

fn check_parse(ns: &Namespace, name: &str) {
    if let Some((owner, field)) = parse_file_name(ns, name) {
        let key = LockKey::new(ns, &owner, &field)
            .unwrap_or_else(|e| panic!("parsed {name:?} into an invalid key: {e}"));
        assert_eq!(
            key.file_name(ns),
            name,
            "parse is not the inverse of file_name"
        );
        check_name(name);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let config = config();
    let (owner_bytes, field_bytes) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let owner = String::from_utf8_lossy(owner_bytes);
    let raw_field = String::from_utf8_lossy(field_bytes);

    for ns in &config.namespaces {
        let field = if flags & 0x80 != 0 {
            let i = usize::from(flags & 0x7F) % (ns.fields.len() + 1);
            ns.fields.get(i).map_or(MAIN_FIELD_ALIAS, String::as_str)
        } else {
            &raw_field
        };
        check_key(config, Some(&ns.name), &owner, field);
        check_parse(ns, &String::from_utf8_lossy(data));
        check_parse(ns, &owner);
    }
    check_key(config, None, &owner, &raw_field);
    // Arbitrary namespace names: refused or resolved, never a panic.
    let _ = LockKey::in_config(config, Some(&raw_field), &owner, "");
});
