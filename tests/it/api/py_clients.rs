//! The Python stock FHIR clients (issue 16) against the real server over TLS: PyPI
//! `fhirpy` and PyPI `fhirclient` (SMART on FHIR), pinned by
//! `tests/fhir-clients-py/requirements.txt` and installed by `.ci/run` into
//! `target/tools/fhir-clients-py` (a Python venv; installed here on first use when
//! missing, like sslyze). The test never skips: without the clients it fails with the
//! install command. `tests/fhir-clients-py/interop.py` drives both with no workarounds
//! — read, search paged to the last page (entries = total), `:contains`, create,
//! conditional create, update with and without `If-Match`, vread, history,
//! `Patient/$everything` — and parses every resource with fhirclient's strict R4 models.

use crate::support::world::World;
use crate::support::{free_port, test_cert};
use custodian::policy::Role;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir-clients-py")
}

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/fhir-clients-py")
}

/// The venv's Python with exactly the pinned requirements (a copy of the requirements
/// file in the venv marks a finished install of that very list).
fn python() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let venv = venv();
        let requirements = clients_dir().join("requirements.txt");
        let stamp = venv.join("requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).unwrap();
        let lock_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&lock_dir).unwrap();
        let lock = File::create(lock_dir.join("fhir-clients-py.lock")).unwrap();
        lock.lock().unwrap();
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
            let hint = "the Python stock FHIR clients are not installed and could not be \
                 installed. Install them as .ci/run does:\n  python3 -m venv \
                 target/tools/fhir-clients-py && target/tools/fhir-clients-py/bin/pip \
                 install --no-deps -r tests/fhir-clients-py/requirements.txt";
            let ok = |mut c: Command| c.status().is_ok_and(|s| s.success());
            let _ = std::fs::remove_dir_all(&venv);
            let mut make = Command::new("python3");
            make.args(["-m", "venv"]).arg(&venv);
            let mut pip = Command::new(venv.join("bin/pip"));
            pip.args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "-r",
            ])
            .arg(&requirements);
            assert!(ok(make) && ok(pip), "{hint}");
            std::fs::write(&stamp, wanted).unwrap();
        }
        venv.join("bin/python")
    })
    .clone()
}

#[tokio::test]
async fn python_stock_clients_read_page_create_update_and_search_by_contains() {
    let python = python();
    // The clients follow the absolute links the server gives, so the public URL must be
    // this very server.
    let port = free_port();
    let w = World::with(|b, _| {
        b.set("server.listen", format!("127.0.0.1:{port}"))
            .set("server.public_url", format!("https://localhost:{port}"))
    })
    .await;
    let (_, doc) = w.user("dr-python", &[Role::Clinician]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(clients_dir().join("interop.py"))
            .current_dir(clients_dir())
            .env("REQUESTS_CA_BUNDLE", &test_cert().cert)
            .env(
                "CUSTODIAN_FHIR_BASE",
                format!("https://localhost:{port}/fhir"),
            )
            .env("CUSTODIAN_TOKEN", doc)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // What each client did (shown with --nocapture).
    println!("{stdout}");
    for (client, step) in [
        ("fhirpy", "create"),
        ("fhirpy", "read"),
        ("fhirpy", "search"),
        ("fhirpy", ":contains"),
        ("fhirpy", "conditional create"),
        ("fhirpy", "update"),
        ("fhirpy", "history"),
        ("fhirpy", "everything"),
        ("fhirclient", "capabilities"),
        ("fhirclient", "create"),
        ("fhirclient", "read"),
        ("fhirclient", "search"),
        ("fhirclient", ":contains"),
        ("fhirclient", "update"),
        ("fhirclient", "history"),
        ("fhirclient", "everything"),
        ("both", "done"),
    ] {
        assert!(
            stdout.contains(&format!("{{\"client\": \"{client}\", \"step\": \"{step}\"")),
            "{client} {step} missing:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // Every request of the run was audited with the clinician as the actor.
    let events = w.audit_events();
    assert!(events.len() > 40, "{} events", events.len());
}
