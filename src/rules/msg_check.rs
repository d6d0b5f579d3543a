//! Whether a message's `msg` can be returned exactly as sent: stored raw, it is sent raw live
//! and in sync, but history re-reads it as a JSON tree, which refuses what is nested too deep,
//! strings with invalid Unicode escapes (lone surrogates) and numbers out of range. Walks the
//! raw JSON once, decoding every string and number, without building a tree.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects in a `msg` (the `msg` object itself is level 1).
pub const MAX_DEPTH: usize = 32;

/// Ok if `raw` (one JSON value) is at most `MAX_DEPTH` levels deep and every string and
/// number in it decodes; else why not.
pub fn check(raw: &str) -> Result<(), String> {
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    Level { depth: 0 }.deserialize(&mut deserializer).and_then(|()| deserializer.end()).map_err(|e| e.to_string())
}

/// One value at nesting `depth` (the number of arrays and objects around it).
#[derive(Clone, Copy)]
struct Level {
    depth: usize,
}

impl Level {
    fn inner<E: de::Error>(self) -> Result<Level, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(Level { depth: self.depth + 1 })
    }
}

impl<'de> DeserializeSeed<'de> for Level {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    // Strings arrive decoded (borrowed when they hold no escape): serde_json has already
    // refused a lone surrogate by then.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        // Keys are strings, decoded like values.
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn accepts_what_round_trips() {
        for ok in [
            r#""hello""#,
            r#""\ud83d\ude00 \u00e9 \n \" \\ \/ \u0000""#,
            r#"{"a":[1,-2,3.5,1e2,18446744073709551615,-9223372036854775808,null,true,{}],"\u00e9":""}"#,
            "12345678901234567890123",
            &nested(MAX_DEPTH),
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_deep_nesting() {
        assert!(check(&nested(MAX_DEPTH + 1)).unwrap_err().contains("nested deeper than 32 levels"));
        assert!(check(&format!(r#"{{"x":{}}}"#, nested(MAX_DEPTH))).is_err(), "objects count as levels");
        assert!(check(&nested(9000)).is_err());
    }

    #[test]
    fn refuses_invalid_unicode_escapes_and_numbers_out_of_range() {
        for bad in [
            r#""x\udfff""#,
            r#""\ud800""#,
            r#""\ud83dA""#,
            r#""\ud83d\u0041""#,
            r#"{"t":"a\udc00b"}"#,
            r#"{"\udfff":1}"#,
            r#"[1e400]"#,
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_trailing_text() {
        assert!(check(r#""a" "b""#).is_err());
    }
}
