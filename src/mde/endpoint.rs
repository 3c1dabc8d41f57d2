//! Endpoint managed settings for offline definition updates: generating them
//! (Linux `mdatp_managed.json`, or a macOS configuration profile carrying a
//! `com.microsoft.wdav` payload) and checking a file an admin already has.
//!
//! This module owns the Defender setting names gapferry cares about (and so
//! their spelling), the rule that `offlineDefinitionUpdateUrl` ends at
//! `<platform>/<ring>/`, the plist reader and writer, and the list of
//! findings a check reports. It never prints and never touches the network
//! or any file but the one it is asked to check; it only ever reads that one.
//!
//! Microsoft's own sample spells one key `offlineDefintionUpdateFallbackToCloud`;
//! Defender ignores that key, so a check calls it out by name, along with
//! other near misses (a letter or two off, wrong case, the right key in the
//! wrong section, or a flattened `section.key`).

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use quick_xml::events::{BytesDecl, BytesText, Event};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::layout::{Platform, Ring};
use crate::error::{Classify, ExitKind};

/// Section holding the offline-update switches and the URL.
pub const ANTIVIRUS_ENGINE: &str = "antivirusEngine";
/// Section holding feature flags.
pub const FEATURES: &str = "features";
/// Section holding the update schedule.
pub const CLOUD_SERVICE: &str = "cloudService";

/// `antivirusEngine.offlineDefinitionUpdate`: `"enabled"` turns offline updates on.
pub const OFFLINE_UPDATE: &str = "offlineDefinitionUpdate";
/// `antivirusEngine.offlineDefinitionUpdateUrl`: the mirror folder, ending at `<platform>/<ring>/`.
pub const OFFLINE_UPDATE_URL: &str = "offlineDefinitionUpdateUrl";
/// `antivirusEngine.offlineDefinitionUpdateFallbackToCloud` (bool).
pub const FALLBACK_TO_CLOUD: &str = "offlineDefinitionUpdateFallbackToCloud";
/// `features.offlineDefinitionUpdateVerifySig`: `"enabled"` checks the
/// packages' signatures. Deprecated and ignored by Defender for Linux from
/// [`versions::LINUX_VERIFY_SIG_DEPRECATED`] on (the engine's signature is
/// verified by default); still read by older Linux agents and by macOS.
pub const VERIFY_SIG: &str = "offlineDefinitionUpdateVerifySig";
/// `antivirusEngine.enforcementLevel`: Defender for Linux runs automatic
/// offline updates only at [`REAL_TIME`].
pub const ENFORCEMENT_LEVEL: &str = "enforcementLevel";
/// The enforcement level automatic offline updates need on Linux.
pub const REAL_TIME: &str = "real_time";

/// Agent versions the settings depend on, from Microsoft's pages (cited in
/// docs/OPERATIONS.md, "Endpoint settings and agent versions").
pub mod versions {
    /// First Defender for Linux with offline definition updates.
    pub const LINUX_OFFLINE_UPDATES: &str = "101.24022.0001";
    /// First Defender for Mac with offline definition updates.
    pub const MAC_OFFLINE_UPDATES: &str = "101.25012.0003";
    /// Defender for Linux from which `offlineDefinitionUpdateVerifySig` is
    /// deprecated and has no effect.
    pub const LINUX_VERIFY_SIG_DEPRECATED: &str = "101.26062.0005";
    /// Defender for Linux from which `enforcementLevel` defaults to
    /// `passive` (before: `real_time`).
    pub const LINUX_PASSIVE_DEFAULT: &str = "101.23062.0001";
}
use versions::{
    LINUX_OFFLINE_UPDATES, LINUX_PASSIVE_DEFAULT, LINUX_VERIFY_SIG_DEPRECATED, MAC_OFFLINE_UPDATES,
};
/// `cloudService.automaticDefinitionUpdateEnabled` (bool).
pub const AUTOMATIC_UPDATES: &str = "automaticDefinitionUpdateEnabled";
/// `cloudService.definitionUpdatesInterval` (seconds).
pub const UPDATES_INTERVAL: &str = "definitionUpdatesInterval";
/// The misspelling in Microsoft's published sample, which Defender ignores.
pub const MS_SAMPLE_MISSPELLING: &str = "offlineDefintionUpdateFallbackToCloud";

/// Every (section, key) this module knows, in the order they are written.
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    (ANTIVIRUS_ENGINE, OFFLINE_UPDATE),
    (ANTIVIRUS_ENGINE, OFFLINE_UPDATE_URL),
    (ANTIVIRUS_ENGINE, FALLBACK_TO_CLOUD),
    (FEATURES, VERIFY_SIG),
    (CLOUD_SERVICE, AUTOMATIC_UPDATES),
    (CLOUD_SERVICE, UPDATES_INTERVAL),
];
const SECTIONS: &[&str] = &[ANTIVIRUS_ENGINE, FEATURES, CLOUD_SERVICE];

/// Defender's default definition update interval (8 hours).
pub const DEFAULT_INTERVAL: u64 = 28_800;
/// Shortest interval gapferry writes: shorter only hammers the mirror.
pub const MIN_INTERVAL: u64 = 60;
/// Longest interval gapferry writes: a week.
pub const MAX_INTERVAL: u64 = 7 * 24 * 3600;
/// The payload type of Defender's settings in a macOS configuration profile.
pub const PAYLOAD_TYPE: &str = "com.microsoft.wdav";
/// Default `PayloadIdentifier` of a generated profile.
pub const DEFAULT_PROFILE_IDENTIFIER: &str = "org.gapferry.wdav.offline-definition-updates";
/// Largest file `check` reads (real ones are a few KiB).
pub const MAX_CONFIG_SIZE: u64 = 4 * 1024 * 1024;
/// Deepest nesting `check` accepts in a plist.
const MAX_DEPTH: usize = 64;

/// What went wrong generating or checking settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("cannot read {path} (check the path and its permissions)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {limit} bytes, far more than any managed settings file; check that it is the right file")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} is neither JSON nor an XML plist: {reason}")]
    Unrecognised { path: PathBuf, reason: String },
    #[error("{path} is not valid JSON: {reason}; fix the syntax (e.g. `jq . {path}` shows where)")]
    Json { path: PathBuf, reason: String },
    #[error("{path} is not a valid XML plist: {reason}; fix the syntax (on a Mac, `plutil -lint` shows where)")]
    Plist { path: PathBuf, reason: String },
    #[error("{path} holds no {PAYLOAD_TYPE} settings: {reason}")]
    NoSettings { path: PathBuf, reason: String },
    #[error("{what} {input:?}: {reason}")]
    Location {
        what: &'static str,
        input: String,
        reason: String,
    },
    #[error("--interval {0}: must be between {MIN_INTERVAL} and {MAX_INTERVAL} seconds (Defender's default is {DEFAULT_INTERVAL}, 8 hours)")]
    Interval(u64),
    #[error("--format plist writes a macOS configuration profile; use --platform mac, or --format json for Linux")]
    PlistForLinux,
    #[error("cannot write the plist: {0}")]
    Xml(String),
}

