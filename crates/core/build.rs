//! Records what `kmsguard --version` reports about the build: the git commit when built from a
//! checkout, and the target triple.
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=KMSGUARD_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=KMSGUARD_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    // A new commit changes HEAD (or the branch HEAD names).
    for path in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
