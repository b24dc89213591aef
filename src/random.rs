//! Random identifiers: the one place randomness comes from (the OS, via `getrandom`).
//!
//! Lease ids and generated tokens are bearer capabilities, so they are 128 bits from the
//! operating system's CSPRNG, never from a seeded generator.

/// `bytes` random bytes from the OS, as lowercase hex (`2 * bytes` characters).
pub fn hex(bytes: usize) -> Result<String, getrandom::Error> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    let mut out = String::with_capacity(2 * bytes);
    for b in buf {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    Ok(out)
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