impl Classify for EndpointError {
    /// Every failure here is the input's fault (arguments, or a file that
    /// cannot be checked at all): exit 2. Findings in a readable file are not
    /// errors; the CLI turns them into exit 1.
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Usage
    }
}

/// Where endpoints find the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An `http://` or `https://` URL of the mirror root or of the ring folder.
    Url(String),
    /// An absolute directory path on the endpoint (an NFS or SMB mount).
    Path(PathBuf),
}

/// Settings to generate: everything decided and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSettings {
    /// Ends in `<platform>/<ring>/`.
    pub update_url: String,
    pub platform: Platform,
    pub ring: Ring,
    pub fallback_to_cloud: bool,
    pub interval: u64,
}

impl EndpointSettings {
    /// Checks the inputs and settles the URL: a mirror root gets
    /// `<platform>/<ring>/` appended; a URL already ending there is kept
    /// (with a trailing `/`); one ending at another platform, ring, an
    /// `_back` folder or an `arch_` folder is refused.
    pub fn new(
        location: &Location,
        platform: Platform,
        ring: Ring,
        fallback_to_cloud: bool,
        interval: u64,
    ) -> Result<Self, EndpointError> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(EndpointError::Interval(interval));
        }
        let update_url = settle_location(location, platform, ring)?;
        Ok(EndpointSettings {
            update_url,
            platform,
            ring,
            fallback_to_cloud,
            interval,
        })
    }

    /// The settings as a JSON object (sections and keys spelled as Defender
    /// reads them).
    pub fn to_value(&self) -> Value {
        let mut av = Map::new();
        av.insert(OFFLINE_UPDATE.into(), Value::from("enabled"));
        av.insert(
            OFFLINE_UPDATE_URL.into(),
            Value::from(self.update_url.clone()),
        );
        av.insert(
            FALLBACK_TO_CLOUD.into(),
            Value::from(self.fallback_to_cloud),
        );
        if self.platform == Platform::Linux {
            // Since 101.23062.0001 the default is passive, where Defender for
            // Linux never updates on its own.
            av.insert(ENFORCEMENT_LEVEL.into(), Value::from(REAL_TIME));
        }
        // Kept for Linux agents before 101.26062.0005 and for macOS; later
        // Linux agents ignore it.
        let mut features = Map::new();
        features.insert(VERIFY_SIG.into(), Value::from("enabled"));
        let mut cloud = Map::new();
        cloud.insert(AUTOMATIC_UPDATES.into(), Value::from(true));
        cloud.insert(UPDATES_INTERVAL.into(), Value::from(self.interval));
        let mut root = Map::new();
        root.insert(ANTIVIRUS_ENGINE.into(), Value::Object(av));
        root.insert(FEATURES.into(), Value::Object(features));
        root.insert(CLOUD_SERVICE.into(), Value::Object(cloud));
        Value::Object(root)
    }

    /// `mdatp_managed.json`: pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut s =
            serde_json::to_string_pretty(&self.to_value()).expect("a JSON value always serialises");
        s.push('\n');
        s
    }

    /// A macOS configuration profile (`.mobileconfig`, XML plist) with one
    /// `com.microsoft.wdav` payload. The UUIDs are derived from the content,
    /// so the same settings always give the same file.
    pub fn to_plist(&self, identifier: &str) -> Result<String, EndpointError> {
        if self.platform == Platform::Linux {
            return Err(EndpointError::PlistForLinux);
        }
        let settings = self.to_value();
        let seed = format!("{identifier}\n{settings}");
        let mut payload = Map::new();
        payload.insert("PayloadType".into(), PAYLOAD_TYPE.into());
        payload.insert("PayloadIdentifier".into(), PAYLOAD_TYPE.into());
        payload.insert("PayloadUUID".into(), content_uuid(&seed, "payload").into());
        payload.insert("PayloadVersion".into(), 1.into());
        payload.insert("PayloadEnabled".into(), true.into());
        payload.insert(
            "PayloadDisplayName".into(),
            "Microsoft Defender offline definition updates".into(),
        );
        if let Value::Object(m) = settings {
            payload.extend(m);
        }
        let mut profile = Map::new();
        profile.insert(
            "PayloadContent".into(),
            Value::Array(vec![Value::Object(payload)]),
        );
        profile.insert(
            "PayloadDisplayName".into(),
            format!(
                "Defender offline definition updates ({} {})",
                self.platform, self.ring
            )
            .into(),
        );
        profile.insert(
            "PayloadDescription".into(),
            format!(
                "Points Microsoft Defender for Endpoint at the offline definition mirror {} (generated by gapferry)",
                self.update_url
            )
            .into(),
        );
        profile.insert("PayloadIdentifier".into(), identifier.into());
        profile.insert("PayloadScope".into(), "System".into());
        profile.insert("PayloadType".into(), "Configuration".into());
        profile.insert("PayloadUUID".into(), content_uuid(&seed, "profile").into());
        profile.insert("PayloadVersion".into(), 1.into());
        write_plist(&Value::Object(profile))
    }
}

/// A name-based UUID (RFC 9562 version 8) from SHA-256 of `seed` and `what`.
fn content_uuid(seed: &str, what: &str) -> String {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update([0])
        .chain_update(what.as_bytes())
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The path part of a URL or a path, and what to call it in messages.
struct Parsed<'a> {
    what: &'static str,
    /// Scheme and authority (`https://host:port`), empty for paths.
    base: &'a str,
    path: &'a str,
}

fn parse_location(input: &str) -> Result<Parsed<'_>, String> {
    let lower = input.to_ascii_lowercase();
    for scheme in ["http://", "https://", "file://"] {
        if lower.starts_with(scheme) {
            let rest = &input[scheme.len()..];
            let slash = rest.find('/').unwrap_or(rest.len());
            if scheme != "file://" && slash == 0 {
                return Err("the URL has no host".into());
            }
            if input.contains(['?', '#']) {
                return Err("endpoints append arch_<arch>/updates.zip to the URL, so it cannot carry a query (?) or fragment (#)".into());
            }
            if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(
                    "the URL contains spaces or control characters; percent-encode them".into(),
                );
            }
            let split = scheme.len() + slash;
            return Ok(Parsed {
                what: "URL",
                base: &input[..split],
                path: &input[split..],
            });
        }
    }
    if input.starts_with('/') {
        if input.chars().any(|c| c.is_control()) {
            return Err("the path contains control characters".into());
        }
        return Ok(Parsed {
            what: "path",
            base: "",
            path: input,
        });
    }
    if lower.contains("://") {
        return Err("only http://, https:// and file:// URLs are understood".into());
    }
    Err("neither an http(s):// URL nor an absolute path (/...)".into())
}

