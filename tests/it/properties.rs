//! Property tests (proptest) for the rules every bundle path and every
//! version comparison rests on:
//!
//! - a path [`SafePath`] accepts stays inside any root it is joined to, and
//!   is a plain relative name under Linux, macOS and Windows rules alike,
//!   checked against an independent oracle written from those systems' rules
//!   (not from `safepath.rs`);
//! - no set [`safepath::check_set`] accepts holds two names equal ignoring
//!   case or Unicode normalisation, or a file that is another's directory;
//! - dotted [`Version`] ordering is a total order that agrees with comparing
//!   the numbers.

use std::cmp::Ordering;
use std::path::{Component, Path};

use gapferry::mde::version::Version;
use gapferry::safepath::{self, SafePath, MAX_COMPONENT_LEN, MAX_DEPTH, MAX_PATH_LEN};
use proptest::prelude::*;

/// Characters that matter to some filesystem, plus plain ones, plus Unicode
/// look-alikes and normalisation-sensitive letters.
fn path_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::sample::select(
            "abcXYZ019._-".chars().collect::<Vec<_>>()
        ),
        4 => proptest::sample::select(vec![
            '/', '/', '\\', ':', ' ', '\0', '\t', '\n', '*', '?', '"', '<', '>', '|', '$',
        ]),
        1 => proptest::sample::select(vec![
            '\u{e9}',   // é precomposed (NFC)
            '\u{301}',  // combining acute (NFD tail)
            '\u{2215}', // division slash
            '\u{ff0f}', // fullwidth solidus
            '\u{2024}', // one dot leader
            '\u{ff0e}', // fullwidth full stop
            '\u{212a}', // Kelvin sign, folds to ASCII k
            '\u{131}',  // dotless i
            '\u{b9}',   // superscript one (COM¹)
            '\u{200b}', // zero width space
            '\u{feff}',
        ]),
        1 => any::<char>(),
    ]
}

/// Strings built to hit the rules: random characters, and compositions of
/// path-like pieces (`..`, device names, drive letters, trailing dots).
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::collection::vec(path_char(), 0..12)
            .prop_map(|v| v.into_iter().collect::<String>()),
        1 => proptest::sample::select(vec![
            "..", ".", "", "CON", "con", "Aux", "nul.txt", "COM1", "lpt9.log", "COM0", "LPT0",
            "CONIN$", "conout$", "PRN.", "C:", "c:", "\\\\?\\", "//", "~", ".hidden", "a.",
            "a ", "updates.zip", "arch_x86_64",
        ])
        .prop_map(String::from),
    ];
    prop_oneof![
        proptest::collection::vec(piece, 1..6).prop_map(|v| v.join("/")),
        proptest::collection::vec(path_char(), 0..40)
            .prop_map(|v| v.into_iter().collect::<String>()),
        "[A-Za-z0-9._-]{1,12}(/[A-Za-z0-9._-]{1,12}){0,4}",
    ]
}

/// Windows' reserved device names (Microsoft's "Naming Files, Paths, and
/// Namespaces"), including the ones it says to avoid beyond COM1-9/LPT1-9.
const WINDOWS_RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    "CONIN$", "CONOUT$", "CLOCK$",
];

/// Whether `comp` is an ordinary file name on Windows (NTFS, FAT): no
/// reserved character, not `.`/`..`, no trailing dot or space, not a device.
fn windows_component_ok(comp: &str) -> bool {
    if comp.is_empty() || comp == "." || comp == ".." {
        return false;
    }
    if comp
        .chars()
        .any(|c| (c as u32) < 32 || "<>:\"/\\|?*".contains(c))
    {
        return false;
    }
    if comp.ends_with('.') || comp.ends_with(' ') {
        return false;
    }
    // Windows matches the device name before the first dot, ignoring case
    // and trailing spaces ("con .txt" is CON too).
    let stem = comp.split('.').next().unwrap_or("").trim_end_matches(' ');
    !WINDOWS_RESERVED
        .iter()
        .any(|d| d.eq_ignore_ascii_case(stem))
}

/// Whether `comp` is an ordinary file name on Linux and macOS: no NUL or
/// `/`, not `.`/`..`, at most 255 bytes; and, for macOS, no `:` (the Carbon
/// separator).
fn unix_component_ok(comp: &str) -> bool {
    !comp.is_empty()
        && comp != "."
        && comp != ".."
        && comp.len() <= 255
        && !comp.contains(['\0', '/', ':'])
}

