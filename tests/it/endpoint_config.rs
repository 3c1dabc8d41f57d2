//! `gapferry endpoint-config` through the real binary: generated JSON and
//! plist read back key by key (serde_json; quick-xml for the plist, with a
//! reader written here rather than the library's), and `--check` on good,
//! misspelled, wrongly addressed and disabled configurations, each with its
//! exit code and message.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::support::{gapferry, Run};
use quick_xml::events::Event;
use serde::Deserialize;
use serde_json::{json, Value};

fn run(args: &[&str]) -> Run {
    let out = gapferry()
        .arg("endpoint-config")
        .args(args)
        .output()
        .unwrap();
    Run::from_output(out)
}

fn check(path: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["--check", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

/// Defender's JSON settings, read back strictly: an unexpected or misspelled
/// key anywhere fails the test.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Managed {
    #[serde(rename = "antivirusEngine")]
    antivirus_engine: AntivirusEngine,
    features: Features,
    #[serde(rename = "cloudService")]
    cloud_service: CloudService,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct AntivirusEngine {
    #[serde(rename = "offlineDefinitionUpdate")]
    offline_definition_update: String,
    #[serde(rename = "offlineDefinitionUpdateUrl")]
    offline_definition_update_url: String,
    #[serde(rename = "offlineDefinitionUpdateFallbackToCloud")]
    fallback_to_cloud: bool,
    /// Linux only: automatic offline updates need real_time.
    #[serde(rename = "enforcementLevel", default)]
    enforcement_level: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Features {
    #[serde(rename = "offlineDefinitionUpdateVerifySig")]
    verify_sig: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct CloudService {
    #[serde(rename = "automaticDefinitionUpdateEnabled")]
    automatic: bool,
    #[serde(rename = "definitionUpdatesInterval")]
    interval: u64,
}

#[test]
fn json_for_linux_key_by_key() {
    let r = run(&[
        "--url",
        "http://mirror.example:8080/mde",
        "--platform",
        "linux",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m: Managed = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        m,
        Managed {
            antivirus_engine: AntivirusEngine {
                offline_definition_update: "enabled".into(),
                offline_definition_update_url: "http://mirror.example:8080/mde/linux/production/"
                    .into(),
                fallback_to_cloud: false,
                enforcement_level: Some("real_time".into()),
            },
            features: Features {
                verify_sig: "enabled".into()
            },
            cloud_service: CloudService {
                automatic: true,
                interval: 28800
            },
        }
    );
    // Spelled right, and not Microsoft's sample's way.
    assert!(r
        .stdout
        .contains("\"offlineDefinitionUpdateFallbackToCloud\""));
    assert!(!r.stdout.contains("Defintion"));
}

#[test]
fn json_options_and_paths() {
    let r = run(&[
        "--path",
        "/mnt/defender-mirror/",
        "--platform",
        "mac",
        "--ring",
        "preview",
        "--fallback-to-cloud",
        "--interval",
        "3600",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m: Managed = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        m.antivirus_engine.offline_definition_update_url,
        "/mnt/defender-mirror/mac/preview/"
    );
    assert!(m.antivirus_engine.fallback_to_cloud);
    assert_eq!(m.cloud_service.interval, 3600);

    // A URL that already ends at <platform>/<ring> is kept, with its slash.
    let r = run(&[
        "--url",
        "https://mirror.example/mac/preview",
        "--platform",
        "mac",
        "--ring",
        "preview",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["antivirusEngine"]["offlineDefinitionUpdateUrl"],
        "https://mirror.example/mac/preview/"
    );
}

#[test]
fn generation_refusals() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--url", "http://m/linux/preview/", "--platform", "linux"],
            "not at linux/production/",
        ),
        (
            &[
                "--url",
                "http://m/mde/linux/production/arch_x86_64/",
                "--platform",
                "linux",
            ],
            "arch_x86_64",
        ),
        (&["--url", "http://m/x?y=1", "--platform", "linux"], "query"),
        (&["--url", "/srv/mirror", "--platform", "linux"], "--path"),
        (
            &["--path", "relative/dir", "--platform", "linux"],
            "absolute",
        ),
        (&["--url", "http://m/"], "--platform"),
        (&["--platform", "linux"], "--url URL or --path DIR"),
        (
            &[
                "--url",
                "http://m/",
                "--platform",
                "linux",
                "--format",
                "plist",
            ],
            "--platform mac",
        ),
        (
            &[
                "--url",
                "http://m/",
                "--platform",
                "linux",
                "--interval",
                "5",
            ],
            "--interval 5",
        ),
        (
            &["--url", "http://m/", "--path", "/m", "--platform", "linux"],
            "cannot be used with",
        ),
        (
            &[
                "--url",
                "http://m/",
                "--platform",
                "linux",
                "--check",
                "f.json",
            ],
            "cannot be used with",
        ),
    ];
    for (args, needle) in cases {
        let r = run(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

// ------------------------------------------------------------------ plist

/// A plist value as this test reads it.
#[derive(Debug, Clone, PartialEq)]
enum P {
    Dict(BTreeMap<String, P>),
    Array(Vec<P>),
    Str(String),
    Int(i64),
    Bool(bool),
}

impl P {
    fn get(&self, k: &str) -> &P {
        match self {
            P::Dict(d) => d.get(k).unwrap_or_else(|| panic!("no key {k:?} in {d:?}")),
            other => panic!("not a dict: {other:?}"),
        }
    }
    fn keys(&self) -> Vec<&str> {
        match self {
            P::Dict(d) => d.keys().map(String::as_str).collect(),
            other => panic!("not a dict: {other:?}"),
        }
    }
}

/// A deliberately small plist reader over quick-xml events, independent of
/// the library's.
fn read_plist(text: &str) -> P {
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<(String, Vec<P>, Vec<String>)> = Vec::new();
    let mut text_buf = String::new();
    let mut root = None;
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                text_buf.clear();
                stack.push((name, Vec::new(), Vec::new()));
            }
            Event::Empty(e) => {
                let v = match e.name().as_ref() {
                    b"true" => P::Bool(true),
                    b"false" => P::Bool(false),
                    other => panic!("unexpected <{}/>", String::from_utf8_lossy(other)),
                };
                stack.last_mut().unwrap().1.push(v);
            }
            Event::Text(t) => text_buf.push_str(&t.unescape().unwrap()),
            Event::End(_) => {
                let (name, children, keys) = stack.pop().unwrap();
                let v = match name.as_str() {
                    "plist" => {
                        assert_eq!(children.len(), 1);
                        root = Some(children.into_iter().next().unwrap());
                        continue;
                    }
                    "key" => {
                        stack.last_mut().unwrap().2.push(text_buf.clone());
                        continue;
                    }
                    "string" => P::Str(text_buf.clone()),
                    "integer" => P::Int(text_buf.parse().unwrap()),
                    "array" => P::Array(children),
                    "dict" => {
                        assert_eq!(keys.len(), children.len(), "{keys:?}");
                        let mut d = BTreeMap::new();
                        for (k, v) in keys.into_iter().zip(children) {
                            assert!(d.insert(k, v).is_none(), "duplicate key");
                        }
                        P::Dict(d)
                    }
                    other => panic!("unexpected <{other}>"),
                };
                stack.last_mut().unwrap().1.push(v);
            }
            Event::Eof => break,
            Event::Decl(_) | Event::DocType(_) | Event::Comment(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    root.expect("a <plist> element")
}

#[test]
fn plist_profile_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("defender.mobileconfig");
    let r = run(&[
        "--url",
        "https://mirror.example/mde?",
        "--platform",
        "mac",
        "--format",
        "plist",
    ]);
    assert_eq!(r.code, 2, "a '?' in the URL is refused: {}", r.stderr);

    let r = run(&[
        "--url",
        "https://mirror.example/a&b",
        "--platform",
        "mac",
        "--format",
        "plist",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    assert!(text.contains("<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\""));
    assert!(text.contains("a&amp;b"));

    let profile = read_plist(&text);
    assert_eq!(profile.get("PayloadType"), &P::Str("Configuration".into()));
    assert_eq!(profile.get("PayloadScope"), &P::Str("System".into()));
    assert_eq!(profile.get("PayloadVersion"), &P::Int(1));
    assert_eq!(
        profile.get("PayloadIdentifier"),
        &P::Str("org.gapferry.wdav.offline-definition-updates".into())
    );
    let P::Array(content) = profile.get("PayloadContent") else {
        panic!("PayloadContent is not an array");
    };
    assert_eq!(content.len(), 1);
    let wdav = &content[0];
    assert_eq!(
        wdav.get("PayloadType"),
        &P::Str("com.microsoft.wdav".into())
    );
    assert_eq!(wdav.get("PayloadEnabled"), &P::Bool(true));
    for uuid in [profile.get("PayloadUUID"), wdav.get("PayloadUUID")] {
        let P::Str(u) = uuid else { panic!() };
        let groups: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{u}");
    }
    assert_ne!(profile.get("PayloadUUID"), wdav.get("PayloadUUID"));

    let settings: Vec<&str> = wdav
        .keys()
        .into_iter()
        .filter(|k| !k.starts_with("Payload"))
        .collect();
    assert_eq!(settings, ["antivirusEngine", "cloudService", "features"]);
    let av = wdav.get("antivirusEngine");
    assert_eq!(
        av.keys(),
        [
            "offlineDefinitionUpdate",
            "offlineDefinitionUpdateFallbackToCloud",
            "offlineDefinitionUpdateUrl"
        ]
    );
    assert_eq!(av.get("offlineDefinitionUpdate"), &P::Str("enabled".into()));
    assert_eq!(
        av.get("offlineDefinitionUpdateUrl"),
        &P::Str("https://mirror.example/a&b/mac/production/".into())
    );
    assert_eq!(
        av.get("offlineDefinitionUpdateFallbackToCloud"),
        &P::Bool(false)
    );
    let features = wdav.get("features");
    assert_eq!(features.keys(), ["offlineDefinitionUpdateVerifySig"]);
    assert_eq!(
        features.get("offlineDefinitionUpdateVerifySig"),
        &P::Str("enabled".into())
    );
    let cloud = wdav.get("cloudService");
    assert_eq!(
        cloud.keys(),
        [
            "automaticDefinitionUpdateEnabled",
            "definitionUpdatesInterval"
        ]
    );
    assert_eq!(
        cloud.get("automaticDefinitionUpdateEnabled"),
        &P::Bool(true)
    );
    assert_eq!(cloud.get("definitionUpdatesInterval"), &P::Int(28800));

    // The same settings give the same file (stable UUIDs).
    let again = run(&[
        "--url",
        "https://mirror.example/a&b",
        "--platform",
        "mac",
        "--format",
        "plist",
    ]);
    assert_eq!(again.stdout, text);

    // And the generated profile passes --check.
    let r = check(&out, &["--platform", "mac", "--ring", "production"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("ok (plist"), "{}", r.stderr);
}

// ------------------------------------------------------------------ --check

/// The `--check --json` document, read back strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckJson {
    schema_version: u32,
    ok: bool,
    error: Option<crate::support::json::Error>,
    file: String,
    format: String,
    problem_count: usize,
    note_count: usize,
    /// Deprecated names of the counts (docs/JSON.md).
    problems: usize,
    notes: usize,
    update_url: Option<String>,
    findings: Vec<FindingJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingJson {
    severity: String,
    key: String,
    message: String,
    fix: Option<String>,
    applies_to: Option<String>,
}

fn check_json(path: &Path, extra: &[&str]) -> (i32, CheckJson) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let r = check(path, &args);
    let doc: CheckJson = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", r.stdout, r.stderr));
    (r.code, doc)
}

fn write(dir: &Path, name: &str, value: &Value) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, serde_json::to_string_pretty(value).unwrap()).unwrap();
    p
}

fn good() -> Value {
    json!({
        "antivirusEngine": {
            "enforcementLevel": "real_time",
            "offlineDefinitionUpdate": "enabled",
            "offlineDefinitionUpdateUrl": "http://mirror.example/linux/production/",
            "offlineDefinitionUpdateFallbackToCloud": false
        },
        "features": { "offlineDefinitionUpdateVerifySig": "enabled" },
        "cloudService": {
            "enabled": false,
            "automaticDefinitionUpdateEnabled": true,
            "definitionUpdatesInterval": 28800
        }
    })
}

#[test]
fn check_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mdatp_managed.json", &good());
    let before = fs::read(&p).unwrap();
    let (code, doc) = check_json(&p, &["--platform", "linux"]);
    assert_eq!(code, 0);
    assert!(doc.ok);
    assert_eq!(doc.format, "json");
    assert_eq!(doc.problems, 0);
    // The one note: the signature setting Defender for Linux deprecated.
    assert_eq!(doc.notes, 1, "{:?}", doc.findings);
    assert_eq!(
        doc.findings[0].key,
        "features.offlineDefinitionUpdateVerifySig"
    );
    assert!(doc.findings[0]
        .message
        .contains("deprecated since Defender for Linux 101.26062.0005"));
    assert_eq!(
        doc.findings[0].applies_to.as_deref(),
        Some("Defender for Linux 101.24022.0001 up to, not including, 101.26062.0005 (ignored from then on)")
    );
    assert_eq!(
        doc.update_url.as_deref(),
        Some("http://mirror.example/linux/production/")
    );
    assert!(doc.file.ends_with("mdatp_managed.json"));
    // Human output: one ok line on stderr.
    let r = check(&p, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("ok (json, 1 note(s))"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("    applies to: Defender for Linux 101.24022.0001 up to"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    assert_eq!(fs::read(&p).unwrap(), before, "--check never writes");

    // What gapferry generates checks clean too.
    let gen = run(&["--url", "http://m.example/", "--platform", "linux"]);
    let p = dir.path().join("generated.json");
    fs::write(&p, gen.stdout).unwrap();
    let (code, doc) = check_json(&p, &["--platform", "linux", "--ring", "production"]);
    assert_eq!(code, 0, "{:?}", doc.findings);
}

#[test]
fn check_flags_microsofts_misspelling_and_near_misses() {
    let dir = tempfile::tempdir().unwrap();
    // Microsoft's sample, as published.
    let mut v = good();
    let av = v["antivirusEngine"].as_object_mut().unwrap();
    av.remove("offlineDefinitionUpdateFallbackToCloud");
    av.insert("offlineDefintionUpdateFallbackToCloud".into(), json!(false));
    let p = write(dir.path(), "sample.json", &v);
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 1);
    assert!(!doc.ok && doc.schema_version == 1);
    assert_eq!(doc.problem_count, 1, "{:?}", doc.findings);
    assert_eq!(doc.problems, doc.problem_count);
    assert_eq!(doc.notes, doc.note_count);
    assert_eq!(doc.error.as_ref().map(|e| e.exit_code), Some(1));
    let f = &doc.findings[0];
    assert_eq!(f.severity, "problem");
    assert_eq!(
        f.key,
        "antivirusEngine.offlineDefintionUpdateFallbackToCloud"
    );
    assert!(
        f.message.contains("Microsoft's own sample"),
        "{}",
        f.message
    );
    assert_eq!(
        f.fix.as_deref(),
        Some("rename it to \"offlineDefinitionUpdateFallbackToCloud\"")
    );

    // The human form names the file, the key and the fix.
    let r = check(&p, &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(
            "sample.json: problem: antivirusEngine.offlineDefintionUpdateFallbackToCloud"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("fix: rename it to \"offlineDefinitionUpdateFallbackToCloud\""),
        "{}",
        r.stderr
    );

    // Other near misses: wrong case, a dropped letter, a wrong section, a
    // flattened key, a misspelled section.
    let v = json!({
        "antivirusEngine": {
            "offlineDefinitionUpdate": "enabled",
            "offlineDefinitionUpdateURL": "http://m/linux/production/",
            "offlineDefinitionUpdateUrl": "http://m/linux/production/",
            "offlineDefinitionUpdateVerifySig": "enabled"
        },
        "cloudservice": { "automaticDefinitionUpdateEnabled": true },
        "features": { "offlineDefinitonUpdateVerifySig": "enabled" },
        "cloudService.definitionUpdatesInterval": 3600
    });
    let p = write(dir.path(), "typos.json", &v);
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 1);
    let keys: Vec<&str> = doc
        .findings
        .iter()
        .filter(|f| f.severity == "problem")
        .map(|f| f.key.as_str())
        .collect();
    for want in [
        "antivirusEngine.offlineDefinitionUpdateURL",
        "antivirusEngine.offlineDefinitionUpdateVerifySig",
        "cloudservice",
        "features.offlineDefinitonUpdateVerifySig",
        "cloudService.definitionUpdatesInterval",
    ] {
        assert!(keys.contains(&want), "{want} not flagged: {keys:?}");
    }
    let misplaced = doc
        .findings
        .iter()
        .find(|f| f.key == "antivirusEngine.offlineDefinitionUpdateVerifySig")
        .unwrap();
    assert!(misplaced.message.contains("belongs in \"features\""));
    // A Linux URL and no enforcementLevel: Defender for Linux defaults to
    // passive and never updates on its own.
    assert!(
        keys.contains(&"antivirusEngine.enforcementLevel"),
        "{keys:?}"
    );
}

#[test]
fn check_flags_wrong_or_missing_url() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, Value, &[&str], &str)] = &[
        (
            "root.json",
            json!("http://mirror.example/"),
            &[],
            "does not end at <platform>/<ring>/",
        ),
        (
            "arch.json",
            json!("http://mirror.example/linux/production/arch_x86_64/"),
            &[],
            "goes past the ring folder",
        ),
        (
            "slash.json",
            json!("http://mirror.example/linux/production"),
            &[],
            "does not end with '/'",
        ),
        (
            "platform.json",
            json!("http://mirror.example/mac/production/"),
            &["--platform", "linux"],
            "for mac, but this file configures linux",
        ),
        (
            "ring.json",
            json!("http://mirror.example/linux/preview/"),
            &["--ring", "production"],
            "is the preview ring, not production",
        ),
        (
            "scheme.json",
            json!("ftp://mirror.example/linux/production/"),
            &[],
            "only http://, https:// and file://",
        ),
        ("number.json", json!(42), &[], "not a string"),
    ];
    for (name, url, extra, needle) in cases {
        let mut v = good();
        v["antivirusEngine"]["offlineDefinitionUpdateUrl"] = url.clone();
        let p = write(dir.path(), name, &v);
        let (code, doc) = check_json(&p, extra);
        assert_eq!(code, 1, "{name}");
        let f = doc
            .findings
            .iter()
            .find(|f| f.key == "antivirusEngine.offlineDefinitionUpdateUrl")
            .unwrap_or_else(|| panic!("{name}: {:?}", doc.findings));
        assert_eq!(f.severity, "problem");
        assert!(f.message.contains(needle), "{name}: {}", f.message);
        assert!(f.fix.is_some(), "{name}");
    }

    // Missing altogether.
    let mut v = good();
    v["antivirusEngine"]
        .as_object_mut()
        .unwrap()
        .remove("offlineDefinitionUpdateUrl");
    let p = write(dir.path(), "missing.json", &v);
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 1);
    assert!(
        doc.findings[0].message.contains("missing"),
        "{:?}",
        doc.findings
    );
    assert_eq!(doc.update_url, None);

    // A linux URL in a macOS profile.
    let gen = run(&[
        "--url",
        "http://m/",
        "--platform",
        "mac",
        "--format",
        "plist",
    ]);
    let text = gen.stdout.replace("/mac/production/", "/linux/production/");
    let p = dir.path().join("wrong.mobileconfig");
    fs::write(&p, text).unwrap();
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 1);
    assert_eq!(doc.format, "plist");
    assert!(
        doc.findings[0].message.contains("configures mac"),
        "{:?}",
        doc.findings
    );
}

#[test]
fn check_flags_disabled_offline_updates() {
    let dir = tempfile::tempdir().unwrap();
    for (name, value, needle) in [
        ("disabled.json", Some(json!("disabled")), "is \"disabled\""),
        ("bool.json", Some(json!(true)), "is true"),
        ("absent.json", None, "missing"),
    ] {
        let mut v = good();
        let av = v["antivirusEngine"].as_object_mut().unwrap();
        match value {
            Some(x) => {
                av.insert("offlineDefinitionUpdate".into(), x);
            }
            None => {
                av.remove("offlineDefinitionUpdate");
            }
        }
        let p = write(dir.path(), name, &v);
        let (code, doc) = check_json(&p, &[]);
        assert_eq!(code, 1, "{name}");
        assert_eq!(doc.problems, 1, "{name}: {:?}", doc.findings);
        let f = &doc.findings[0];
        assert_eq!(f.key, "antivirusEngine.offlineDefinitionUpdate");
        assert!(f.message.contains(needle), "{name}: {}", f.message);
        assert!(f.message.contains("disabled"), "{name}: {}", f.message);
    }

    // Signature checks off and automatic updates off are problems too;
    // fallback to the cloud is only a note.
    let mut v = good();
    v["features"]["offlineDefinitionUpdateVerifySig"] = json!("disabled");
    v["cloudService"]["automaticDefinitionUpdateEnabled"] = json!(false);
    v["antivirusEngine"]["offlineDefinitionUpdateFallbackToCloud"] = json!(true);
    let p = write(dir.path(), "others.json", &v);
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 1);
    assert_eq!(doc.problems, 2, "{:?}", doc.findings);
    assert_eq!(doc.notes, 1);
    assert_eq!(doc.findings[2].severity, "note");
    assert_eq!(
        doc.findings[2].key,
        "antivirusEngine.offlineDefinitionUpdateFallbackToCloud"
    );

    let mut v = good();
    v["antivirusEngine"]["offlineDefinitionUpdateFallbackToCloud"] = json!(true);
    let p = write(dir.path(), "note-only.json", &v);
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 0, "notes alone do not fail: {:?}", doc.findings);
    assert!(doc.ok);
}

