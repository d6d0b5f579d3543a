//! Usernames in any script: which names are valid, their stored (NFC) form, and the key that
//! makes names unique regardless of case and look-alike characters (UTS #39 skeleton).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_security::GeneralSecurityProfile;
use unicode_security::confusable_detection::skeleton;

/// Most characters a name may have.
pub const MAX_CHARS: usize = 32;

/// What is wrong with a name, for the client (400).
pub const RULE: &str = "username must be 3-32 characters (2 in Chinese, Japanese or Korean) of letters, \
                        digits, combining marks and _ . - in any script, without spaces or invisible characters";

/// The stored form of `name` (NFC), or None when it breaks the rules.
pub fn normalise(name: &str) -> Option<String> {
    let name: String = name.nfc().collect();
    let count = name.chars().count();
    let min = if name.chars().any(is_cjk) { 2 } else { 3 };
    if !(min..=MAX_CHARS).contains(&count) {
        return None;
    }
    // A mark needs a letter to sit on.
    if name.chars().next().is_some_and(is_combining_mark) {
        return None;
    }
    name.chars().all(allowed).then_some(name)
}

/// Letters, digits and marks that UTS #39 allows in identifiers (which leaves out invisible,
/// format, control and bidi characters, and ones that look like others once NFKC-folded,
/// such as full-width Latin), plus `_.-`.
fn allowed(c: char) -> bool {
    matches!(c, '_' | '.' | '-')
        || ((c.is_alphanumeric() || is_combining_mark(c)) && !c.is_whitespace() && c.identifier_allowed())
}

/// Ideographs, kana and Hangul syllables: a name of two of them is a usual full name.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF        // Hiragana, Katakana
        | 0x3400..=0x4DBF      // CJK extension A
        | 0x4E00..=0x9FFF      // CJK unified ideographs
        | 0xAC00..=0xD7AF      // Hangul syllables
        | 0xF900..=0xFAFF      // CJK compatibility ideographs
        | 0x20000..=0x3FFFF) // CJK extensions B and later
}

/// The uniqueness key of a valid (normalised) name: the UTS #39 skeleton of its lowercase
/// form, so that `Alice`/`alice` and `paypal`/`pаypal` (Cyrillic а) are one name.
pub fn key(name: &str) -> String {
    let lower: String = name.nfc().flat_map(char::to_lowercase).collect();
    skeleton(&lower).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_any_script_are_valid() {
        for good in ["abc", "a.b-c_d", "A1234567890123456789012345678901", "张三", "刘祖宽", "José", "लक्ष्मी", "Ελένη"]
        {
            assert_eq!(normalise(good).as_deref(), Some(good), "{good}");
        }
        assert_eq!(normalise("Jose\u{301}").as_deref(), Some("Jos\u{e9}"), "NFC");
    }

    #[test]
    fn invisible_and_odd_names_are_refused() {
        for bad in [
            "ab",
            "a b",
            "x/y",
            "A12345678901234567890123456789012",
            "张",
            "ali\u{200B}ce",
            "ali\u{200D}ce",
            "bob\u{202E}xyz",
            "a\u{7}bc",
            "ab\u{3164}c",
            "\u{301}abc",
            "ａｌｉｃｅ",
            "\u{2460}\u{2461}\u{2462}",
        ] {
            assert_eq!(normalise(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn case_and_look_alikes_share_a_key() {
        assert_eq!(key("Alice"), key("alice"));
        assert_eq!(key("paypal"), key("p\u{430}ypal"));
        assert_eq!(key("José"), key("Jose\u{301}"));
        assert_ne!(key("alice"), key("alicia"));
        assert_ne!(key("张三"), key("张四"));
    }
}
