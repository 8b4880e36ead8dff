//! The test helpers written for Node.js (the OpenID provider, the webhook receiver):
//! their pinned npm packages installed once per machine, and a helper process started
//! and waited for until it prints the line that says where it listens.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Installs `dir/node_modules` from its package-lock (`npm ci`, offline first) once per
/// machine, under a file lock so parallel test processes do not race.
pub fn ensure_installed(dir: &Path) {
    static DONE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let done = done.get_or_insert_with(HashSet::new);
    if done.contains(dir) {
        return;
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("node");
    let lock_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&lock_dir).unwrap();
    let lock = std::fs::File::create(lock_dir.join(format!("{name}-npm.lock"))).unwrap();
    lock.lock().unwrap();
    // A finished install (npm writes this file last) of every pinned package: a
    // node_modules from before a package was added is installed again.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap()).unwrap();
    let complete = dir.join("node_modules/.package-lock.json").exists()
        && manifest["dependencies"].as_object().is_none_or(|deps| {
            deps.keys().all(|name| {
                dir.join("node_modules")
                    .join(name)
                    .join("package.json")
                    .exists()
            })
        });
    if !complete {
        let npm = |offline: bool| {
            let mut cmd = Command::new("npm");
            cmd.args(["ci", "--prefix"])
                .arg(dir)
                .args(["--no-audit", "--no-fund"]);
            if offline {
                cmd.arg("--offline");
            }
            cmd.status()
                .unwrap_or_else(|e| panic!("cannot run npm (is Node.js installed?): {e}"))
                .success()
        };
        assert!(
            npm(true) || npm(false),
            "npm ci --prefix tests/{name} failed (see output above)"
        );
    }
    done.insert(dir.to_path_buf());
}

/// How a helper's start ended when it did not get ready.
pub enum NotReady {
    /// It exited first (e.g. its port was taken meanwhile; its stderr says why).
    Exited,
}

/// Starts `command` (stdout captured, kept drained so the helper never blocks on a full
/// pipe) and waits up to `within` for its first stdout line starting with `ready`:
/// returns the child and the rest of that line (a port, a URL). With `stderr_shown`,
/// the helper's stderr lines for which it is true are passed on, tagged `[tag]`;
/// without it, stderr is inherited.
pub fn spawn_ready(
    mut command: Command,
    tag: &'static str,
    ready: &'static str,
    stderr_shown: Option<fn(&str) -> bool>,
    within: Duration,
) -> Result<(Child, String), NotReady> {
    command.stdin(Stdio::null()).stdout(Stdio::piped());
    command.stderr(if stderr_shown.is_some() {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {tag} (node): {e}"));
    if let (Some(shown), Some(stderr)) = (stderr_shown, child.stderr.take()) {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if shown(&line) {
                    eprintln!("[{tag}] {line}");
                }
            }
        });
    }
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.strip_prefix(ready) {
                let _ = tx.send(rest.trim().to_string());
                sent = true;
            }
        }
    });
    match rx.recv_timeout(within) {
        Ok(rest) => Ok((child, rest)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let _ = child.wait();
            Err(NotReady::Exited)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            panic!("the {tag} did not print its {ready:?} line within {within:?}");
        }
    }
}
