//! `endpoint-config --platform windows`: the client settings that point
//! Microsoft Defender Antivirus on Windows at a gapferry share, as
//! PowerShell (`Set-MpPreference`) and as Group Policy (names, registry
//! values), and the check of a client's `Get-MpPreference` output saved as
//! text (`Format-List`, the default) or JSON (`ConvertTo-Json`).
//!
//! The share is named without an architecture folder: the client appends
//! `x64`/`x86` itself, so `\\server\share\x64` as the source makes it look
//! for `\\server\share\x64\x64\mpam-fe.exe`. It never touches a client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::WinArch;

/// The GPO folder of both settings.
pub const GPO_FOLDER: &str = "Computer Configuration > Administrative Templates > Windows Components > Microsoft Defender Antivirus > Security Intelligence Updates";
/// The registry key Group Policy writes them to.
pub const POLICY_KEY: &str = r"HKLM\SOFTWARE\Policies\Microsoft\Windows Defender\Signature Updates";
/// The fallback-order source name of file shares.
pub const FILE_SHARES: &str = "FileShares";
/// Largest preference file read.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Why a share path cannot be used (exit 2).
pub fn check_share(share: &str) -> Result<(), String> {
    if !share.starts_with(r"\\")
        || share.len() < 5
        || share[2..].split('\\').filter(|s| !s.is_empty()).count() < 2
    {
        return Err(format!(
            "--share {share:?} is not a UNC path like \\\\server\\share (quote it in the shell: '\\\\server\\share')"
        ));
    }
    if share.contains('|') || share.contains('"') || share.chars().any(char::is_control) {
        return Err(format!(
            "--share {share:?} contains | \" or a control character"
        ));
    }
    if let Some(arch) = arch_suffix(share) {
        return Err(format!(
            "--share {share:?} ends with the architecture folder {arch:?}: name the share itself; clients append {arch} themselves"
        ));
    }
    Ok(())
}

/// The architecture folder a source path ends with, if any.
fn arch_suffix(path: &str) -> Option<&'static str> {
    let last = path.trim_end_matches('\\').rsplit('\\').next()?;
    WinArch::ALL
        .iter()
        .map(|a| a.as_str())
        .find(|a| last.eq_ignore_ascii_case(a))
}

/// The settings text for `share`: PowerShell lines, then the Group Policy
/// equivalents, as comments so that the whole text can be run.
pub fn settings_text(share: &str) -> String {
    format!(
        "# Microsoft Defender Antivirus on Windows: security intelligence from {share}\n\
         # (clients read {share}\\x64\\mpam-fe.exe or {share}\\x86\\mpam-fe.exe themselves).\n\
         # Run as administrator on each client, or use the Group Policy settings below.\n\
         Set-MpPreference -SignatureDefinitionUpdateFileSharesSources '{share}'\n\
         Set-MpPreference -SignatureFallbackOrder '{FILE_SHARES}'\n\
         # Check: Get-MpPreference | Select-Object SignatureDefinitionUpdateFileSharesSources, SignatureFallbackOrder\n\
         # then: Update-MpSignature -UpdateSource FileShares\n\
         #\n\
         # Group Policy ({GPO_FOLDER}):\n\
         #   Define file shares for downloading security intelligence updates: Enabled, {share}\n\
         #   Define the order of sources for downloading security intelligence updates: Enabled, {FILE_SHARES}\n\
         # Registry values those policies write ({POLICY_KEY}):\n\
         #   DefinitionUpdateFileSharesSources (REG_SZ) = {share}\n\
         #   FallbackOrder (REG_SZ) = {FILE_SHARES}\n"
    )
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Problem,
    Note,
}

/// One thing `--check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The preference it is about.
    pub key: String,
    pub message: String,
    pub fix: Option<String>,
}

/// The result of checking a preference file.
#[derive(Debug, Clone, Serialize)]
pub struct WinCheckReport {
    pub file: PathBuf,
    /// "text" or "json".
    pub format: &'static str,
    /// No problem found (the `--json` envelope's `ok` says it there).
    #[serde(skip)]
    pub ok: bool,
    pub problem_count: usize,
    pub note_count: usize,
    /// Deprecated name of `problem_count` (docs/JSON.md).
    pub problems: usize,
    /// Deprecated name of `note_count` (docs/JSON.md).
    pub notes: usize,
    /// The file-share sources, as the client has them.
    pub share_sources: Vec<String>,
    pub fallback_order: Vec<String>,
    /// Problems first, then notes.
    pub findings: Vec<Finding>,
}

