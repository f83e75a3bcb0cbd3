//! Compatibility with the official Python SDK, `credyt-api==0.2.0`: every `test_*.py` in
//! `tests/sdk/` (wallets in `test_sdk.py`; products, subscriptions, events, vendors, stats and
//! top-ups in `test_sdk_usage.py`; connected accounts, webhooks and the billing portal in
//! `test_sdk_platforms.py`, which also checks that all 54 operations of the SDK were called)
//! drives one live server through it, on each backend.
//!
//! The SDK lives in a virtual environment at `target/sdk-venv`, made on first use and reused
//! while it still imports the SDK (and openapi-spec-validator, which `openapi.rs` runs). Installing needs the network: when pip fails this test
//! fails and says why, unless TALLY_SKIP_SDK=1, which skips it.

use crate::harness::TestApp;
use crate::on_both_backends;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const SDK_REQUIREMENT: &str = "credyt-api==0.2.0";
/// Validates the OpenAPI document (`openapi.rs`).
const VALIDATOR_REQUIREMENT: &str = "openapi-spec-validator";
/// Succeeds only when the environment holds the pinned SDK, pytest and the validator.
const IMPORT_CHECK: &str =
    "import credytapi, pytest, openapi_spec_validator, sys; sys.exit(credytapi.__version__ != '0.2.0')";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

pub(crate) fn show(output: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Result<Output, String> {
    command.output().map_err(|error| format!("cannot run {command:?}: {error}"))
}

/// The virtual environment's python, with the SDK, pytest and openapi-spec-validator
/// installed in it. One test at a time makes or checks it.
pub(crate) fn sdk_python() -> Result<PathBuf, String> {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = workspace_root().join("target/sdk-venv");
    let python = venv.join("bin/python");
    if python.exists() && run(Command::new(&python).args(["-c", IMPORT_CHECK]))?.status.success() {
        return Ok(python);
    }
    let created = run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    if !created.status.success() {
        return Err(format!(
            "`python3 -m venv {}` failed: install python3 with venv support (Debian: apt-get install python3-venv)\n{}",
            venv.display(),
            show(&created)
        ));
    }
    let installed = run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--timeout",
        "60",
        SDK_REQUIREMENT,
        "pytest",
        VALIDATOR_REQUIREMENT,
    ]))?;
    if !installed.status.success() {
        return Err(format!(
            "pip could not install {SDK_REQUIREMENT}, pytest and {VALIDATOR_REQUIREMENT} into {} (is there network access to PyPI?)\n{}",
            venv.display(),
            show(&installed)
        ));
    }
    Ok(python)
}

async fn the_official_python_sdk_drives_the_api(app: TestApp) {
    if std::env::var("TALLY_SKIP_SDK").is_ok_and(|value| value == "1") {
        eprintln!("SDK compatibility NOT RUN: TALLY_SKIP_SDK=1");
        return;
    }
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap().unwrap_or_else(|problem| {
        panic!("the Python SDK compatibility test cannot run: {problem}\nset TALLY_SKIP_SDK=1 to skip it")
    });
    // pytest collects every test_*.py in the directory.
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let mut pytest = Command::new(python);
    pytest
        .args(["-m", "pytest", "-q", "-rfEX", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("TALLY_URL", &app.base)
        .env("TALLY_KEY", &app.test_key)
        .env("TALLY_LIVE_KEY", &app.live_key)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    // The server keeps running on this runtime's workers while pytest blocks another thread.
    let output = tokio::task::spawn_blocking(move || run(&mut pytest)).await.unwrap().unwrap();
    assert!(output.status.success(), "the SDK suite failed ({}):\n{}", output.status, show(&output));
    // pytest's summary, with any expected failures it names, for `--nocapture` readers.
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    app.assert_ledger_agrees().await;
}

on_both_backends!(the_official_python_sdk_drives_the_api);
