//! Random identifiers: the one place randomness comes from (the OS, via `getrandom`).
//!
//! Lease ids and generated tokens are bearer capabilities, so they are 128 bits from the
//! operating system's CSPRNG, never from a seeded generator.

/// `bytes` random bytes from the OS, as lowercase hex (`2 * bytes` characters).
pub fn hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_hex_of_the_asked_length_and_differ() {
        let a = super::hex(16).unwrap();
        let b = super::hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
