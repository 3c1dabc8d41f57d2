//! Every reporting command's `--json` output, on success and on failure,
//! validated against its JSON Schema in docs/schemas (docs/JSON.md) with an
//! independent validator (`boon`, draft 2020-12). The schemas deny unknown
//! fields and require the documented ones, so a field renamed, dropped or
//! added without its schema fails here. Each document also keeps the
//! envelope's promises: `ok` is true exactly when the exit code is 0, and a
//! failure's `error.exit_code` is the process's exit code.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use gapferry::windows::pe_fake::{parse_version, FakePackage};
use gapferry::windows::WinArch;

use support::fetch_mock::{Mock, Release};
use support::win_standin::StandIn;
use support::{Run, Sandbox};

/// The schema files, compiled once, and which of them the tests used.
struct Checker {
    schemas: boon::Schemas,
    index: BTreeMap<String, boon::SchemaIndex>,
    used: Mutex<BTreeSet<String>>,
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas")
}

impl Checker {
    fn new() -> Checker {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        let mut index = BTreeMap::new();
        let mut names = Vec::new();
        for e in fs::read_dir(schema_dir()).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            assert!(name.ends_with(".json"), "{name}: not a schema file");
            let v: Value = serde_json::from_slice(&fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
            let loc = format!("file://{}", p.display());
            compiler.add_resource(&loc, v).unwrap();
            names.push((name, loc));
        }
        for (name, loc) in names {
            let i = compiler
                .compile(&loc, &mut schemas)
                .unwrap_or_else(|e| panic!("{name}: not a valid schema: {e:#}"));
            index.insert(name, i);
        }
        Checker {
            schemas,
            index,
            used: Mutex::new(BTreeSet::new()),
        }
    }

    /// Whether `doc` validates against `schema`, and why not.
    fn validate(&self, schema: &str, doc: &Value) -> Result<(), String> {
        self.used.lock().unwrap().insert(schema.to_string());
        let i = *self
            .index
            .get(schema)
            .unwrap_or_else(|| panic!("no docs/schemas/{schema}"));
        self.schemas.validate(doc, i).map_err(|e| format!("{e:#}"))
    }

    /// Asserts `doc` validates against `schema` and keeps the envelope's
    /// promises for a run that exited `code`.
    #[track_caller]
    fn document(&self, schema: &str, doc: &Value, code: i32, context: &str) {
        if let Err(e) = self.validate(schema, doc) {
            panic!("output does not match docs/schemas/{schema}:\n{e}\n{context}");
        }
        assert_eq!(doc["schema_version"], 1, "{context}");
        assert_eq!(
            doc["ok"],
            Value::Bool(code == 0),
            "ok vs exit {code}: {context}"
        );
        if code != 0 {
            assert_eq!(doc["error"]["exit_code"], code, "{context}");
        }
    }