fn settle_location(
    location: &Location,
    platform: Platform,
    ring: Ring,
) -> Result<String, EndpointError> {
    let (what, input) = match location {
        Location::Url(u) => ("--url", u.clone()),
        Location::Path(p) => (
            "--path",
            p.to_str()
                .ok_or_else(|| EndpointError::Location {
                    what: "--path",
                    input: p.display().to_string(),
                    reason: "not valid UTF-8, which a settings file cannot carry".into(),
                })?
                .to_string(),
        ),
    };
    let bad = |reason: String| EndpointError::Location {
        what,
        input: input.clone(),
        reason,
    };
    let parsed = parse_location(&input).map_err(&bad)?;
    match (location, parsed.what) {
        (Location::Url(_), "path") => {
            return Err(bad(
                "this is a directory path; pass it with --path, or give an http(s):// URL".into(),
            ))
        }
        (Location::Path(_), "URL") => {
            return Err(bad(
                "this is a URL; pass it with --url, or give an absolute directory path".into(),
            ))
        }
        _ => {}
    }
    let trimmed = parsed.path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    let n = segments.len();
    let tail = |k: usize| segments.get(n.wrapping_sub(k)).copied().unwrap_or("");
    let want = format!("{platform}/{ring}");
    if n >= 2 && tail(2) == platform.as_str() && tail(1) == ring.as_str() {
        return Ok(format!("{}{}/", parsed.base, trimmed));
    }
    let last = tail(1);
    let layout_name = last.starts_with("arch_")
        || last.ends_with("_back")
        || Platform::ALL.iter().any(|p| p.as_str() == last)
        || Ring::ALL.iter().any(|r| r.as_str() == last);
    if layout_name {
        return Err(bad(format!(
            "it ends inside the mirror layout at {last:?}, not at {want}/; give the mirror root (gapferry appends {want}/), or a {} ending in {want}/",
            parsed.what
        )));
    }
    Ok(format!("{}{}/{want}/", parsed.base, trimmed))
}

/// What a check expects the file to configure, when the caller knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    pub platform: Option<Platform>,
    pub ring: Option<Ring>,
}

/// The syntax of a checked file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    Json,
    Plist,
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigFormat::Json => "json",
            ConfigFormat::Plist => "plist",
        })
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; the settings still give working offline updates.
    Note,
    /// Offline updates will not work as intended: `check` fails.
    Problem,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Problem => "problem",
        })
    }
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The dotted key it is about, as written in the file
    /// (`antivirusEngine.offlineDefintionUpdateFallbackToCloud`).
    pub key: String,
    pub message: String,
    /// What to change, when there is one thing to change.
    pub fix: Option<String>,
    /// The Defender agents (platform and versions) the setting matters
    /// for, when that is not every agent with offline updates.
    pub applies_to: Option<String>,
}

/// The result of checking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub path: PathBuf,
    pub format: ConfigFormat,
    /// `antivirusEngine.offlineDefinitionUpdateUrl` when it is a string.
    pub update_url: Option<String>,
    /// Problems first, then notes; in file order within each.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count()
    }
    pub fn is_ok(&self) -> bool {
        self.problems() == 0
    }
}

/// Reads and checks a managed settings file: JSON (`mdatp_managed.json`), a
/// plain plist of settings (`com.microsoft.wdav.plist`) or a configuration
/// profile (`.mobileconfig`).
pub fn check_file(path: &Path, expect: &Expect) -> Result<CheckReport, EndpointError> {
    let read = |source| EndpointError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(EndpointError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_CONFIG_SIZE,
        });
    }
    check_bytes(&bytes, path, expect)
}

