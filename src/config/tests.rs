//! Tests of the configuration: defaults, layering, validation, modes.

use super::*;

#[test]
fn defaults_are_valid_and_match_the_chat_app() {
    let c = Config::defaults("/tmp/x");
    c.validate().unwrap();
    assert_eq!(c.default_namespace().name, "conversation");
    assert_eq!(c.default_namespace().fields.len(), 7);
    assert!(c
        .default_namespace()
        .fields
        .iter()
        .any(|f| f == "artefacts"));
    assert_eq!(c.max_hold, Duration::from_secs(600));
    assert_eq!(c.retention_age, Some(Duration::from_secs(90 * 86400)));
}

#[test]
fn toml_overrides_and_refuses_unknown_keys() {
    let mut c = Config::defaults("/tmp/x");
    c.apply_toml("max_hold_ms = 1500\nauto_expire = false\n")
        .unwrap();
    assert_eq!(c.max_hold, Duration::from_millis(1500));
    assert!(!c.auto_expire);
    let err = c.apply_toml("max_hold = 3\n").unwrap_err();
    assert!(err.contains("max_hold"), "{err}");
}

#[test]
fn a_field_called_main_is_refused() {
    let mut c = Config::defaults("/tmp/x");
    c.namespaces[0].fields.push("main".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("main"), "{e}");
}

#[test]
fn patterns_must_name_owner_and_field_once_without_slash() {
    for pattern in [
        "{owner}.lock",
        "{owner}/{field}.lock",
        "{owner}{owner}_{field}.lock",
    ] {
        let mut c = Config::defaults("/tmp/x");
        c.namespaces[0].pattern = pattern.into();
        assert!(c.validate().is_err(), "{pattern} accepted");
    }
}

#[test]
fn env_overrides_are_parsed_strictly() {
    let mut c = Config::defaults("/tmp/x");
    c.apply_env(|k| (k == "LOCKLEDGER_MAX_HOLD_MS").then(|| "250".to_string()))
        .unwrap();
    assert_eq!(c.max_hold, Duration::from_millis(250));
    let e = c
        .apply_env(|k| (k == "LOCKLEDGER_AUTO_EXPIRE").then(|| "maybe".to_string()))
        .unwrap_err();
    assert!(e.to_string().contains("LOCKLEDGER_AUTO_EXPIRE"));
}

#[test]
fn shared_group_sets_every_mode_and_booleans_take_the_usual_spellings() {
    let mut c = Config::defaults("/tmp/x");
    assert_eq!(c.modes(), PRIVATE_MODES);
    c.apply_toml("shared_group = true\n").unwrap();
    assert_eq!(c.modes(), SHARED_GROUP_MODES);
    // The group must be able to pass through the storage directory to locks/.
    assert_eq!(c.storage_dir_mode & 0o010, 0o010);
    for (v, shared) in [
        ("1", true),
        ("Yes", true),
        ("on", true),
        ("0", false),
        ("off", false),
    ] {
        let mut c = Config::defaults("/tmp/x");
        c.apply_env(|k| (k == "LOCKLEDGER_SHARED_GROUP").then(|| v.to_string()))
            .unwrap();
        let want = if shared {
            SHARED_GROUP_MODES
        } else {
            PRIVATE_MODES
        };
        assert_eq!(c.modes(), want, "LOCKLEDGER_SHARED_GROUP={v}");
    }
}
