//! Names from the kernel made safe to print. A comm, a filename, an
//! argument or a cgroup name can hold any byte but NUL (and `/` in a comm
//! only by prctl): ESC sequences that retitle or clear a terminal, a
//! newline that forges a record of its own, bidirectional overrides that
//! reorder what a reader sees, bytes that are not UTF-8.
//!
//! - Text output shows such a name escaped: `\xNN` for control bytes
//!   (C0, DEL) and bytes that are not UTF-8, `\u{NNNN}` for C1 controls and
//!   bidirectional formatting characters, `\\` for a backslash. A record
//!   is thus always one line, and the escaped text is unambiguous.
//! - JSON escapes control characters itself; a name that is not UTF-8 is
//!   written lossily (U+FFFD) and, beside it, exactly as `<field>_hex`.

use std::fmt::{self, Write as _};

/// `bytes`, escaped for a terminal (see the module's rules), as a
/// `Display` that honours width and alignment (`{:<16}`).
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The common case (a plain name) needs no copy.
        if let Ok(plain) = std::str::from_utf8(self.0)
            && !plain.chars().any(needs_escape)
        {
            return f.pad(plain);
        }
        let mut out = String::with_capacity(self.0.len() + 8);
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c == '\\' {
                    out.push_str("\\\\");
                } else if let Some(b) = crate::host::cgroup::raw_byte(c) {
                    let _ = write!(out, "\\x{b:02x}");
                } else if needs_escape(c) {
                    match u8::try_from(u32::from(c)) {
                        Ok(b) if b < 0x80 => {
                            let _ = write!(out, "\\x{b:02x}");
                        }
                        _ => {
                            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            for b in chunk.invalid() {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
        f.pad(&out)
    }
}

/// Control characters (C0, DEL, C1), bidirectional formatting characters,
/// and the backslash that starts an escape.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || crate::host::cgroup::raw_byte(c).is_some()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A JSON value's text (a record's nested object) made safe for a
/// terminal: JSON escapes C0 controls itself, and here C1 controls and
/// bidirectional formatting characters become `\uNNNN` escapes (still
/// JSON), bytes that are not UTF-8 `\xNN`.
pub fn nested_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if !text.chars().any(|c| c != '\\' && needs_escape(c)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if let Some(b) = crate::host::cgroup::raw_byte(c) {
            let _ = write!(out, "\\x{b:02x}");
        } else if c != '\\' && needs_escape(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The bytes of a name that is not UTF-8, in lowercase hex; `None` when it
/// is UTF-8 (its JSON string is then exact).
pub fn hex_if_not_utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).is_err().then(|| hex_of(bytes))
}

/// `bytes` in lowercase hex.
pub fn hex_of(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(bytes: &[u8]) -> String {
        Escaped(bytes).to_string()
    }

    #[test]
    fn plain_names_pass_and_pad() {
        assert_eq!(esc(b"bash"), "bash");
        assert_eq!(format!("{:<6}|", Escaped(b"ab")), "ab    |");
        assert_eq!(esc("café".as_bytes()), "café");
    }

    #[test]
    fn terminal_sequences_newlines_and_bidi_are_escaped() {
        assert_eq!(esc(b"\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(esc(b"\x1b[2J"), "\\x1b[2J");
        assert_eq!(
            esc(b"x\nFORGED 00:00:00 exit"),
            "x\\x0aFORGED 00:00:00 exit"
        );
        assert_eq!(esc(b"a\tb\x7f"), "a\\x09b\\x7f");
        assert_eq!(esc("\u{9b}2J".as_bytes()), "\\u{009b}2J");
        assert_eq!(esc("ab\u{202e}cd".as_bytes()), "ab\\u{202e}cd");
        assert_eq!(
            esc(b"C:\\x41"),
            "C:\\\\x41",
            "a literal \\x is not an escape"
        );
    }

    #[test]
    fn nested_records_are_escaped_too() {
        let offender = serde_json::json!({"comm": "a\u{9b}2J\u{202e}b", "cgroup": "/x/\u{10ffff}"});
        let text = nested_json(&offender);
        assert!(!text.chars().any(|c| c.is_control()), "{text}");
        assert!(text.contains("a\\u009b2J\\u202eb"), "{text}");
        assert!(text.contains("/x/\\xff"), "{text}");
        // Still JSON, for what is not a raw byte.
        let plain = serde_json::json!({"comm": "a\u{9b}"});
        let back: serde_json::Value = serde_json::from_str(&nested_json(&plain)).expect("json");
        assert_eq!(back, plain);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_escaped_and_kept_in_hex() {
        assert_eq!(esc(b"n\xffme\xc3"), "n\\xffme\\xc3");
        assert_eq!(hex_if_not_utf8(b"n\xff"), Some("6eff".into()));
        assert_eq!(hex_if_not_utf8("ok\u{1b}".as_bytes()), None);
    }
}