/// Checks the bytes of a settings file; `path` names it in messages.
pub fn check_bytes(
    bytes: &[u8],
    path: &Path,
    expect: &Expect,
) -> Result<CheckReport, EndpointError> {
    let unrecognised = |reason: &str| EndpointError::Unrecognised {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.starts_with(b"bplist") {
        return Err(unrecognised(
            "it is a binary plist; convert it with `plutil -convert xml1 FILE` and check the copy",
        ));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| unrecognised(&format!("not UTF-8 text ({e})")))?;
    let text = text.trim_start_matches('\u{feff}');
    let (format, root) = match text.trim_start().chars().next() {
        Some('{') => (ConfigFormat::Json, parse_json(text, path)?),
        Some('<') => (ConfigFormat::Plist, parse_plist(text, path)?),
        Some(_) => {
            return Err(unrecognised(
                "it starts with neither '{' (JSON) nor '<' (XML plist)",
            ))
        }
        None => return Err(unrecognised("it is empty")),
    };
    let settings = match format {
        ConfigFormat::Json => root,
        ConfigFormat::Plist => {
            find_wdav_settings(root).map_err(|reason| EndpointError::NoSettings {
                path: path.to_path_buf(),
                reason,
            })?
        }
    };
    let Value::Object(settings) = settings else {
        return Err(EndpointError::NoSettings {
            path: path.to_path_buf(),
            reason: "the top level is not a JSON object / plist dict".into(),
        });
    };
    let mut expect = *expect;
    if format == ConfigFormat::Plist && expect.platform.is_none() {
        // Only macOS reads plists.
        expect.platform = Some(Platform::Mac);
    }
    let update_url = settings
        .get(ANTIVIRUS_ENGINE)
        .and_then(|s| s.get(OFFLINE_UPDATE_URL))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut findings = check_settings(&settings, &expect);
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok(CheckReport {
        path: path.to_path_buf(),
        format,
        update_url,
        findings,
    })
}

fn parse_json(text: &str, path: &Path) -> Result<Value, EndpointError> {
    serde_json::from_str(text).map_err(|e| EndpointError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Finds Defender's settings in a parsed plist: the `com.microsoft.wdav`
/// payload of a configuration profile (also the older
/// `com.apple.ManagedClient.preferences` form), or the plist itself when it
/// is a plain settings dict.
fn find_wdav_settings(root: Value) -> Result<Value, String> {
    let Value::Object(mut top) = root else {
        return Err("the plist's top level is not a <dict>".into());
    };
    let Some(content) = top.remove("PayloadContent") else {
        return Ok(Value::Object(top));
    };
    let items = match content {
        Value::Array(items) => items,
        Value::Object(d) => vec![Value::Object(d)],
        _ => return Err("PayloadContent is neither an <array> nor a <dict>".into()),
    };
    let mut types = Vec::new();
    for item in items {
        let Value::Object(mut d) = item else { continue };
        let ty = d
            .get("PayloadType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if ty == PAYLOAD_TYPE {
            d.retain(|k, _| !k.starts_with("Payload"));
            return Ok(Value::Object(d));
        }
        if ty == "com.apple.ManagedClient.preferences" {
            let mcx = d
                .remove("PayloadContent")
                .and_then(|mut c| c.get_mut(PAYLOAD_TYPE).map(Value::take))
                .and_then(|mut w| w.get_mut("Forced").map(Value::take))
                .and_then(|f| f.as_array().and_then(|a| a.first().cloned()))
                .and_then(|mut f| f.get_mut("mcx_preference_settings").map(Value::take));
            if let Some(s) = mcx {
                return Ok(s);
            }
        }
        types.push(ty);
    }
    Err(format!(
        "its PayloadContent has payloads of type {types:?} but none of type {PAYLOAD_TYPE}; profiles for Defender carry a payload with PayloadType {PAYLOAD_TYPE}"
    ))
}

/// The checks proper, on Defender's settings dict.
pub fn check_settings(root: &Map<String, Value>, expect: &Expect) -> Vec<Finding> {
    let mut out = Vec::new();
    let platform = platform_of(root, expect);
    let mut problem = |key: &str, message: String, fix: Option<String>| {
        out.push(Finding {
            severity: Severity::Problem,
            key: key.to_string(),
            message,
            fix,
            applies_to: None,
        })
    };

    // Stray, misplaced and misspelled keys at the top level.
    for key in root.keys() {
        if SECTIONS.contains(&key.as_str()) || key.starts_with("Payload") {
            continue;
        }
        if let Some((section, leaf)) = KNOWN_KEYS
            .iter()
            .find(|(s, k)| key.split_once('.') == Some((s, k)))
        {
            problem(
                key,
                "written as one flat key, which Defender ignores".into(),
                Some(format!("nest it: \"{section}\": {{ \"{leaf}\": ... }}")),
            );
        } else if let Some((section, leaf)) = KNOWN_KEYS.iter().find(|(_, k)| k == key) {
            problem(
                key,
                format!("belongs inside \"{section}\"; at the top level Defender ignores it"),
                Some(format!("move it into \"{section}\": {{ \"{leaf}\": ... }}")),
            );
        } else if let Some(section) = SECTIONS.iter().find(|s| near_miss(key, s)) {
            problem(
                key,
                "misspelled section name; Defender ignores everything in it".into(),
                Some(format!("rename it to \"{section}\"")),
            );
        } else if let Some((section, leaf)) = KNOWN_KEYS.iter().find(|(_, k)| near_miss(key, k)) {
            problem(
                key,
                format!("looks like a misspelling of {section}.{leaf}, and is at the top level; Defender ignores it"),
                Some(format!("write it as \"{section}\": {{ \"{leaf}\": ... }}")),
            );
        }
    }

    // Keys inside the sections.
    for section in SECTIONS {
        let Some(value) = root.get(*section) else {
            continue;
        };
        let Some(map) = value.as_object() else {
            problem(
                section,
                format!("must be a dictionary of settings, not {}", kind(value)),
                None,
            );
            continue;
        };
        for key in map.keys() {
            let dotted = format!("{section}.{key}");
            if KNOWN_KEYS.contains(&(section, key.as_str())) {
                continue;
            }
            if let Some((right, _)) = KNOWN_KEYS.iter().find(|(_, k)| k == key) {
                problem(
                    &dotted,
                    format!("belongs in \"{right}\", not \"{section}\"; here Defender ignores it"),
                    Some(format!("move it into \"{right}\"")),
                );
            } else if key == MS_SAMPLE_MISSPELLING {
                problem(
                    &dotted,
                    "misspelled (\"Defintion\"), as in Microsoft's own sample; Defender ignores it, so fallback to the cloud is not configured".into(),
                    Some(format!("rename it to \"{FALLBACK_TO_CLOUD}\"")),
                );
            } else if let Some((right, leaf)) = KNOWN_KEYS.iter().find(|(_, k)| near_miss(key, k)) {
                let place = if right == section {
                    String::new()
                } else {
                    format!(" in \"{right}\"")
                };
                problem(
                    &dotted,
                    format!("looks like a misspelling of {right}.{leaf}; Defender ignores it"),
                    Some(format!("rename it to \"{leaf}\"{place}")),
                );
            }
        }
    }

    let get = |section: &str, key: &str| root.get(section).and_then(|s| s.get(key));
    let dotted = |section: &str, key: &str| format!("{section}.{key}");

    // Offline updates switched on.
    let k = dotted(ANTIVIRUS_ENGINE, OFFLINE_UPDATE);
    match get(ANTIVIRUS_ENGINE, OFFLINE_UPDATE) {
        None => problem(
            &k,
            "missing, so offline definition updates are disabled (the default)".into(),
            Some(format!(
                "set \"{OFFLINE_UPDATE}\": \"enabled\" in \"{ANTIVIRUS_ENGINE}\""
            )),
        ),
        Some(Value::String(s)) if s == "enabled" => {}
        Some(v) => problem(
            &k,
            format!("is {}, so offline definition updates are disabled", show(v)),
            Some("set it to \"enabled\" (a string)".into()),
        ),
    }

    // The URL.
    let k = dotted(ANTIVIRUS_ENGINE, OFFLINE_UPDATE_URL);
    match get(ANTIVIRUS_ENGINE, OFFLINE_UPDATE_URL) {
        None => problem(
            &k,
            "missing, so endpoints do not know where the mirror is".into(),
            Some("set it to the mirror's <platform>/<ring>/ folder, e.g. \"http://mirror.example/linux/production/\" (gapferry endpoint-config prints it)".into()),
        ),
        Some(Value::String(url)) => {
            for (message, fix) in check_update_url(url, expect) {
                problem(&k, message, fix);
            }
        }
        Some(v) => problem(
            &k,
            format!("is {}, not a string", show(v)),
            Some("give the URL as a string".into()),
        ),
    }

    // Fallback to the cloud.
    let k = dotted(ANTIVIRUS_ENGINE, FALLBACK_TO_CLOUD);
    let mut notes = Vec::new();
    match get(ANTIVIRUS_ENGINE, FALLBACK_TO_CLOUD) {
        None if platform == Some(Platform::Mac) => notes.push((
            k,
            "not set, and Defender for Mac's schema defaults it to true: endpoints that cannot reach the mirror try Microsoft's cloud, which an air-gapped network cannot reach".to_string(),
            Some("set it to false on an air-gapped network".to_string()),
        )),
        // Microsoft documents no default for Linux.
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => notes.push((
            k,
            "true: endpoints that cannot reach the mirror try Microsoft's cloud, which an air-gapped network cannot reach".to_string(),
            Some("set it to false on an air-gapped network".to_string()),
        )),
        Some(v) => problem(
            &k,
            format!("is {}, not true or false", show(v)),
            Some("set it to false (a boolean) on an air-gapped network".into()),
        ),
    }

    // Signature verification of the packages.
    let k = dotted(FEATURES, VERIFY_SIG);
    let linux = platform == Some(Platform::Linux);
    match get(FEATURES, VERIFY_SIG) {
        Some(Value::String(s)) if s == "enabled" && linux => notes.push((
            k,
            format!("deprecated since Defender for Linux {LINUX_VERIFY_SIG_DEPRECATED}, which ignores it and verifies the engine's signature by default; only older agents read it"),
            Some("keep it while agents older than that remain; drop it after".into()),
        )),
        Some(Value::String(s)) if s == "enabled" => {}
        // Deprecated on Linux: nothing to recommend.
        None if linux => {}
        None => notes.push((
            k,
            "not set; gapferry recommends turning on signature checks of offline packages".into(),
            Some(format!(
                "set \"{VERIFY_SIG}\": \"enabled\" in \"{FEATURES}\""
            )),
        )),
        Some(v) => problem(
            &k,
            if linux {
                format!(
                    "is {}, so Defender for Linux agents before {LINUX_VERIFY_SIG_DEPRECATED} do not check the signatures of offline packages (later agents ignore the setting)",
                    show(v)
                )
            } else {
                format!(
                    "is {}, so endpoints do not check the signatures of offline packages",
                    show(v)
                )
            },
            Some("set it to \"enabled\" (a string)".into()),
        ),
    }

    // Real-time enforcement, without which Defender for Linux never runs
    // an automatic offline update.
    let k = dotted(ANTIVIRUS_ENGINE, ENFORCEMENT_LEVEL);
    let why = format!(
        "Defender for Linux runs automatic offline updates only at \"{REAL_TIME}\" \
         (the default is \"passive\" since {LINUX_PASSIVE_DEFAULT}); otherwise endpoints \
         update only when `mdatp definitions update` runs"
    );
    let fix = Some(format!(
        "set \"{ENFORCEMENT_LEVEL}\": \"{REAL_TIME}\" in \"{ANTIVIRUS_ENGINE}\", or run `mdatp definitions update` on a schedule"
    ));
    match (get(ANTIVIRUS_ENGINE, ENFORCEMENT_LEVEL), platform) {
        (Some(Value::String(s)), _) if s == REAL_TIME => {}
        (_, Some(Platform::Mac)) => {}
        (None, Some(Platform::Linux)) => problem(&k, format!("not set: {why}"), fix),
        (None, _) => notes.push((k, format!("not set: on Linux, {why}"), fix)),
        (Some(Value::String(s)), p) if s == "passive" || s == "on_demand" => {
            let message = format!("is {s:?}: {why}");
            if p == Some(Platform::Linux) {
                problem(&k, message, fix);
            } else {
                notes.push((k, format!("on Linux, {message}"), fix));
            }
        }
        (Some(v), _) => problem(
            &k,
            format!(
                "is {}, not one of \"real_time\", \"on_demand\", \"passive\"",
                show(v)
            ),
            fix,
        ),
    }

    // The update schedule.
    let k = dotted(CLOUD_SERVICE, AUTOMATIC_UPDATES);
    match get(CLOUD_SERVICE, AUTOMATIC_UPDATES) {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => problem(
            &k,
            "false, so endpoints never fetch definitions from the mirror on their own".into(),
            Some("set it to true".into()),
        ),
        Some(v) => problem(
            &k,
            format!("is {}, not true or false", show(v)),
            Some("set it to true (a boolean)".into()),
        ),
    }
    let k = dotted(CLOUD_SERVICE, UPDATES_INTERVAL);
    match get(CLOUD_SERVICE, UPDATES_INTERVAL) {
        None => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|s| s > 0) => {
            let secs = n.as_u64().unwrap_or(0);
            if secs > MAX_INTERVAL {
                notes.push((
                    k,
                    format!("{secs} seconds is more than a week between update checks"),
                    Some(format!(
                        "Defender's default is {DEFAULT_INTERVAL} (8 hours)"
                    )),
                ));
            }
        }
        Some(v) => problem(
            &k,
            format!("is {}, not a whole number of seconds above 0", show(v)),
            Some(format!(
                "e.g. {DEFAULT_INTERVAL} (8 hours, Defender's default)"
            )),
        ),
    }

    out.extend(notes.into_iter().map(|(key, message, fix)| Finding {
        severity: Severity::Note,
        key,
        message,
        fix,
        applies_to: None,
    }));
    for f in &mut out {
        f.applies_to = applies_to(&f.key, platform);
    }
    out
}

/// The platform the settings are for: as expected, else the one the URL
/// names (`.../<platform>/<ring>/`).
fn platform_of(root: &Map<String, Value>, expect: &Expect) -> Option<Platform> {
    expect.platform.or_else(|| {
        let url = root
            .get(ANTIVIRUS_ENGINE)?
            .get(OFFLINE_UPDATE_URL)?
            .as_str()?;
        let segments: Vec<&str> = url.split('/').filter(|s| !s.is_empty()).collect();
        segments.iter().rev().nth(1)?.parse().ok()
    })
}

/// Which agents a finding's setting matters for (see [`versions`]); for
/// `platform` only when it is known.
pub fn applies_to(key: &str, platform: Option<Platform>) -> Option<String> {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let offline = (
        format!("Defender for Linux {LINUX_OFFLINE_UPDATES} and later"),
        Some(format!("Defender for Mac {MAC_OFFLINE_UPDATES} and later")),
    );
    let (linux, mac) = match leaf {
        OFFLINE_UPDATE | OFFLINE_UPDATE_URL | FALLBACK_TO_CLOUD | MS_SAMPLE_MISSPELLING => offline,
        VERIFY_SIG => (
            format!(
                "Defender for Linux {LINUX_OFFLINE_UPDATES} up to, not including, {LINUX_VERIFY_SIG_DEPRECATED} (ignored from then on)"
            ),
            offline.1,
        ),
        ENFORCEMENT_LEVEL => (
            format!(
                "Defender for Linux (automatic offline updates need {REAL_TIME}; the default is passive since {LINUX_PASSIVE_DEFAULT})"
            ),
            None,
        ),
        _ => return None,
    };
    match platform {
        Some(Platform::Linux) => Some(linux),
        Some(Platform::Mac) => mac,
        _ => Some(match mac {
            Some(m) => format!("{linux}; {m}"),
            None => linux,
        }),
    }
}

/// Checks an `offlineDefinitionUpdateUrl` value; each problem comes with a fix.
pub fn check_update_url(url: &str, expect: &Expect) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let example = format!(
        "{}/{}/",
        expect.platform.map_or("linux|mac", Platform::as_str),
        expect.ring.map_or("production|preview", Ring::as_str)
    );
    let parsed = match parse_location(url) {
        Ok(p) => p,
        Err(reason) => {
            out.push((
                format!("{url:?} is not usable: {reason}"),
                Some(format!(
                    "give an http(s):// URL or an absolute path ending in {example}"
                )),
            ));
            return out;
        }
    };
    let segments: Vec<&str> = parsed.path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segments.len();
    let last = segments.last().copied().unwrap_or("");
    if last.starts_with("arch_") || last == super::UPDATES_ZIP {
        out.push((
            format!("{url:?} goes past the ring folder; endpoints append arch_<arch>/updates.zip themselves"),
            Some(format!("end the {} at {example}", parsed.what)),
        ));
        return out;
    }
    let platform = n
        .checked_sub(2)
        .and_then(|i| segments[i].parse::<Platform>().ok());
    let ring_seg = last.strip_suffix("_back").unwrap_or(last);
    let ring = ring_seg.parse::<Ring>().ok().filter(|_| n >= 2);
    match (platform, ring) {
        (Some(p), Some(r)) => {
            if let Some(want) = expect.platform.filter(|w| *w != p) {
                out.push((
                    format!("{url:?} is the mirror folder for {p}, but this file configures {want} endpoints"),
                    Some(format!("end the {} at {want}/{r}/", parsed.what)),
                ));
            }
            if let Some(want) = expect.ring.filter(|w| *w != r) {
                out.push((
                    format!("{url:?} is the {r} ring, not {want}"),
                    Some(format!("end the {} at {p}/{want}/", parsed.what)),
                ));
            }
            if !url.ends_with('/') {
                out.push((
                    format!("{url:?} does not end with '/'; it names a folder to which endpoints append arch_<arch>/updates.zip, and Microsoft's documentation writes it with a trailing slash"),
                    Some(format!("add a trailing slash: \"{url}/\"")),
                ));
            }
        }
        _ => out.push((
            format!("{url:?} does not end at <platform>/<ring>/ (linux|mac / production|preview), where the mirror keeps arch_<arch>/"),
            Some(format!(
                "point it at the mirror's ring folder, e.g. \"{}{}/{}\"",
                parsed.base,
                parsed.path.trim_end_matches('/'),
                example
            )),
        )),
    }
    out
}

/// A key a letter or two off a known one (or differing only in case).
fn near_miss(key: &str, known: &str) -> bool {
    if key == known {
        return false;
    }
    let (a, b) = (key.to_ascii_lowercase(), known.to_ascii_lowercase());
    if a == b {
        return true;
    }
    let budget = if known.len() >= 16 { 2 } else { 1 };
    a.len().abs_diff(b.len()) <= budget && edit_distance(&a, &b) <= budget
}

/// Optimal string alignment distance (Levenshtein plus adjacent swaps).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 {
                j
            } else if j == 0 {
                i
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut v = (d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1)
                    .min(d[(i - 1) * w + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[(i - 2) * w + j - 2] + 1);
                }
                v
            };
        }
    }
    d[a.len() * w + b.len()]
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a dictionary",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(_) | Value::Bool(_) | Value::Number(_) | Value::Null => v.to_string(),
        other => kind(other).to_string(),
    }
}

