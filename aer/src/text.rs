//! Making text from the server safe to print on a terminal: control
//! characters become visible escapes, and table cells are cut to a maximum
//! width at character boundaries.
//!
//! Backslashes are left as they are, so a command like `printf 'a\n'` reads
//! as typed; `-o json` gives the exact values.

use std::borrow::Cow;
use std::fmt::Write;

/// Appended to a cell that was cut.
pub const ELLIPSIS: char = '…';

/// Whether `c` must not reach a terminal as is: C0 controls, DEL, C1
/// controls (U+0080..U+009F: U+009B is a one-character CSI on some
/// terminals), and the Unicode line separators and bidirectional controls
/// that can make text display differently from what it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Appends `c` to `out`, escaped if it must be; returns the number of
/// characters appended.
fn push_escaped(out: &mut String, c: char) -> usize {
    let before = out.len();
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) && (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => {
            out.push(c);
            return 1;
        }
    }
    // Escapes are ASCII: bytes are characters.
    out.len() - before
}

/// `s` with control characters escaped (`\n`, `\x1b`, `\u{9b}`), in full.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// `s` escaped and cut to at most `max` characters: when it is longer, it
/// ends with [`ELLIPSIS`] (counted in `max`). An escape is never split.
pub fn cell(s: &str, max: usize) -> String {
    let mut out = String::new();
    if max == 0 {
        return out;
    }
    let mut width = 0;
    let mut chars = s.chars().peekable();
    let mut piece = String::new();
    while let Some(c) = chars.next() {
        piece.clear();
        let n = push_escaped(&mut piece, c);
        // Unless this is the last character, keep room for the ellipsis.
        let room = if chars.peek().is_none() { max } else { max - 1 };
        if width + n > room {
            out.push(ELLIPSIS);
            return out;
        }
        out.push_str(&piece);
        width += n;
    }
    out
}

/// The display width of a cell made by [`cell`] or [`escape`]: its number
/// of characters.
pub fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_keeps_the_rest() {
        assert_eq!(escape("plain ünïcødé 漢字"), "plain ünïcødé 漢字");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(
            escape("\x1b]0;pwned\x07\x1b[2J"),
            "\\x1b]0;pwned\\x07\\x1b[2J"
        );
        assert_eq!(escape("\0\x7f"), "\\x00\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("a\u{202e}b\u{2028}"), "a\\u{202e}b\\u{2028}");
        assert_eq!(escape(""), "");
        // Backslashes stay as typed.
        assert_eq!(escape(r"printf 'a\n'"), r"printf 'a\n'");
    }

    #[test]
    fn cells_are_cut_at_char_boundaries_with_an_ellipsis() {
        assert_eq!(cell("", 10), "");
        assert_eq!(cell("abc", 0), "");
        assert_eq!(cell("abcde", 5), "abcde");
        assert_eq!(cell("abcdef", 5), "abcd…");
        assert_eq!(cell("abcdef", 1), "…");
        // Multi-byte characters around the cut: 4-, 3- and 2-byte ones.
        assert_eq!(cell("🦀🦀🦀🦀🦀🦀", 4), "🦀🦀🦀…");
        assert_eq!(cell("ab漢字かな", 4), "ab漢…");
        assert_eq!(cell("éééééé", 6), "éééééé");
        assert_eq!(cell("ééééééé", 6), "ééééé…");
        // An escape is never split, and counts with its full width.
        assert_eq!(cell("ab\x1b", 6), "ab\\x1b");
        assert_eq!(cell("abc\x1bdef", 8), "abc\\x1b…");
        assert_eq!(cell("abc\x1bdef", 6), "abc…");
        assert_eq!(cell("ab\n", 4), "ab\\n");
        assert_eq!(cell("abc\n", 4), "abc…");
    }

    #[test]
    fn a_90_kb_field_becomes_a_short_cell() {
        let big = "x".repeat(90 * 1024);
        let c = cell(&big, 60);
        assert_eq!(width(&c), 60);
        assert!(c.ends_with(ELLIPSIS));
        assert!(c.starts_with("xxxx"));
        let controls = "\x1b".repeat(90 * 1024);
        let c = cell(&controls, 60);
        assert!(width(&c) <= 60);
        assert!(!c.contains('\x1b'));
        // Every cut of a long multi-byte string is valid and bounded.
        let mixed: String = "a€🦀\n\u{9b}".repeat(20_000);
        for max in 0..80 {
            let c = cell(&mixed, max);
            assert!(width(&c) <= max, "{max}: {c}");
            assert!(!c.chars().any(needs_escape), "{max}: {c}");
        }
    }
}