/// How a refused path shows in its [`safepath::PathError`]: escaped, at most
/// 120 characters.
fn shown(s: &str) -> String {
    s.as_bytes()
        .escape_ascii()
        .to_string()
        .chars()
        .take(120)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever SafePath accepts is a plain relative path everywhere and
    /// stays inside the root it is joined to.
    #[test]
    fn accepted_paths_stay_inside(s in path_like()) {
        let Ok(p) = SafePath::new(&s) else { return Ok(()) };
        prop_assert_eq!(p.as_str(), s.as_str());
        prop_assert!(s.is_ascii(), "non-ASCII accepted: {:?}", s);
        prop_assert!(s.len() <= MAX_PATH_LEN);
        // No root, no prefix, no drive letter, no backslash: nothing any of
        // the three systems reads as absolute or as a separator.
        prop_assert!(!s.starts_with('/'));
        prop_assert!(!s.contains('\\') && !s.contains(':'));
        let comps: Vec<&str> = s.split('/').collect();
        prop_assert!(comps.len() <= MAX_DEPTH);
        for c in &comps {
            prop_assert!(c.len() <= MAX_COMPONENT_LEN);
            prop_assert!(windows_component_ok(c), "not a plain Windows name: {:?} in {:?}", c, s);
            prop_assert!(unix_component_ok(c), "not a plain Unix name: {:?} in {:?}", c, s);
        }
        // Joined to a root, every added component is a normal one and the
        // result is below the root.
        for root in ["/srv/mirror", "relative/root", "/"] {
            let root = Path::new(root);
            let j = p.join_to(root);
            prop_assert!(j.starts_with(root));
            let added: Vec<Component> = j.components().skip(root.components().count()).collect();
            prop_assert_eq!(added.len(), comps.len());
            prop_assert!(added.iter().all(|c| matches!(c, Component::Normal(_))));
            prop_assert!(Path::new(&s).is_relative());
        }
    }

    /// The converse for the escapes the design names: anything with a `..`
    /// or `.` component, a leading `/`, a backslash, a colon, NUL or a
    /// non-ASCII character is refused, whatever surrounds it.
    #[test]
    fn escapes_are_refused(
        pre in "[a-z]{0,3}(/[a-z]{1,3}){0,2}",
        bad in proptest::sample::select(vec![
            "..", ".", "", "\\", ":", "\0", "\u{e9}", "e\u{301}", "C:", "a\\..",
        ]),
        post in "([a-z]{1,3}/){0,2}[a-z]{0,3}",
    ) {
        let s = match (pre.is_empty(), post.is_empty()) {
            (true, true) => bad.to_string(),
            (true, false) => format!("{bad}/{post}"),
            (false, true) => format!("{pre}/{bad}"),
            (false, false) => format!("{pre}/{bad}/{post}"),
        };
        let e = SafePath::new(&s).map(|_| ()).unwrap_err();
        prop_assert_eq!(&e.shown, &shown(&s), "the error names the refused path");
        let absolute = format!("/{s}");
        let e = SafePath::new(&absolute).map(|_| ()).unwrap_err();
        prop_assert_eq!(&e.shown, &shown(&absolute));
        // The checks that come before the leading '/' may name another reason.
        prop_assert!(
            [
                "absolute path",
                "contains a NUL byte",
                "contains a backslash",
                "longer than 200 bytes",
            ]
            .contains(&e.reason),
            "refused {:?} for {:?}",
            absolute,
            e.reason
        );
    }

    /// Arbitrary bytes never panic the checker, and what it accepts is ASCII.
    #[test]
    fn arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(p) = SafePath::from_bytes(&raw) {
            prop_assert!(p.as_str().is_ascii());
            prop_assert_eq!(p.as_str().as_bytes(), &raw[..]);
        }
    }

    /// Any Unicode string SafePath accepts is ASCII. ASCII text is invariant
    /// under every Unicode normalisation form (NFC, NFD, NFKC, NFKD), so two
    /// accepted names can never be equal after normalisation unless they are
    /// equal as bytes; case is then the only way two accepted names can
    /// collide, and check_set folds it.
    #[test]
    fn accepted_unicode_is_ascii(s in "\\PC{0,24}") {
        if SafePath::new(&s).is_ok() {
            prop_assert!(s.is_ascii(), "non-ASCII accepted: {:?}", s);
        }
    }

    /// No accepted set holds two names equal ignoring case (ASCII or full
    /// Unicode folding) or normalisation, nor a file that is also another
    /// file's directory.
    #[test]
    fn accepted_sets_have_no_collisions(names in proptest::collection::vec(
        prop_oneof![
            "[aAbB]{1,2}(/[aAbB.]{1,2}){0,2}",
            path_like(),
        ],
        1..8,
    )) {
        let paths: Vec<SafePath> = names.iter().filter_map(|n| SafePath::new(n).ok()).collect();
        if safepath::check_set(&paths).is_err() {
            return Ok(());
        }
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                let (a, b) = (a.as_str(), b.as_str());
                prop_assert!(!a.eq_ignore_ascii_case(b), "{:?} and {:?}", a, b);
                prop_assert_ne!(a.to_lowercase(), b.to_lowercase());
                prop_assert_ne!(a.to_uppercase(), b.to_uppercase());
                let (la, lb) = (a.to_lowercase(), b.to_lowercase());
                let (da, db) = (la.clone() + "/", lb.clone() + "/");
                prop_assert!(!lb.starts_with(&da), "{:?} is a directory of {:?}", a, b);
                prop_assert!(!la.starts_with(&db), "{:?} is a directory of {:?}", b, a);
            }
        }
    }

    /// Adding a case variant of an accepted name always makes the set fail.
    #[test]
    fn case_variants_collide(s in "[a-z][a-z0-9_-]{0,8}(/[a-z][a-z0-9_-]{0,8}){0,3}", flips in any::<u64>()) {
        let Ok(p) = SafePath::new(&s) else { return Ok(()) };
        let variant: String = s
            .chars()
            .enumerate()
            .map(|(i, c)| if flips >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        let q = SafePath::new(&variant).unwrap();
        let e = safepath::check_set(&[p.clone(), q]).unwrap_err();
        prop_assert_eq!(e.reason, "listed twice (ignoring case)");
        // And a file that is also the directory of another.
        let child = variant.clone() + "/x";
        if let Ok(child) = SafePath::new(&child) {
            let e = safepath::check_set(&[p, child]).unwrap_err();
            prop_assert_eq!(
                e.reason,
                "is a file and also a directory of another listed file"
            );
        }
    }
}