// ---------------------------------------------------------------- plist I/O

/// Writes a JSON value as an XML property list (objects become `<dict>`,
/// arrays `<array>`, whole numbers `<integer>`, other numbers `<real>`).
pub fn write_plist(value: &Value) -> Result<String, EndpointError> {
    let xml = |e: quick_xml::Error| EndpointError::Xml(e.to_string());
    let mut w = quick_xml::Writer::new_with_indent(Vec::new(), b'\t', 1);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(xml)?;
    w.write_event(Event::DocType(BytesText::from_escaped(
        r#"plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd""#,
    )))
    .map_err(xml)?;
    w.create_element("plist")
        .with_attribute(("version", "1.0"))
        .write_inner_content(|w| write_plist_value(w, value))
        .map_err(xml)?;
    let mut s = String::from_utf8(w.into_inner()).expect("the writer only writes UTF-8");
    s.push('\n');
    Ok(s)
}

fn write_plist_value(
    w: &mut quick_xml::Writer<Vec<u8>>,
    value: &Value,
) -> Result<(), quick_xml::Error> {
    match value {
        Value::Null => {
            w.create_element("string").write_empty()?;
        }
        Value::Bool(b) => {
            w.create_element(if *b { "true" } else { "false" })
                .write_empty()?;
        }
        Value::Number(n) => {
            let tag = if n.is_f64() { "real" } else { "integer" };
            w.create_element(tag)
                .write_text_content(BytesText::new(&n.to_string()))?;
        }
        Value::String(s) => {
            w.create_element("string")
                .write_text_content(BytesText::new(s))?;
        }
        Value::Array(items) => {
            w.create_element("array")
                .write_inner_content(|w| items.iter().try_for_each(|v| write_plist_value(w, v)))?;
        }
        Value::Object(map) => {
            w.create_element("dict").write_inner_content(|w| {
                for (k, v) in map {
                    w.create_element("key")
                        .write_text_content(BytesText::new(k))?;
                    write_plist_value(w, v)?;
                }
                Ok::<(), quick_xml::Error>(())
            })?;
        }
    }
    Ok(())
}