#[test]
fn check_reads_plain_plists_and_old_style_profiles() {
    let dir = tempfile::tempdir().unwrap();
    // A plain com.microsoft.wdav.plist with Microsoft's misspelling.
    let plain = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>antivirusEngine</key>
    <dict>
        <key>offlineDefinitionUpdate</key>
        <string>enabled</string>
        <key>offlineDefinitionUpdateUrl</key>
        <string>http://mirror.example/mac/production/</string>
        <key>offlineDefintionUpdateFallbackToCloud</key>
        <false/>
    </dict>
    <key>features</key>
    <dict>
        <key>offlineDefinitionUpdateVerifySig</key>
        <string>enabled</string>
    </dict>
</dict>
</plist>
"#;
    let p = dir.path().join("com.microsoft.wdav.plist");
    fs::write(&p, plain).unwrap();
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 1);
    assert_eq!(doc.format, "plist");
    assert_eq!(doc.problems, 1, "{:?}", doc.findings);
    assert_eq!(
        doc.findings[0].key,
        "antivirusEngine.offlineDefintionUpdateFallbackToCloud"
    );

    // The older ManagedClient form, clean.
    let old = r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
  <key>PayloadContent</key><array><dict>
    <key>PayloadType</key><string>com.apple.ManagedClient.preferences</string>
    <key>PayloadContent</key><dict>
      <key>com.microsoft.wdav</key><dict>
        <key>Forced</key><array><dict>
          <key>mcx_preference_settings</key><dict>
            <key>antivirusEngine</key><dict>
              <key>offlineDefinitionUpdate</key><string>enabled</string>
              <key>offlineDefinitionUpdateUrl</key><string>/Volumes/mirror/mac/preview/</string>
            </dict>
            <key>features</key><dict>
              <key>offlineDefinitionUpdateVerifySig</key><string>enabled</string>
            </dict>
          </dict>
        </dict></array>
      </dict>
    </dict>
  </dict></array>
  <key>PayloadType</key><string>Configuration</string>