/// A preference file that cannot be read (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PrefFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// Decodes text PowerShell wrote: UTF-16LE with a BOM (Windows
/// PowerShell's `>`), UTF-8 with or without a BOM.
fn decode(bytes: &[u8]) -> Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16(&units).map_err(|e| format!("not UTF-16 text: {e}"));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 or UTF-16 text: {e}"))?;
    Ok(text.trim_start_matches('\u{feff}').to_string())
}

/// Reads `Get-MpPreference` output: `Name : Value` lines, or a JSON object
/// (an array of one object is accepted too). Values are kept as text.
fn parse_prefs(text: &str) -> Result<(&'static str, BTreeMap<String, String>), String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = match &v {
            serde_json::Value::Array(a) if a.len() == 1 => a[0].as_object(),
            other => other.as_object(),
        }
        .ok_or("JSON that is not one Get-MpPreference object")?;
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            let s = match v {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join("|"),
                other => other.to_string(),
            };
            out.insert(k.to_ascii_lowercase(), s);
        }
        return Ok(("json", out));
    }
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if !k.is_empty() && !k.contains(' ') {
                // `{a, b}` is how Format-List shows an array.
                let v = v.trim().trim_start_matches('{').trim_end_matches('}');
                out.insert(k.to_ascii_lowercase(), v.replace(", ", "|"));
            }
        }
    }
    if out.is_empty() {
        return Err("no `Name : Value` lines: save `Get-MpPreference` or `Get-MpPreference | ConvertTo-Json` to a file".into());
    }
    Ok(("text", out))
}

