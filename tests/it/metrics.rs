//! `status --prometheus` and `import --prometheus` (single bundle and inbox)
//! through the binary, each file read back by a real parser: the Python
//! `prometheus_client` text parser (Debian's python3-prometheus-client),
//! which raises on anything the exposition format does not allow.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::import::Fx;
use crate::support::Run;

const X64: &str = "linux/production/arch_x86_64";
const ARM: &str = "linux/production/arch_arm64";

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The first Python that has `prometheus_client`: the one on PATH, else
/// Debian's (a pyenv or venv python3 on PATH does not see the Debian
/// package). None is a failure, not a skip: `.ci/run` installs it.
fn python() -> &'static str {
    static FOUND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .args(["-c", "import prometheus_client.parser"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect(
                "no python3 with prometheus_client: apt-get install -y python3-prometheus-client",
            )
    })
}

/// Parses an exposition file with prometheus_client and returns every
/// sample, plus each family's type.
fn parse(file: &Path) -> (Vec<Sample>, BTreeMap<String, String>) {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
out = {"samples": [], "types": {}}
for fam in text_string_to_metric_families(text):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let o = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(file)
        .output()
        .expect("python3 is needed by the tests");
    assert!(
        o.status.success(),
        "prometheus_client refused {} (install python3-prometheus-client):\n{}\n--- file ---\n{}",
        file.display(),
        String::from_utf8_lossy(&o.stderr),
        fs::read_to_string(file).unwrap_or_default()
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_string(),
                serde_json::from_value(s[1].clone()).unwrap(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect();
    let types = serde_json::from_value(v["types"].clone()).unwrap();
    (samples, types)
}

/// The value of `name` with exactly `labels`; None when absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == name && *l == want)
        .map(|s| s.2)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} twice");
    found.first().copied()
}

#[track_caller]
fn unit(samples: &[Sample], name: &str, u: &str) -> Option<f64> {
    value(samples, name, &[("unit", u)])
}

fn prom(fx: &Fx) -> PathBuf {
    let d = fx.root.join("textfile");
    fs::create_dir_all(&d).unwrap();
    d.join("gapferry.prom")
}

fn status_prom(fx: &Fx, file: &Path, extra: &[&str]) -> Run {
    let mut c = fx.cmd();
    c.arg("status")
        .arg("--mirror")
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state)
        .arg("--prometheus")
        .arg(file)
        .args(extra);
    fx.run(c)
}

#[test]
fn status_after_imports_then_damage() {
    let fx = Fx::new();
    let k = fx.key("k");
    let rel = fx.releases(&k, &[X64, ARM], 1..=2);
    let bundles: Vec<PathBuf> = rel.iter().map(|r| r.1.clone()).collect();
    fx.import_all(&bundles, &[&k.public]);
    let file = prom(&fx);
    let run = status_prom(&fx, &file, &[]).ok();
    assert_eq!(run.stdout, "", "the metrics file is the report");
    let (s, types) = parse(&file);
    for u in [X64, ARM] {
        assert_eq!(
            value(
                &s,
                "gapferry_unit_info",
                &[
                    ("unit", u),
                    ("definition_version", "1.400.2.0"),
                    ("engine_version", "1.1.2.0")
                ]
            ),
            Some(1.0),
            "{u}"
        );
        assert_eq!(unit(&s, "gapferry_unit_files_match", u), Some(1.0));
        assert_eq!(unit(&s, "gapferry_unit_previous_present", u), Some(1.0));
        assert_eq!(unit(&s, "gapferry_unit_previous_files_match", u), Some(1.0));
        assert_eq!(unit(&s, "gapferry_unit_problems", u), Some(0.0));
        let age = unit(&s, "gapferry_unit_age_seconds", u).unwrap();
        assert!(age >= 0.0, "{age}");
        let imported = unit(&s, "gapferry_unit_imported_timestamp_seconds", u).unwrap();
        let expiry = unit(&s, "gapferry_unit_bundle_expiry_timestamp_seconds", u).unwrap();
        assert!(expiry > imported, "expiry {expiry} after import {imported}");
    }
    assert_eq!(value(&s, "gapferry_mirror_units", &[]), Some(2.0));
    assert_eq!(value(&s, "gapferry_mirror_problem", &[]), Some(0.0));
    assert_eq!(value(&s, "gapferry_files_checked_sha256", &[]), Some(1.0));
    assert_eq!(value(&s, "gapferry_ledger_ok", &[]), Some(1.0));
    assert_eq!(value(&s, "gapferry_ledger_entries_total", &[]), Some(2.0));
    assert_eq!(types["gapferry_ledger_entries"], "counter");
    assert_eq!(types["gapferry_unit_info"], "gauge");
    assert_eq!(value(&s, "gapferry_last_import_success", &[]), Some(1.0));
    assert_eq!(
        value(
            &s,
            "gapferry_import_attempts_last_24h",
            &[("outcome", "imported")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "gapferry_import_attempts_last_24h",
            &[("outcome", "rejected")]
        ),
        Some(0.0)
    );
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        fs::read_dir(file.parent().unwrap()).unwrap().count(),
        1,
        "no temp file left beside the metrics"
    );

    // A served file changes: status exits 1 and the metrics say which unit.
    let zip = fx.mirror.join(X64).join("updates.zip");
    let mut bytes = fs::read(&zip).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&zip, bytes).unwrap();
    let run = status_prom(&fx, &file, &[]);
    assert_eq!(run.code, 1, "{run:#?}");
    let (s, _) = parse(&file);
    assert_eq!(unit(&s, "gapferry_unit_files_match", X64), Some(0.0));
    assert_eq!(unit(&s, "gapferry_unit_problems", X64), Some(1.0));
    assert_eq!(unit(&s, "gapferry_unit_files_match", ARM), Some(1.0));
    assert_eq!(value(&s, "gapferry_mirror_problem", &[]), Some(1.0));
    // --quick compares sizes only, and says so: the flipped byte kept the size.
    status_prom(&fx, &file, &["--quick"]).ok();
    let (s, _) = parse(&file);
    assert_eq!(value(&s, "gapferry_files_checked_sha256", &[]), Some(0.0));
    assert_eq!(unit(&s, "gapferry_unit_files_match", X64), Some(1.0));
}

