//! The accounts' password rule, shared by the HTTP API and `imd user add|passwd`.

/// bcrypt uses the first 72 bytes of a password and ignores the rest: longer ones are refused
/// rather than silently cut.
const MAX_BYTES: usize = 72;

/// What is wrong with a refused password, for the client (400) and `imd user add|passwd`.
pub const RULE: &str = "password must be 6 characters to 72 bytes (bcrypt's limit)";

/// Whether `password` may be set (a new account or a new password).
pub fn is_valid(password: &str) -> bool {
    password.chars().count() >= 6 && password.len() <= MAX_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_6_characters_to_72_bytes() {
        assert!(is_valid("123456"));
        assert!(!is_valid("12345"));
        assert!(is_valid(&"p".repeat(72)));
        assert!(!is_valid(&"p".repeat(73)));
        assert!(!is_valid(&"é".repeat(37)), "74 bytes in 37 characters");
    }
}