fn split_list(v: &str) -> Vec<String> {
    v.trim_matches(|c| c == '{' || c == '}')
        .split('|')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks a saved `Get-MpPreference` output; `expect_share` is the share
/// the sources must list, when given.
pub fn check_file(
    path: &Path,
    expect_share: Option<&str>,
) -> Result<WinCheckReport, PrefFileError> {
    use std::io::Read;
    let err = |reason: String| PrefFileError {
        path: path.to_path_buf(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(err(
            "larger than 4 MiB; is this Get-MpPreference output?".into()
        ));
    }
    let text = decode(&bytes).map_err(err)?;
    let (format, prefs) = parse_prefs(&text).map_err(err)?;
    Ok(check_prefs(path, format, &prefs, expect_share))
}

fn check_prefs(
    path: &Path,
    format: &'static str,
    prefs: &BTreeMap<String, String>,
    expect_share: Option<&str>,
) -> WinCheckReport {
    let mut findings = Vec::new();
    let mut add = |severity, key: &str, message: String, fix: Option<String>| {
        findings.push(Finding {
            severity,
            key: key.to_string(),
            message,
            fix,
        })
    };
    const SOURCES: &str = "SignatureDefinitionUpdateFileSharesSources";
    const ORDER: &str = "SignatureFallbackOrder";
    let set_share = |s: &str| {
        format!("Set-MpPreference -{SOURCES} '{s}' (or the Group Policy in `gapferry endpoint-config --platform windows --share {s}`)")
    };
    let share_hint = expect_share.unwrap_or(r"\\server\share");
    let sources = prefs
        .get(&SOURCES.to_ascii_lowercase())
        .map(|v| split_list(v))
        .unwrap_or_default();
    let order = prefs
        .get(&ORDER.to_ascii_lowercase())
        .map(|v| split_list(v))
        .unwrap_or_default();
    if !prefs.contains_key(&SOURCES.to_ascii_lowercase())
        && !prefs.contains_key(&ORDER.to_ascii_lowercase())
    {
        add(
            Severity::Problem,
            SOURCES,
            format!(
                "neither {SOURCES} nor {ORDER} is in the file; is this Get-MpPreference output?"
            ),
            None,
        );
    } else if sources.is_empty() {
        add(
            Severity::Problem,
            SOURCES,
            "no file share is set: the client never looks at the share".into(),
            Some(set_share(share_hint)),
        );
    }
    for s in &sources {
        if let Some(arch) = arch_suffix(s) {
            let parent = s.trim_end_matches('\\');
            let parent = &parent[..parent.len() - arch.len()];
            let parent = parent.trim_end_matches('\\');
            add(
                Severity::Problem,
                SOURCES,
                format!(
                    "{s} ends with the architecture folder {arch}: the client appends it itself and looks for {s}\\{arch}\\mpam-fe.exe"
                ),
                Some(set_share(parent)),
            );
        } else if !s.starts_with(r"\\") {
            add(
                Severity::Problem,
                SOURCES,
                format!("{s} is not a UNC path (\\\\server\\share)"),
                Some(set_share(share_hint)),
            );
        }
    }
    if let Some(want) = expect_share {
        let norm = |s: &str| s.trim_end_matches('\\').to_ascii_lowercase();
        if !sources.is_empty() && !sources.iter().any(|s| norm(s) == norm(want)) {
            add(
                Severity::Problem,
                SOURCES,
                format!(
                    "the sources ({}) do not include {want}",
                    sources.join(" | ")
                ),
                Some(set_share(want)),
            );
        }
    }
    match order.iter().position(|o| o.eq_ignore_ascii_case(FILE_SHARES)) {
        None => add(
            Severity::Problem,
            ORDER,
            if order.is_empty() {
                format!("not set: the default order does not include {FILE_SHARES}, so the share is never used")
            } else {
                format!("{} does not include {FILE_SHARES}, so the share is never used", order.join("|"))
            },
            Some(format!("Set-MpPreference -{ORDER} '{FILE_SHARES}'")),
        ),
        Some(0) => {}
        Some(_) => add(
            Severity::Note,
            ORDER,
            format!(
                "{} tries other sources before {FILE_SHARES}; on a disconnected network each of them must fail first, which delays updates",
                order.join("|")
            ),
            Some(format!("Set-MpPreference -{ORDER} '{FILE_SHARES}'")),
        ),
    }
    findings.sort_by_key(|f| f.severity != Severity::Problem);
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    WinCheckReport {
        file: path.to_path_buf(),
        format,
        ok: problems == 0,
        problem_count: problems,
        note_count: findings.len() - problems,
        problems,
        notes: findings.len() - problems,
        share_sources: sources,
        fallback_order: order,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, share: Option<&str>) -> WinCheckReport {
        let (format, prefs) = parse_prefs(text).unwrap();
        check_prefs(Path::new("p.txt"), format, &prefs, share)
    }

    #[test]
    fn shares_are_checked() {
        assert!(check_share(r"\\srv\defender").is_ok());
        assert!(check_share(r"\\srv\defender\x64")
            .unwrap_err()
            .contains("architecture folder"));
        assert!(check_share(r"C:\defender").is_err());
        assert!(check_share(r"\\srv").is_err());
        assert!(check_share(r"\\srv\a|\\b\c").is_err());
    }

    #[test]
    fn good_text_and_json_pass() {
        let text = "AttackSurfaceReductionRules_Ids : \r\nSignatureDefinitionUpdateFileSharesSources : \\\\srv\\defender\r\nSignatureFallbackOrder : FileShares\r\n";
        let r = check(text, Some(r"\\srv\defender"));
        assert!(r.ok, "{r:?}");
        assert_eq!(r.format, "text");
        let json = r#"{"SignatureDefinitionUpdateFileSharesSources": "\\\\srv\\defender", "SignatureFallbackOrder": "FileShares"}"#;
        let r = check(json, None);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.share_sources, vec![r"\\srv\defender".to_string()]);
    }

    #[test]
    fn mistakes_are_named() {
        let text = "SignatureDefinitionUpdateFileSharesSources : \\\\srv\\defender\\x64\nSignatureFallbackOrder : MicrosoftUpdateServer|MMPC\n";
        let r = check(text, None);
        assert_eq!(r.problems, 2, "{r:?}");
        assert!(
            r.findings[0].message.contains("architecture folder x64"),
            "{r:?}"
        );
        assert!(
            r.findings[0]
                .fix
                .as_deref()
                .unwrap()
                .contains(r"'\\srv\defender'"),
            "{r:?}"
        );
        assert!(r.findings[1]
            .message
            .contains("does not include FileShares"));
        let r = check(
            "SignatureDefinitionUpdateFileSharesSources : \nSignatureFallbackOrder : MMPC|FileShares\n",
            None,
        );
        assert_eq!((r.problems, r.notes), (1, 1), "{r:?}");
        let r = check(
            "SignatureDefinitionUpdateFileSharesSources : \\\\a\\b\nSignatureFallbackOrder : FileShares\n",
            Some(r"\\srv\defender"),
        );
        assert!(
            !r.ok && r.findings[0].message.contains(r"\\srv\defender"),
            "{r:?}"
        );
    }

    #[test]
    fn utf16_with_bom_is_read() {
        let text = "SignatureFallbackOrder : FileShares\r\n";
        let mut bytes = vec![0xff, 0xfe];
        bytes.extend(text.encode_utf16().flat_map(|u| u.to_le_bytes()));
        assert_eq!(decode(&bytes).unwrap(), text);
    }

    #[test]
    fn settings_name_the_share_without_arch() {
        let t = settings_text(r"\\srv\defender");
        assert!(t.contains(
            r"Set-MpPreference -SignatureDefinitionUpdateFileSharesSources '\\srv\defender'"
        ));
        assert!(t.contains("Set-MpPreference -SignatureFallbackOrder 'FileShares'"));
        assert!(t.contains("DefinitionUpdateFileSharesSources (REG_SZ)"));
    }
}