use std::os::unix::fs::PermissionsExt as _;

#[test]
fn import_refreshes_after_success_and_after_a_rejection() {
    let fx = Fx::new();
    let k = fx.key("k");
    let stranger = fx.key("stranger");
    let rel = fx.releases(&k, &[X64], 1..=1);
    let file = prom(&fx);
    fx.import(
        &rel[0].1,
        &[&k.public],
        &["--quiet", "--prometheus", file.to_str().unwrap()],
    )
    .ok();
    let (s, _) = parse(&file);
    assert_eq!(unit(&s, "gapferry_unit_files_match", X64), Some(1.0));
    assert_eq!(
        unit(&s, "gapferry_unit_previous_present", X64),
        Some(0.0),
        "one import: no n-1"
    );
    assert_eq!(value(&s, "gapferry_last_import_success", &[]), Some(1.0));
    assert_eq!(value(&s, "gapferry_files_checked_sha256", &[]), Some(0.0));

    // A bundle signed only by a key the mirror does not trust is rejected
    // (exit 3); the file is rewritten all the same.
    let dl = fx.download("v9", &[(X64, "1.1.9.0", "1.400.9.0")]);
    let bad = fx.export(&dl, "bad", &[&stranger], &[]);
    let r = fx.import(
        &bad,
        &[&k.public],
        &["--quiet", "--prometheus", file.to_str().unwrap()],
    );
    assert_eq!(r.code, 3, "{r:#?}");
    let (s, _) = parse(&file);
    assert_eq!(value(&s, "gapferry_last_import_success", &[]), Some(0.0));
    let outcome = "rejected";
    assert_eq!(
        value(&s, "gapferry_last_import_outcome", &[("outcome", outcome)]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "gapferry_last_import_outcome",
            &[("outcome", "imported")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "gapferry_import_attempts_last_24h",
            &[("outcome", outcome)]
        ),
        Some(1.0)
    );
    assert!(
        value(&s, "gapferry_last_successful_import_timestamp_seconds", &[]).unwrap()
            <= value(&s, "gapferry_last_import_timestamp_seconds", &[]).unwrap()
    );
    assert_eq!(
        unit(&s, "gapferry_unit_files_match", X64),
        Some(1.0),
        "the served set is untouched"
    );
}

#[test]
fn inbox_pass_writes_metrics() {
    let fx = Fx::new();
    let k = fx.key("k");
    let rel = fx.releases(&k, &[X64], 1..=2);
    let inbox = fx.root.join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    for (_, b) in &rel {
        fs::copy(b, inbox.join(b.file_name().unwrap())).unwrap();
    }
    fs::write(inbox.join("junk.tar.zst"), b"not a bundle").unwrap();
    let file = prom(&fx);
    let mut c = fx.cmd();
    c.arg("import")
        .arg("--inbox")
        .arg(&inbox)
        .args(["--settle", "0s", "--trust"])
        .arg(&k.public)
        .arg("--mirror")
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state)
        .arg("--prometheus")
        .arg(&file);
    let r = fx.run(c);
    assert_eq!(r.code, 3, "junk is rejected; {r:#?}");
    let (s, _) = parse(&file);
    assert_eq!(
        value(
            &s,
            "gapferry_unit_info",
            &[
                ("unit", X64),
                ("definition_version", "1.400.2.0"),
                ("engine_version", "1.1.2.0")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(unit(&s, "gapferry_unit_previous_present", X64), Some(1.0));
    assert_eq!(
        value(
            &s,
            "gapferry_import_attempts_last_24h",
            &[("outcome", "imported")]
        ),
        Some(2.0)
    );
}

#[test]
fn bad_metrics_paths() {
    let fx = Fx::new();
    let k = fx.key("k");
    let rel = fx.releases(&k, &[X64], 1..=1);
    fx.import_all(&[rel[0].1.clone()], &[&k.public]);
    let txt = fx.root.join("gapferry.txt");
    status_prom(&fx, &txt, &[]).fails(2, &["gapferry.txt", ".prom"]);
    assert!(!txt.exists());
    let missing = fx.root.join("no-such-dir/gapferry.prom");
    status_prom(&fx, &missing, &[]).fails(1, &["no-such-dir/gapferry.prom", "writable"]);
    // An import still succeeds when only its metrics cannot be written.
    let dl = fx.download("v5", &[(X64, "1.1.5.0", "1.400.5.0")]);
    let b = fx.export(&dl, "b5", &[&k], &[]);
    let r = fx
        .import(
            &b,
            &[&k.public],
            &["--quiet", "--prometheus", missing.to_str().unwrap()],
        )
        .ok();
    assert!(r.stderr.contains("warning: metrics"), "{r:#?}");
    // --prometheus needs a mirror root, not a --target.
    let mut c = fx.import_cmd(&b, &[&k.public], &["--prometheus", "x.prom"]);
    c.arg("--target").arg(fx.mirror.join("linux/production"));
    fx.run(c).fails(2, &["--prometheus"]);
}

/// node_exporter itself (Debian's prometheus-node-exporter) reading the
/// textfile directory, where it is installed: its textfile collector must
/// read the file without error, skip the temp-file name gapferry writes
/// through, and export the samples. Skipped (with a message) elsewhere; the
/// prometheus_client tests above always run.
#[test]
fn node_exporter_reads_the_file() {
    use std::io::{Read as _, Write as _};
    let exe = "prometheus-node-exporter";
    if Command::new(exe).arg("--version").output().is_err() {
        eprintln!("skipped: {exe} is not installed");
        return;
    }
    let fx = Fx::new();
    let k = fx.key("k");
    let rel = fx.releases(&k, &[X64], 1..=1);
    fx.import_all(&[rel[0].1.clone()], &[&k.public]);
    let file = prom(&fx);
    status_prom(&fx, &file, &[]).ok();
    // A leftover temp file (as a crash between write and rename leaves it)
    // is not read.
    fs::write(
        file.parent().unwrap().join(".gapferry.prom.tmpABC"),
        "garbage{\n",
    )
    .unwrap();
    let port = crate::support::crash::free_port();
    let mut child = Command::new(exe)
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            file.parent().unwrap().display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(body.contains("node_textfile_scrape_error 0"), "{body}");
    assert!(
        body.contains(
            "gapferry_unit_info{definition_version=\"1.400.1.0\",engine_version=\"1.1.1.0\",unit=\"linux/production/arch_x86_64\"} 1"
        ),
        "{body}"
    );
    assert!(body.contains("gapferry_unit_files_match{unit=\"linux/production/arch_x86_64\"} 1"));
}

#[test]
fn an_unreadable_state_still_writes_a_problem() {
    let fx = Fx::new();
    let k = fx.key("k");
    let rel = fx.releases(&k, &[X64], 1..=1);
    fx.import_all(&[rel[0].1.clone()], &[&k.public]);
    let file = prom(&fx);
    status_prom(&fx, &file, &[]).ok();
    fs::write(fx.state.join("state.json"), b"{ not json").unwrap();
    let r = status_prom(&fx, &file, &[]);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stderr.contains("state.json"), "{r:#?}");
    // Not left stale with the healthy picture: the file says "problem".
    let (s, _) = parse(&file);
    assert_eq!(value(&s, "gapferry_mirror_problem", &[]), Some(1.0));
    assert_eq!(value(&s, "gapferry_mirror_units", &[]), Some(0.0));
    assert_eq!(unit(&s, "gapferry_unit_files_match", X64), None);
    assert_eq!(value(&s, "gapferry_ledger_ok", &[]), Some(1.0));
}