/// Parses an XML property list into a JSON value: `<dict>` to an object,
/// `<array>` to an array, `<string>`/`<date>`/`<data>` to strings,
/// `<integer>`/`<real>` to numbers, `<true/>`/`<false/>` to booleans.
pub fn parse_plist(text: &str, path: &Path) -> Result<Value, EndpointError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let fail = |reader: &quick_xml::Reader<&[u8]>, reason: String| EndpointError::Plist {
        path: path.to_path_buf(),
        reason: format!("{reason} (near byte {})", reader.buffer_position()),
    };
    // Skip the prologue up to <plist>.
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().as_ref() == b"plist" => break,
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                return Err(fail(
                    &reader,
                    format!("the root element is <{name}>, not <plist>"),
                ));
            }
            Ok(Event::Eof) => return Err(fail(&reader, "no <plist> element".into())),
            Ok(Event::Text(t)) if !is_blank(&t) => {
                return Err(fail(&reader, "text outside <plist>".into()))
            }
            Ok(_) => {}
            Err(e) => return Err(fail(&reader, e.to_string())),
        }
    }
    let value = match next_value(&mut reader, 0).map_err(|r| fail(&reader, r))? {
        Some(v) => v,
        None => return Err(fail(&reader, "<plist> is empty".into())),
    };
    // Then only </plist> and blanks.
    match next_value(&mut reader, 0) {
        Err(r) if r == "unexpected </plist>" => {}
        Ok(Some(_)) => return Err(fail(&reader, "<plist> holds more than one value".into())),
        Ok(None) => return Err(fail(&reader, "<plist> is not closed".into())),
        Err(r) => return Err(fail(&reader, r)),
    }
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => break,
            Ok(Event::Text(t)) if is_blank(&t) => {}
            Ok(Event::Comment(_)) | Ok(Event::PI(_)) => {}
            Ok(_) => return Err(fail(&reader, "content after </plist>".into())),
            Err(e) => return Err(fail(&reader, e.to_string())),
        }
    }
    Ok(value)
}

fn is_blank(t: &BytesText<'_>) -> bool {
    t.iter().all(|b| b.is_ascii_whitespace())
}

