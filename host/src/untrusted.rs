//! Text that comes from outside cairn (plugin errors and descriptions, object names from a
//! listing, names stored in a repository) is data. Before it reaches a terminal or a log it
//! goes through [`escape`], so no control character, escape sequence or bidirectional
//! override it holds can act on the terminal or fake a line of cairn's own output.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls (newlines and ESC
/// included), DEL, and the Unicode format characters that reorder or hide text.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width spaces and joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}' // line and paragraph separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, bidi isolates
            | '\u{FEFF}' // zero-width no-break space
        )
}

/// `text` with every unsafe character written as a Rust-style escape (`\n`, `\u{1b}`), and
/// backslashes doubled so an escape cannot be forged. Borrowed when nothing needed escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Bytes (a file name, a symlink target) as printable text: valid UTF-8 is escaped as
/// [`escape`] does; each invalid byte is written `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(escape("data/ab/ab12 ok: é"), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_and_overrides_are_escaped() {
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\x1b[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("x\u{202E}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(escape("\u{85}"), "\\u{85}");
        // A backslash from outside cannot pretend to be one of our escapes.
        assert_eq!(escape("\\n"), "\\\\n");
    }

    #[test]
    fn invalid_utf8_is_shown_as_hex() {
        assert_eq!(escape_bytes(b"caf\xe9\n"), "caf\\xe9\\n");
    }
}