/// The reference order: numbers compared as vectors with trailing zeros
/// stripped (so `1.2` and `1.2.0` are equal).
fn reference(a: &[u64], b: &[u64]) -> Ordering {
    fn strip(v: &[u64]) -> &[u64] {
        let n = v.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        &v[..n]
    }
    strip(a).cmp(strip(b))
}

fn render(parts: &[u64], zero_pad: &[bool]) -> String {
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if zero_pad.get(i).copied().unwrap_or(false) && p.to_string().len() < 19 {
                format!("0{p}")
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Version components: mostly small (so equal prefixes are common), some
/// huge (up to 19 digits, the parser's per-component limit), within the
/// parser's 64-byte limit even with a leading zero on every component.
fn parts() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(
        prop_oneof![
            4 => 0u64..4,
            2 => 0u64..100_000,
            1 => 0u64..10_000_000_000_000_000_000,
        ],
        1..=8,
    )
    .prop_filter("longer than 64 bytes", |v| {
        render(v, &[]).len() + v.len() <= 64
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Parsing keeps the text and agrees with numeric comparison.
    #[test]
    fn version_agrees_with_numbers(
        a in parts(), b in parts(),
        pa in proptest::collection::vec(any::<bool>(), 8),
        pb in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let (ta, tb) = (render(&a, &pa), render(&b, &pb));
        let va: Version = ta.parse().unwrap();
        let vb: Version = tb.parse().unwrap();
        prop_assert_eq!(va.as_str(), ta.as_str());
        let want = reference(&a, &b);
        prop_assert_eq!(va.cmp(&vb), want, "{} vs {}", ta, tb);
        // Antisymmetry and Eq/PartialOrd consistency.
        prop_assert_eq!(vb.cmp(&va), want.reverse());
        prop_assert_eq!(va == vb, want == Ordering::Equal);
        prop_assert_eq!(va.partial_cmp(&vb), Some(want));
        prop_assert_eq!(va.cmp(&va), Ordering::Equal);
    }

    /// Transitivity, and that sorting agrees with the reference order.
    #[test]
    fn version_order_is_total(vs in proptest::collection::vec(parts(), 3..12)) {
        let parsed: Vec<Version> = vs.iter().map(|p| render(p, &[]).parse().unwrap()).collect();
        for i in 0..vs.len() {
            for j in 0..vs.len() {
                for k in 0..vs.len() {
                    let (a, b, c) = (&parsed[i], &parsed[j], &parsed[k]);
                    if a <= b && b <= c {
                        prop_assert!(a <= c, "{} <= {} <= {} but not {} <= {}", a, b, c, a, c);
                    }
                    if a == b && b == c {
                        prop_assert!(a == c);
                    }
                }
            }
        }
        let mut sorted = parsed.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            prop_assert!(w[0] <= w[1]);
        }
        let mut by_ref = vs.clone();
        by_ref.sort_by(|a, b| reference(a, b));
        for (s, r) in sorted.iter().zip(&by_ref) {
            prop_assert_eq!(s.cmp(&render(r, &[]).parse().unwrap()), Ordering::Equal);
        }
    }

    /// The parser never panics and accepts only dotted numbers of 1-8
    /// components that fit u64.
    #[test]
    fn version_parser_is_total(s in "[0-9.]{0,30}|\\PC{0,20}") {
        if let Ok(v) = s.parse::<Version>() {
            prop_assert_eq!(v.as_str(), s.as_str());
            let comps: Vec<&str> = s.split('.').collect();
            prop_assert!((1..=8).contains(&comps.len()));
            for c in comps {
                prop_assert!(!c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(c.parse::<u64>().is_ok());
            }
        }
    }
}