</dict></plist>"#;
    let p = dir.path().join("old.mobileconfig");
    fs::write(&p, old).unwrap();
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 0, "{:?}", doc.findings);
    assert_eq!(
        doc.update_url.as_deref(),
        Some("/Volumes/mirror/mac/preview/")
    );
}

#[test]
fn check_unusable_input_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[u8], &str)] = &[
        ("broken.json", b"{\"antivirusEngine\": {", "not valid JSON"),
        ("page.html", b"<html><body>sign in</body></html>", "not <plist>"),
        ("bin.plist", b"bplist00\x01\x02", "plutil -convert xml1"),
        ("text.txt", b"offlineDefinitionUpdate=enabled", "neither JSON nor an XML plist"),
        ("empty.json", b"", "empty"),
        (
            "other.mobileconfig",
            b"<plist><dict><key>PayloadContent</key><array><dict><key>PayloadType</key><string>com.apple.wifi.managed</string></dict></array></dict></plist>",
            "none of type com.microsoft.wdav",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.path().join(name);
        fs::write(&p, bytes).unwrap();
        let r = check(&p, &[]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{name}: {}", r.stderr);
        assert!(r.stderr.contains(name), "{name} not named: {}", r.stderr);
    }
    let r = check(&dir.path().join("nope.json"), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot read") && r.stderr.contains("nope.json"));
}

#[test]
fn check_names_the_agent_versions_a_setting_applies_to() {
    let dir = tempfile::tempdir().unwrap();
    // macOS without the fallback key: the schema's default is true.
    let mac = json!({
        "antivirusEngine": {
            "offlineDefinitionUpdate": "enabled",
            "offlineDefinitionUpdateUrl": "http://mirror.example/mac/production/"
        },
        "features": { "offlineDefinitionUpdateVerifySig": "enabled" }
    });
    let p = write(dir.path(), "mac.json", &mac);
    let (code, doc) = check_json(&p, &[]);
    assert_eq!(code, 0, "{:?}", doc.findings);
    assert_eq!(doc.notes, 1, "{:?}", doc.findings);
    let f = &doc.findings[0];
    assert_eq!(
        f.key,
        "antivirusEngine.offlineDefinitionUpdateFallbackToCloud"
    );
    assert!(f.message.contains("defaults it to true"), "{}", f.message);
    assert_eq!(
        f.applies_to.as_deref(),
        Some("Defender for Mac 101.25012.0003 and later")
    );

    // Linux in passive mode: a problem, naming why and the way out.
    let mut linux = good();
    linux["antivirusEngine"]["enforcementLevel"] = json!("passive");
    let p = write(dir.path(), "passive.json", &linux);
    let r = check(&p, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("problem: antivirusEngine.enforcementLevel: is \"passive\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("mdatp definitions update"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("applies to: Defender for Linux (automatic offline updates need real_time"),
        "{}",
        r.stderr
    );
}
