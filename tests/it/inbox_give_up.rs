//! `import --inbox --give-up-after`: a file or split set that stopped
//! changing while still incomplete (a truncated copy, a volume that never
//! came, a volume whose index never came) is listed as waiting with its age,
//! then moved to `rejected/` with a reason naming what is missing.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};

use support::{standard_releases, tree_digest, Keys, Sandbox};

struct Fx {
    sb: Sandbox,
    keys: Keys,
    inbox: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let sb = Sandbox::new();
        let keys = sb.keygen("k");
        let inbox = sb.mkdir("inbox");
        sb.mkdir("out");
        Fx { sb, keys, inbox }
    }

    fn export(&self, name: &str, extra: &[&str]) -> PathBuf {
        let from = self.sb.download_folder("dl", &standard_releases());
        let out = self.sb.join("out").join(name);
        self.sb.export(&from, &[&self.keys], &out, extra);
        out
    }

    fn pass(&self, extra: &[&str]) -> support::Run {
        let mut c = self.sb.cmd();
        c.arg("import")
            .arg("--trust")
            .arg(&self.keys.public)
            .arg("--mirror")
            .arg(self.sb.join("mirror"))
            .arg("--create")
            .arg("--state-dir")
            .arg(self.sb.join("state"))
            .arg("--inbox")
            .arg(&self.inbox)
            .args(["--settle", "0s"])
            .args(extra);
        support::run(c)
    }

    fn reason(&self, name: &str) -> String {
        fs::read_to_string(
            self.inbox
                .join("rejected")
                .join(format!("{name}.reason.json")),
        )
        .unwrap()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_truncated_bundle_that_stopped_growing_is_rejected_after_give_up_after() {
    let fx = Fx::new();
    let out = fx.export("b.tar.zst", &[]);
    let data = fs::read(&out).unwrap();
    let cut = data.len() / 2;
    fs::write(fx.inbox.join("b.tar.zst"), &data[..cut]).unwrap();
    let before = tree_digest(&fx.inbox);
    let run = fx.pass(&[]).ok();
    assert!(
        run.stderr.contains(&format!(
            "b.tar.zst: left alone (incomplete: {cut} bytes, its last zstd frame is cut short; last change"
        )),
        "{run:#?}"
    );
    assert_eq!(tree_digest(&fx.inbox), before);
    let run = fx.pass(&["--give-up-after", "0s"]);
    run.expect(3, &["b.tar.zst", "still incomplete"]);
    assert!(!fx.sb.join("mirror/linux").exists());
    let reason = fx.reason("b.tar.zst");
    assert!(reason.contains(&format!("{cut} bytes")), "{reason}");
    assert!(reason.contains("cut short"), "{reason}");
    assert_eq!(names(&fx.inbox), vec!["rejected".to_string()]);
}

#[test]
fn a_split_set_missing_a_volume_is_rejected_after_give_up_after() {
    let fx = Fx::new();
    let out = fx.export("s.tar.zst", &["--split", "400"]);
    let dir = out.parent().unwrap();
    for f in names(dir) {
        if f != "s.tar.zst.002" {
            fs::copy(dir.join(&f), fx.inbox.join(&f)).unwrap();
        }
    }
    let run = fx.pass(&[]).ok();
    assert!(
        run.stderr.contains(
            "s.tar.zst.volumes.json: left alone (1 more volume(s) needed of s.tar.zst.002 (missing); last change"
        ),
        "{run:#?}"
    );
    let run = fx.pass(&["--give-up-after", "0s"]);
    run.expect(3, &["s.tar.zst.volumes.json", "still incomplete"]);
    let reason = fx.reason("s.tar.zst.volumes.json");
    assert!(reason.contains("s.tar.zst.002 (missing)"), "{reason}");
    assert!(names(&fx.inbox.join("rejected")).contains(&"s.tar.zst.003".to_string()));
}

#[test]
fn a_volume_whose_index_never_came_is_rejected_after_give_up_after() {
    let fx = Fx::new();
    let out = fx.export("s.tar.zst", &["--split", "400"]);
    fs::copy(
        PathBuf::from(format!("{}.001", out.display())),
        fx.inbox.join("s.tar.zst.001"),
    )
    .unwrap();
    let run = fx.pass(&[]).ok();
    assert!(
        run.stderr
            .contains("s.tar.zst.001: left alone (a volume waiting for its index; last change"),
        "{run:#?}"
    );
    let run = fx.pass(&["--give-up-after", "0s"]);
    run.expect(3, &["s.tar.zst.001", "index has not arrived"]);
    assert!(fx.reason("s.tar.zst.001").contains("copy the whole set"));
}