    /// Asserts stdout is exactly one JSON document of `schema`, for a run
    /// that exited `code`; returns it.
    #[track_caller]
    fn run(&self, schema: &str, r: &Run, code: i32) -> Value {
        assert_eq!(r.code, code, "wrong exit code; {r:#?}");
        let mut de = serde_json::Deserializer::from_str(&r.stdout);
        let doc = <Value as serde::Deserialize>::deserialize(&mut de)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {r:#?}"));
        de.end()
            .unwrap_or_else(|e| panic!("stdout holds more than one document ({e}): {r:#?}"));
        // A body field named like an envelope field would print the key
        // twice (serde_json keeps the last one, so validation alone misses it).
        for key in ["\"schema_version\":", "\"ok\":"] {
            assert_eq!(
                r.stdout.matches(key).count(),
                1,
                "{key} printed twice: {r:#?}"
            );
        }
        self.document(schema, &doc, code, &format!("{r:#?}"));
        doc
    }

    /// A command that failed before it had a report: the failure document,
    /// naming `command`, with the message stderr shows.
    #[track_caller]
    fn failure(&self, command: &str, r: &Run, code: i32) -> Value {
        let doc = self.run("failure.json", r, code);
        assert_eq!(doc["command"], command, "{r:#?}");
        let msg = doc["error"]["message"].as_str().unwrap();
        assert!(
            r.stderr.contains(msg.lines().next().unwrap()),
            "the document's message is the one on stderr: {r:#?}"
        );
        doc
    }
}

/// The demo's folder (keys, download folders, bundles, a mirror with n-1,
/// a root-pinned mirror that adopted a trust policy) as the fixture.
fn demo(sb: &Sandbox) -> PathBuf {
    let d = sb.join("demo");
    sb.run(["demo".as_ref(), "--dir".as_ref(), d.as_os_str()])
        .ok();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn every_command_on_success_and_failure_matches_its_schema() {
    let c = Checker::new();
    let sb = Sandbox::new();
    let d = demo(&sb);
    let (key, public) = (d.join("keys/demo.key"), d.join("keys/demo.pub"));
    let (mirror, state) = (d.join("mirror"), d.join("state"));
    let next = sb.join("next.tar.zst");
    let missing = sb.join("no-such-thing");
    let run = |args: &[&str]| sb.run(args);

    // export: a bundle, a split bundle, and a folder that does not exist.
    let download = d.join("download");
    let export_state = d.join("export-state");
    let base = [
        "export",
        "--from",
        s(&download),
        "--secret-key",
        s(&key),
        // The demo's exporter counter: sequences continue after its bundles.
        "--state-dir",
        s(&export_state),
        "--json",
    ];
    let e = c.run(
        "export.json",
        &run(&[&base[..], &["--out", s(&next)]].concat()),
        0,
    );
    assert_eq!(e["bundle_path"], e["bundle"]);
    assert_eq!(e["signer_key_ids"], e["signers"]);
    let split = sb.join("split.tar.zst");
    let e = c.run(
        "export.json",
        &run(&[&base[..], &["--out", s(&split), "--split", "1M"]].concat()),
        0,
    );
    assert!(e["split"]["volumes"].as_array().unwrap().len() > 1, "{e}");
    // With parity, and verified with a volume lost: rebuilt, and said so.
    let par = sb.join("par.tar.zst");
    let e = c.run(
        "export.json",
        &run(&[
            &base[..],
            &["--out", s(&par), "--split", "1M", "--parity", "1"],
        ]
        .concat()),
        0,
    );
    assert_eq!(
        e["split"]["parity"].as_array().map(Vec::len),
        Some(1),
        "{e}"
    );
    fs::remove_file(sb.join("par.tar.zst.002")).unwrap();
    let v = c.run(
        "verify.json",
        &run(&[
            "verify",
            s(&sb.join("par.tar.zst.001")),
            "--trust",
            s(&public),
            "--json",
        ]),
        0,
    );
    assert_eq!(
        v["rebuilt_volumes"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    c.failure(
        "export",
        &run(&[&base[..], &["--out", s(&missing.join("x.tar.zst"))]].concat()),
        2,
    );

    // repair: the lost volume written back; then more volumes lost than
    // there are parity volumes (the failure document, exit 3).
    let par_index = e["split"]["index"].as_str().unwrap().to_string();
    let repair = || run(&["repair", &par_index, "--trust", s(&public), "--json"]);
    let doc = c.run("repair.json", &repair(), 0);
    assert_eq!(
        doc["rebuilt_volumes"].as_array().map(Vec::len),
        Some(1),
        "{doc}"
    );
    assert_eq!(
        doc["rebuilt_volumes"][0]["path"],
        s(&sb.join("par.tar.zst.002")),
        "{doc}"
    );
    assert!(sb.join("par.tar.zst.002").is_file());
    fs::remove_file(sb.join("par.tar.zst.001")).unwrap();
    fs::remove_file(sb.join("par.tar.zst.002")).unwrap();
    c.failure("repair", &repair(), 3);

    // inspect, inspect --receipt, verify.
    c.run(
        "inspect.json",
        &run(&["inspect", s(&next), "--trust", s(&public), "--json"]),
        0,
    );
    c.failure("inspect", &run(&["inspect", s(&missing), "--json"]), 1);
    c.run(
        "verify.json",
        &run(&["verify", s(&next), "--trust", s(&public), "--json"]),
        0,
    );
    let tampered = d.join("bundles/demo-3-tampered.tar.zst");
    c.failure(
        "verify",
        &run(&["verify", s(&tampered), "--trust", s(&public), "--json"]),
        3,
    );

    // import: imported, refused (a partial report), a command line that
    // fails before anything is read (still the import's document).
    let imp = |bundle: &Path, extra: &[&str]| {
        let mut a = vec![
            "import",
            s(bundle),
            "--trust",
            s(&public),
            "--mirror",
            s(&mirror),
            "--state-dir",
            s(&state),
            "--json",
        ];
        a.extend_from_slice(extra);
        sb.run(a)
    };
    let i = c.run("import.json", &imp(&next, &[]), 0);
    assert_eq!(i["outcome"], "imported");
    assert_eq!(i["bundle_path"], s(&next));
    let receipt = i["receipt"].as_str().unwrap().to_string();
    let i = c.run(
        "import.json",
        &imp(&d.join("bundles/demo-older-definitions.tar.zst"), &[]),
        4,
    );
    assert_eq!(i["outcome"], "refused");
    assert_eq!(i["error"]["kind"], "policy");
    c.run(
        "import.json",
        &run(&[
            "import",
            s(&next),
            "--trust",
            s(&missing),
            "--mirror",
            s(&mirror),
            "--state-dir",
            s(&state),
            "--json",
        ]),
        2,
    );
    c.run(
        "inspect-receipt.json",
        &run(&["inspect", s(&next), "--receipt", &receipt, "--json"]),
        0,
    );
    c.run(
        "inspect-receipt.json",
        &run(&[
            "inspect",
            s(&d.join("bundles/demo-2.tar.zst")),
            "--receipt",
            &receipt,
            "--json",
        ]),
        1,
    );

    // import --inbox: one line per bundle; a pass that cannot start ends
    // the stream with the failure line.
    let inbox = sb.mkdir("inbox");
    fs::copy(&tampered, inbox.join("t.tar.zst")).unwrap();
    let r = run(&[
        "import",
        "--inbox",
        s(&inbox),
        "--settle",
        "0s",
        "--trust",
        s(&public),
        "--mirror",
        s(&mirror),
        "--state-dir",
        s(&state),
        "--json",
    ]);
    assert_ne!(r.code, 0, "{r:#?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{r:#?}");
    let line: Value = serde_json::from_str(lines[0]).unwrap();
    // Each line's `ok` and `error` are its bundle's (`exit_code`), not the
    // pass's exit code.
    let code = i32::try_from(line["exit_code"].as_i64().unwrap()).unwrap();
    assert_ne!(code, 0, "{r:#?}");
    c.document("inbox-line.json", &line, code, &format!("{r:#?}"));
    c.failure(
        "import",
        &run(&[
            "import",
            "--inbox",
            s(&missing),
            "--trust",
            s(&public),
            "--mirror",
            s(&mirror),
            "--state-dir",
            s(&state),
            "--json",
        ]),
        2,
    );

    // A key file that cannot be read: the stream is the failure line.
    c.failure(
        "import",
        &run(&[
            "import",
            "--inbox",
            s(&inbox),
            "--trust",
            s(&missing),
            "--mirror",
            s(&mirror),
            "--state-dir",
            s(&state),
            "--json",
        ]),
        2,
    );

    // status: healthy, a damaged served file, a folder that does not exist.
    let st = [
        "status",
        "--mirror",
        s(&mirror),
        "--state-dir",
        s(&state),
        "--json",
    ];
    let doc = c.run("status.json", &run(&st), 0);
    assert_eq!(doc["problem_count"], 0);
    c.failure(
        "status",
        &run(&["status", "--mirror", s(&missing), "--json"]),
        2,
    );

    // rollback: done, then refused for a ring with nothing served.
    let rb = [
        "rollback",
        "--mirror",
        s(&mirror),
        "--state-dir",
        s(&state),
        "--platform",
        "linux",
        "--ring",
        "production",
        "--json",
    ];
    c.run("rollback.json", &run(&rb), 0);
    let mut rb_none = rb.to_vec();
    rb_none[8] = "preview";
    c.failure("rollback", &run(&rb_none), 1);

    // A damaged served file: status reports it (ok false, exit 1).
    let zip = mirror.join("linux/production/arch_x86_64/updates.zip");
    let mut bytes = fs::read(&zip).unwrap();
    bytes.push(0);
    fs::write(&zip, bytes).unwrap();
    let doc = c.run("status.json", &run(&st), 1);
    assert!(doc["problem_count"].as_u64().unwrap() >= 1, "{doc}");

    // ledger show and verify; a state directory that does not exist.
    let doc = c.run(
        "ledger-show.json",
        &run(&["ledger", "show", "--state-dir", s(&state), "--json"]),
        0,
    );
    assert!(!doc["entries"].as_array().unwrap().is_empty());
    c.run(
        "ledger-verify.json",
        &run(&["ledger", "verify", "--state-dir", s(&state), "--json"]),
        0,
    );
    c.failure(
        "ledger verify",
        &run(&["ledger", "verify", "--state-dir", s(&missing), "--json"]),
        1,
    );
    c.failure(
        "ledger show",
        &run(&["ledger", "show", "--state-dir", s(&missing), "--json"]),
        1,
    );

    // trust show: the demo's adopted policy; nothing adopted.
    c.run(
        "trust-show.json",
        &run(&[
            "trust",
            "show",
            "--state-dir",
            s(&d.join("rotation/state")),
            "--json",
        ]),
        0,
    );
    c.failure(
        "trust show",
        &run(&["trust", "show", "--state-dir", s(&state), "--json"]),
        2,
    );

    // sign, manifest, attach (a minisign-made signature), and failures.
    let k2 = sb.keygen("k2");
    let signed = sb.join("signed.tar.zst");
    c.run(
        "sign.json",
        &run(&[
            "sign",
            s(&next),
            "--secret-key",
            s(&k2.secret),
            "--trust",
            s(&public),
            "--out",
            s(&signed),
            "--json",
        ]),
        0,
    );
    c.failure(
        "sign",
        &run(&["sign", s(&next), "--secret-key", s(&missing), "--json"]),
        2,
    );
    let m = sb.join("m.json");
    let doc = c.run(
        "manifest.json",
        &run(&["manifest", s(&signed), "--out", s(&m), "--json"]),
        0,
    );
    c.failure(
        "manifest",
        &run(&["manifest", s(&missing), "--out", s(&m), "--json"]),
        1,
    );
    let k3 = sb.keygen("k3");
    let sig = sb.join("m.json.minisig");
    let st3 = std::process::Command::new("minisign")
        .args(["-S", "-s", s(&k3.secret), "-m", s(&m), "-x", s(&sig), "-t"])
        .arg(doc["trusted_comment"].as_str().unwrap())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(st3.status.success(), "{st3:?}");
    c.run(
        "sign.json",
        &run(&[
            "attach",
            s(&signed),
            s(&sig),
            "--trust",
            s(&k3.public),
            "--out",
            s(&sb.join("attached.tar.zst")),
            "--json",
        ]),
        0,
    );
    c.failure(
        "attach",
        &run(&[
            "attach",
            s(&signed),
            s(&missing),
            "--trust",
            s(&k3.public),
            "--json",
        ]),
        1,
    );

    // endpoint-config --check: good, with problems, unreadable.
    let good = run(&[
        "endpoint-config",
        "--url",
        "http://mirror.example/linux/production/",
        "--platform",
        "linux",
    ])
    .ok();
    let mdatp = sb.join("mdatp.json");
    fs::write(&mdatp, good.stdout).unwrap();
    c.run(
        "endpoint-config-check.json",
        &run(&["endpoint-config", "--check", s(&mdatp), "--json"]),
        0,
    );
    fs::write(&mdatp, "{}").unwrap();
    let doc = c.run(
        "endpoint-config-check.json",
        &run(&["endpoint-config", "--check", s(&mdatp), "--json"]),
        1,
    );
    assert_eq!(doc["problem_count"], doc["problems"]);
    c.failure(
        "endpoint-config",
        &run(&["endpoint-config", "--check", s(&missing), "--json"]),
        2,
    );

    // The Windows forms: a saved Get-MpPreference, good and with problems,
    // and inspect --packages of the demo's Windows bundle.
    let prefs = sb.join("mppreference.json");
    fs::write(
        &prefs,
        r#"{"SignatureDefinitionUpdateFileSharesSources": "\\\\fs01\\defender", "SignatureFallbackOrder": "FileShares"}"#,
    )
    .unwrap();
    let win_check = |code| {
        c.run(
            "endpoint-config-check-windows.json",
            &run(&[
                "endpoint-config",
                "--platform",
                "windows",
                "--check",
                s(&prefs),
                "--json",
            ]),
            code,
        )
    };
    win_check(0);
    fs::write(
        &prefs,
        r#"{"SignatureDefinitionUpdateFileSharesSources": "\\\\fs01\\defender\\x64", "SignatureFallbackOrder": "MicrosoftUpdateServer"}"#,
    )
    .unwrap();
    let doc = win_check(1);
    assert_eq!(doc["problem_count"], doc["problems"]);
    let windows_bundle = d.join("bundles/demo-windows-1.tar.zst");
    let doc = c.run(
        "inspect.json",
        &run(&[
            "inspect",
            s(&windows_bundle),
            "--packages",
            "--trust",
            s(&public),
            "--json",
        ]),
        0,
    );
    assert_eq!(doc["packages"].as_array().map(Vec::len), Some(2), "{doc}");

    // fetch: from a loopback upstream, and from one that refuses; export
    // --fetch stopped by a failed fetch.
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    let dl = sb.join("fetched");
    let fetch = |upstream: &str| {
        run(&[
            "fetch",
            "--download-folder",
            s(&dl),
            "--upstream",
            upstream,
            "--platform",
            "linux",
            "--ring",
            "production",
            "--arch",
            "x86_64",
            "--retries",
            "0",
            "--json",
        ])
    };
    c.run("fetch.json", &fetch(&mock.base), 0);
    let dead = format!("http://127.0.0.1:{}/", closed_port());
    let doc = c.run("fetch.json", &fetch(&dead), 1);
    assert_eq!(doc["failed"], 1);
    let doc = c.run(
        "export-fetch.json",
        &run(&[
            "export",
            "--fetch",
            "--from",
            s(&dl),
            "--upstream",
            &dead,
            "--platform",
            "linux",
            "--ring",
            "production",
            "--retries",
            "0",
            "--secret-key",
            s(&key),
            "--out",
            s(&sb.join("fetched.tar.zst")),
            "--json",
        ]),
        1,
    );
    assert!(doc["export"].is_null(), "{doc}");

    // fetch --platform windows from the loopback stand-in: fetched, one
    // arch failed (exit 1), a command line it refuses (failure document).
    let win = StandIn::start();
    let pkg = |arch, v| FakePackage::signed(arch, parse_version(v).unwrap()).build();
    win.serve("x64", pkg(WinArch::X64, "1.421.40.0"));
    win.serve("x86", b"<html>proxy login</html>".to_vec());
    let win_dl = sb.join("win-dl");
    let win_fetch = |arch: &str, extra: &[&str]| {
        let mut a = vec![
            "fetch",
            "--platform",
            "windows",
            "--arch",
            arch,
            "--upstream",
            &win.base,
            "--download-folder",
            s(&win_dl),
            "--retries",
            "0",
            "--json",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let doc = c.run("fetch-windows.json", &win_fetch("x64", &[]), 0);
    assert_eq!(doc["items"][0]["outcome"], "updated", "{doc}");
    assert_eq!(doc["items"][0]["version"], "1.421.40.0", "{doc}");
    let doc = c.run("fetch-windows.json", &win_fetch("x86", &[]), 1);
    assert_eq!(doc["items"][0]["outcome"], "failed", "{doc}");
    c.failure("fetch", &win_fetch("x64", &["--ring", "production"]), 2);

    // export --platform windows --fetch: stopped by the failed arch, then
    // fetched and exported.
    let win_export = || {
        run(&[
            "export",
            "--fetch",
            "--platform",
            "windows",
            "--upstream",
            &win.base,
            "--from",
            s(&win_dl),
            "--retries",
            "0",
            "--secret-key",
            s(&key),
            "--state-dir",
            s(&sb.join("win-export-state")),
            "--out",
            s(&sb.join("win.tar.zst")),
            "--json",
        ])
    };
    let doc = c.run("export-fetch-windows.json", &win_export(), 1);
    assert!(doc["export"].is_null(), "{doc}");
    win.serve("x86", pkg(WinArch::X86, "1.421.40.0"));
    let doc = c.run("export-fetch-windows.json", &win_export(), 0);
    assert_eq!(
        doc["export"]["items"].as_array().map(Vec::len),
        Some(2),
        "{doc}"
    );

    // export --platform windows without --fetch: the plain export document.
    let doc = c.run(
        "export.json",
        &run(&[
            "export",
            "--platform",
            "windows",
            "--from",
            s(&win_dl),
            "--secret-key",
            s(&key),
            "--state-dir",
            s(&sb.join("win-export-state")),
            "--out",
            s(&sb.join("win2.tar.zst")),
            "--json",
        ]),
        0,
    );
    assert_eq!(doc["items"][0]["platform"], "windows", "{doc}");

    // A command line clap refuses: the failure document, exit 2.
    c.failure(
        "verify",
        &run(&["verify", s(&next), "--bogus", "--json"]),
        2,
    );

    // Every schema file is one some run above was checked against.
    let used = c.used.lock().unwrap().clone();
    let all: BTreeSet<String> = c.index.keys().cloned().collect();
    assert_eq!(used, all, "a schema no test checks");
}

/// The schemas are strict enough to catch a renamed, dropped or unknown
/// field, and a wrong `schema_version`.
#[test]
fn schemas_refuse_a_renamed_or_missing_field() {
    let c = Checker::new();
    let sb = Sandbox::new();
    let d = demo(&sb);
    let r = sb
        .run([
            "verify".as_ref(),
            d.join("bundles/demo-2.tar.zst").as_os_str(),
            "--trust".as_ref(),
            d.join("keys/demo.pub").as_os_str(),
            "--json".as_ref(),
        ])
        .ok();
    let doc = c.run("verify.json", &r, 0);
    let obj = doc.as_object().unwrap().clone();

    let mut renamed = obj.clone();
    let v = renamed.remove("signer_key_ids").unwrap();
    renamed.insert("signer_keys".into(), v);
    assert!(c.validate("verify.json", &Value::Object(renamed)).is_err());

    let mut dropped = obj.clone();
    dropped.remove("manifest_sha256");
    assert!(c.validate("verify.json", &Value::Object(dropped)).is_err());

    let mut bumped = obj.clone();
    bumped.insert("schema_version".into(), 2.into());
    assert!(c.validate("verify.json", &Value::Object(bumped)).is_err());

    let mut failed = obj;
    failed.insert("ok".into(), false.into());
    assert!(c.validate("verify.json", &Value::Object(failed)).is_err());

    let bad_error = serde_json::json!({
        "schema_version": 1, "ok": false, "command": "verify",
        "error": { "message": "x", "exit_code": 3, "kind": "refused" }
    });
    assert!(c.validate("failure.json", &bad_error).is_err());

    // A Windows fetch item that failed carries its error and no version;
    // repair's document is printed only on success.
    let item = serde_json::json!({
        "platform": "windows", "arch": "x64", "path": "windows/x64",
        "outcome": "failed", "version": null, "previous": null, "signer": null,
        "backed_up": false, "bytes": 0, "sha256": null, "error": "HTML page"
    });
    let win = |item: &Value| {
        serde_json::json!({
            "schema_version": 1, "ok": false,
            "error": { "message": "x", "exit_code": 1, "kind": "operational" },
            "download_folder": "dl", "upstream": "http://127.0.0.1/", "items": [item]
        })
    };
    assert!(c.validate("fetch-windows.json", &win(&item)).is_ok());
    let mut no_error = item.clone();
    no_error["error"] = Value::Null;
    assert!(c.validate("fetch-windows.json", &win(&no_error)).is_err());
    let mut versioned = item;
    versioned["version"] = "1.421.40.0".into();
    assert!(c.validate("fetch-windows.json", &win(&versioned)).is_err());
    let repair_failed = serde_json::json!({
        "schema_version": 1, "ok": false,
        "error": { "message": "x", "exit_code": 3, "kind": "rejected" },
        "index": "b.tar.zst.volumes.json", "rebuilt_volumes": [], "rebuilt_parity": []
    });
    assert!(c.validate("repair.json", &repair_failed).is_err());
}

/// An `s3://` mirror's import, status and rollback reports: the same
/// schemas, with `s3://` URLs where a folder mirror has paths.
#[test]
fn an_s3_mirror_reports_match_the_same_schemas() {
    let checker = Checker::new();
    let g = support::garage::Garage::start();
    let w = support::crash::World::new();
    let vs = w.chain(1..=2, 2048);
    let state = w.tmp.path().join("s3-state");
    let run_with = |args: &[&str], extra: &[&Path], secret: Option<&str>| {
        let mut c = support::command();
        c.args(args);
        for p in extra {
            c.arg(p);
        }
        c.args([
            "--mirror",
            "s3://mirror/schema",
            "--s3-path-style",
            "--json",
        ])
        .arg("--state-dir")
        .arg(&state);
        for (k, v) in g.env() {
            c.env(k, v);
        }
        if let Some(secret) = secret {
            c.env("AWS_SECRET_ACCESS_KEY", secret);
        }
        Run::from_output(c.output().unwrap())
    };
    let run = |args: &[&str], extra: &[&Path]| run_with(args, extra, None);
    for v in &vs {
        let r = run(&["import", "--trust"], &[&w.key.public, &v.bundle]);
        let doc = checker.run("import.json", &r, 0);
        assert!(doc["slots"][0]["dir"]
            .as_str()
            .unwrap()
            .starts_with("s3://mirror/schema/"));
    }
    let doc = checker.run("status.json", &run(&["status"], &[]), 0);
    assert_eq!(doc["mirror"], "s3://mirror/schema");
    let r = run(
        &["rollback", "--platform", "linux", "--ring", "production"],
        &[],
    );
    checker.run("rollback.json", &r, 0);
    // Wrong credentials: the failure document, exit 1.
    let r = run_with(&["status"], &[], Some("wrong"));
    checker.failure("status", &r, 1);
}