/// Reads the next value element. `Ok(None)` at end of input; an `Err` whose
/// text is `unexpected </NAME>` when a closing tag comes first (callers
/// reading a container use that to stop).
fn next_value(
    reader: &mut quick_xml::Reader<&[u8]>,
    depth: usize,
) -> Result<Option<Value>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    loop {
        let event = reader.read_event().map_err(|e| e.to_string())?;
        match event {
            Event::Eof => return Ok(None),
            Event::Text(t) if is_blank(&t) => {}
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) | Event::Decl(_) => {}
            Event::Text(_) | Event::CData(_) => {
                return Err("text where a value element was expected".into())
            }
            Event::End(e) => {
                return Err(format!(
                    "unexpected </{}>",
                    String::from_utf8_lossy(e.name().as_ref())
                ))
            }
            Event::Empty(e) => {
                let v = match e.name().as_ref() {
                    b"true" => Value::Bool(true),
                    b"false" => Value::Bool(false),
                    b"string" | b"data" | b"date" => Value::String(String::new()),
                    b"dict" => Value::Object(Map::new()),
                    b"array" => Value::Array(Vec::new()),
                    other => {
                        return Err(format!(
                            "unknown element <{}/>",
                            String::from_utf8_lossy(other)
                        ))
                    }
                };
                return Ok(Some(v));
            }
            Event::Start(e) => {
                let name = e.name().as_ref().to_vec();
                let v = match name.as_slice() {
                    b"string" | b"data" | b"date" => Value::String(read_text(reader, &name)?),
                    b"integer" => {
                        let t = read_text(reader, &name)?;
                        let t = t.trim();
                        if let Ok(n) = t.parse::<u64>() {
                            Value::from(n)
                        } else if let Ok(n) = t.parse::<i64>() {
                            Value::from(n)
                        } else {
                            return Err(format!("<integer> holds {t:?}, not a whole number"));
                        }
                    }
                    b"real" => {
                        let t = read_text(reader, &name)?;
                        let f: f64 = t
                            .trim()
                            .parse()
                            .map_err(|_| format!("<real> holds {t:?}, not a number"))?;
                        serde_json::Number::from_f64(f)
                            .map(Value::Number)
                            .ok_or_else(|| format!("<real> holds {t:?}, not a finite number"))?
                    }
                    b"true" | b"false" => {
                        let t = read_text(reader, &name)?;
                        if !t.trim().is_empty() {
                            return Err("<true> and <false> must be empty".into());
                        }
                        Value::Bool(name.as_slice() == b"true")
                    }
                    b"array" => {
                        let mut items = Vec::new();
                        loop {
                            match next_value(reader, depth + 1) {
                                Ok(Some(v)) => items.push(v),
                                Ok(None) => return Err("<array> is not closed".into()),
                                Err(r) if r == "unexpected </array>" => break,
                                Err(r) => return Err(r),
                            }
                        }
                        Value::Array(items)
                    }
                    b"dict" => Value::Object(read_dict(reader, depth)?),
                    other => {
                        return Err(format!(
                            "unknown element <{}>",
                            String::from_utf8_lossy(other)
                        ))
                    }
                };
                return Ok(Some(v));
            }
        }
    }
}

fn read_dict(
    reader: &mut quick_xml::Reader<&[u8]>,
    depth: usize,
) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    loop {
        let event = reader.read_event().map_err(|e| e.to_string())?;
        let key = match event {
            Event::Eof => return Err("<dict> is not closed".into()),
            Event::Text(t) if is_blank(&t) => continue,
            Event::Comment(_) | Event::PI(_) => continue,
            Event::End(e) if e.name().as_ref() == b"dict" => return Ok(map),
            Event::Start(e) if e.name().as_ref() == b"key" => read_text(reader, b"key")?,
            Event::Empty(e) if e.name().as_ref() == b"key" => String::new(),
            _ => return Err("a <dict> must alternate <key> and value elements".into()),
        };
        let value = match next_value(reader, depth + 1) {
            Ok(Some(v)) => v,
            Ok(None) => return Err("<dict> is not closed".into()),
            Err(r) if r == "unexpected </dict>" => {
                return Err(format!("<key>{key}</key> has no value"))
            }
            Err(r) => return Err(r),
        };
        if map.contains_key(&key) {
            return Err(format!(
                "<key>{key}</key> appears twice in one <dict>; keep one"
            ));
        }
        map.insert(key, value);
    }
}

