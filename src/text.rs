//! Text from outside (file names, manifest strings, error reasons, trusted
//! comments) made safe to print for people: every character that could move
//! the cursor, start a new line, recolour or retitle a terminal, or reorder
//! what is shown is replaced by a visible escape. This module owns that one
//! rule; every human-facing line that carries outside text goes through it.
//! It must never be applied to JSON (serde escapes there) or to data written
//! back to disk.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

/// Whether `c` must not reach a terminal or a log as itself: C0 controls
/// (newline, CR, ESC, BEL, ...), DEL, C1 controls (including NEL and the
/// 8-bit CSI), the Unicode line and paragraph separators, and the
/// bidirectional embeddings, overrides, isolates and marks that reorder
/// what a line shows.
pub fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}'        // line / paragraph separator
            | '\u{061C}'                    // Arabic letter mark
            | '\u{200E}' | '\u{200F}'      // LRM, RLM
            | '\u{202A}'..='\u{202E}'      // LRE, RLE, PDF, LRO, RLO
            | '\u{2066}'..='\u{2069}' // LRI, RLI, FSI, PDI
        )
}

/// `s` with every [`is_dangerous`] character replaced: `\n`, `\r`, `\t` as
/// those two characters, anything else as `\u{XXXX}` (ESC is `\u{1b}`). The
/// result is always one line. Borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_dangerous(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A path for people: lossy UTF-8, then [`escape`].
pub fn escape_path(p: &Path) -> String {
    escape(&p.to_string_lossy()).into_owned()
}

/// Displays its text escaped: `format!("{}", Esc(name))`.
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape("b-1 linux/prod ü"), Cow::Borrowed(_)));
    }

    #[test]
    fn terminal_controls_become_visible() {
        let hostile = "x.tar.zst\n   7  2026-01-01T00:00:00Z  imported\r\u{1b}[2K\u{7}\u{9b}31m";
        let e = escape(hostile);
        assert!(!e.chars().any(is_dangerous), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(
            e,
            "x.tar.zst\\n   7  2026-01-01T00:00:00Z  imported\\r\\u{1b}[2K\\u{7}\\u{9b}31m"
        );
    }

    #[test]
    fn bidi_and_separators_become_visible() {
        for c in [
            '\u{202E}', '\u{2066}', '\u{2069}', '\u{200F}', '\u{2028}', '\u{2029}', '\u{85}',
            '\u{7f}', '\u{0}',
        ] {
            let s = format!("a{c}b");
            let e = escape(&s);
            assert!(!e.contains(c), "{c:?}");
            assert!(e.starts_with("a\\u{"), "{e}");
        }
    }

    #[test]
    fn display_wrapper_pads() {
        assert_eq!(format!("[{:<6}]", Esc("a\nb")), "[a\\nb  ]");
    }
}
