//! Records which commit is being built, so that `tasker --version`, the
//! start line in `serve`'s log and `tasker_build_info` can tell one build
//! of a version from another (an operator checking that an upgrade took
//! saw `0.1.0` on both sides).
//!
//! `TASKER_BUILD_COMMIT` in the environment wins (a build from a source
//! archive); then `git`; then `unknown`.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TASKER_BUILD_COMMIT");
    let commit = std::env::var("TASKER_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TASKER_BUILD_COMMIT={commit}");
    // Run again when HEAD moves. Only files that exist are named: Cargo
    // reruns a script on every build for a path that does not.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let mut watched = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(format!("{dir}/{branch}"));
        }
        for path in watched {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