/// The text content of the element `name` just opened, up to its end tag.
fn read_text(reader: &mut quick_xml::Reader<&[u8]>, name: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Text(t) => {
                let s: Cow<'_, str> = t.unescape().map_err(|e| e.to_string())?;
                out.push_str(&s);
            }
            Event::CData(c) => {
                out.push_str(&String::from_utf8_lossy(&c.into_inner()));
            }
            Event::Comment(_) => {}
            Event::End(e) if e.name().as_ref() == name => return Ok(out),
            Event::Eof => return Err(format!("<{}> is not closed", String::from_utf8_lossy(name))),
            _ => {
                return Err(format!(
                    "<{}> holds elements; it must hold only text",
                    String::from_utf8_lossy(name)
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> EndpointSettings {
        EndpointSettings::new(
            &Location::Url(url.into()),
            Platform::Linux,
            Ring::Production,
            false,
            DEFAULT_INTERVAL,
        )
        .unwrap()
    }

    #[test]
    fn mirror_root_gets_platform_and_ring() {
        assert_eq!(
            settings("http://mirror.example/mde").update_url,
            "http://mirror.example/mde/linux/production/"
        );
        assert_eq!(
            settings("https://mirror.example").update_url,
            "https://mirror.example/linux/production/"
        );
        assert_eq!(
            settings("http://m.example:8080/mde/linux/production").update_url,
            "http://m.example:8080/mde/linux/production/"
        );
    }

    #[test]
    fn urls_inside_the_layout_are_refused() {
        for bad in [
            "http://m/mac/production/",
            "http://m/linux/preview/",
            "http://m/linux/production_back/",
            "http://m/linux/production/arch_x86_64/",
            "http://m/linux/",
            "http://m/?x=1",
            "ftp://m/",
            "m.example/mirror",
            "http:///linux",
        ] {
            let r = EndpointSettings::new(
                &Location::Url(bad.into()),
                Platform::Linux,
                Ring::Production,
                false,
                DEFAULT_INTERVAL,
            );
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        let s = EndpointSettings::new(
            &Location::Path("/mnt/mirror".into()),
            Platform::Mac,
            Ring::Preview,
            true,
            3600,
        )
        .unwrap();
        assert_eq!(s.update_url, "/mnt/mirror/mac/preview/");
        assert!(EndpointSettings::new(
            &Location::Path("relative/dir".into()),
            Platform::Mac,
            Ring::Preview,
            true,
            3600
        )
        .is_err());
    }

    #[test]
    fn generated_settings_check_clean() {
        let s = settings("http://mirror.example/mde");
        let r = check_bytes(
            s.to_json().as_bytes(),
            Path::new("x.json"),
            &Expect::default(),
        )
        .unwrap();
        assert_eq!(r.problems(), 0, "{:?}", r.findings);
        // The one note: the signature setting kept for older Linux agents.
        let keys: Vec<&str> = r.findings.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["features.offlineDefinitionUpdateVerifySig"]);
        assert!(r.findings[0]
            .applies_to
            .as_deref()
            .unwrap()
            .contains(LINUX_VERIFY_SIG_DEPRECATED));
        let mac = EndpointSettings {
            platform: Platform::Mac,
            update_url: "http://mirror.example/mde/mac/production/".into(),
            ..s
        };
        let plist = mac.to_plist(DEFAULT_PROFILE_IDENTIFIER).unwrap();
        let r = check_bytes(
            plist.as_bytes(),
            Path::new("x.mobileconfig"),
            &Expect::default(),
        )
        .unwrap();
        assert_eq!(r.format, ConfigFormat::Plist);
        assert_eq!(r.findings, vec![]);
        // Deterministic.
        assert_eq!(plist, mac.to_plist(DEFAULT_PROFILE_IDENTIFIER).unwrap());
    }

    fn findings(v: serde_json::Value, platform: Option<Platform>) -> Vec<Finding> {
        check_settings(
            v.as_object().unwrap(),
            &Expect {
                platform,
                ring: None,
            },
        )
    }

    fn find<'a>(f: &'a [Finding], key: &str) -> Option<&'a Finding> {
        f.iter().find(|x| x.key == key)
    }

    #[test]
    fn current_agent_rules() {
        let base = |url: &str| {
            serde_json::json!({
                "antivirusEngine": {
                    "offlineDefinitionUpdate": "enabled",
                    "offlineDefinitionUpdateUrl": url,
                },
                "features": { "offlineDefinitionUpdateVerifySig": "enabled" },
            })
        };
        // Linux, told by the URL: no enforcementLevel is a problem, the
        // signature setting a deprecation note, fallback unset is silent.
        let f = findings(base("http://m/linux/production/"), None);
        let e = find(&f, "antivirusEngine.enforcementLevel").unwrap();
        assert_eq!(e.severity, Severity::Problem);
        assert!(e.message.contains("passive") && e.message.contains(LINUX_PASSIVE_DEFAULT));
        assert!(e
            .applies_to
            .as_deref()
            .unwrap()
            .starts_with("Defender for Linux"));
        let v = find(&f, "features.offlineDefinitionUpdateVerifySig").unwrap();
        assert_eq!(v.severity, Severity::Note);
        assert!(
            v.message.contains(LINUX_VERIFY_SIG_DEPRECATED),
            "{}",
            v.message
        );
        assert!(!v.applies_to.as_deref().unwrap().contains("Mac"));
        assert!(find(&f, "antivirusEngine.offlineDefinitionUpdateFallbackToCloud").is_none());
        // passive is a problem, real_time is fine.
        let mut p = base("http://m/linux/production/");
        p["antivirusEngine"]["enforcementLevel"] = "passive".into();
        let f = findings(p.clone(), None);
        assert_eq!(
            find(&f, "antivirusEngine.enforcementLevel")
                .unwrap()
                .severity,
            Severity::Problem
        );
        p["antivirusEngine"]["enforcementLevel"] = "real_time".into();
        assert!(find(&findings(p, None), "antivirusEngine.enforcementLevel").is_none());

        // macOS: fallback unset means true (the schema's default): a note;
        // no enforcement rule, no deprecation.
        let f = findings(base("http://m/mac/production/"), None);
        let fb = find(&f, "antivirusEngine.offlineDefinitionUpdateFallbackToCloud").unwrap();
        assert_eq!(fb.severity, Severity::Note);
        assert!(fb.message.contains("defaults it to true"));
        assert_eq!(
            fb.applies_to.as_deref(),
            Some(format!("Defender for Mac {MAC_OFFLINE_UPDATES} and later").as_str())
        );
        assert!(find(&f, "antivirusEngine.enforcementLevel").is_none());
        assert!(find(&f, "features.offlineDefinitionUpdateVerifySig").is_none());

        // Platform unknown: the Linux rule as a note, applies_to names both.
        let mut u = base("/mnt/mirror/");
        u["antivirusEngine"]["offlineDefinitionUpdateUrl"] = "/mnt/mirror/".into();
        let f = findings(u, None);
        let e = find(&f, "antivirusEngine.enforcementLevel").unwrap();
        assert_eq!(e.severity, Severity::Note);
        let a = find(&f, "antivirusEngine.offlineDefinitionUpdateUrl")
            .map(|x| x.applies_to.clone().unwrap())
            .unwrap();
        assert!(
            a.contains(LINUX_OFFLINE_UPDATES) && a.contains(MAC_OFFLINE_UPDATES),
            "{a}"
        );
    }

    #[test]
    fn linux_settings_carry_real_time_mac_ones_do_not() {
        let s = settings("http://mirror.example/mde");
        assert_eq!(
            s.to_value()["antivirusEngine"]["enforcementLevel"],
            "real_time"
        );
        let mac = EndpointSettings {
            platform: Platform::Mac,
            ..s
        };
        assert!(mac.to_value()["antivirusEngine"]
            .get("enforcementLevel")
            .is_none());
    }

    #[test]
    fn near_misses() {
        assert!(near_miss(MS_SAMPLE_MISSPELLING, FALLBACK_TO_CLOUD));
        assert!(near_miss("offlineDefinitionUpdateURL", OFFLINE_UPDATE_URL));
        assert!(near_miss("antivirusengine", ANTIVIRUS_ENGINE));
        assert!(near_miss("feature", FEATURES));
        assert!(!near_miss("enforcementLevel", OFFLINE_UPDATE));
        assert!(!near_miss("tags", FEATURES));
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn plist_round_trip_and_escaping() {
        let v =
            serde_json::json!({"a & b": "<x> \"y\"", "n": -3, "r": 1.5, "t": true, "l": [1, {}]});
        let text = write_plist(&v).unwrap();
        assert!(text.contains("&lt;x&gt;"));
        assert_eq!(parse_plist(&text, Path::new("p")).unwrap(), v);
    }

    #[test]
    fn bad_plists() {
        for bad in [
            "<plist><dict><key>a</key></dict></plist>",
            "<plist><dict><key>a</key><string>x</string><key>a</key><true/></dict></plist>",
            "<plist><dict><string>x</string></dict></plist>",
            "<plist><integer>x</integer></plist>",
            "<plist><dict>",
            "<html></html>",
            "<plist><string>a</string><string>b</string></plist>",
        ] {
            assert!(parse_plist(bad, Path::new("p")).is_err(), "{bad}");
        }
        let deep = format!(
            "<plist>{}{}</plist>",
            "<array>".repeat(200),
            "</array>".repeat(200)
        );
        assert!(parse_plist(&deep, Path::new("p")).is_err());
    }
}
