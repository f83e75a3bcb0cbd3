//! axe-core, the accessibility audit the portal's browser tests run on every page.
//!
//! axe-core comes from the npm registry at test time, once: `target/axe-core/axe.min.js`
//! (`npm pack axe-core@4`, else the registry's tarball with curl), then is injected into each
//! page through WebDriver (which page scripts' Content-Security-Policy does not govern).

use super::browser::Browser;
use std::path::Path;
use std::process::Command;

const AXE_VERSION: &str = "4.14.1";

/// axe.min.js, fetched into `target/axe-core/` on first use and kept there.
pub(super) fn axe_source() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/axe-core");
    let script = dir.join("axe.min.js");
    if !script.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let tarball = dir.join(format!("axe-core-{AXE_VERSION}.tgz"));
        if !tarball.exists() {
            let packed = Command::new("npm")
                .args(["pack", &format!("axe-core@{AXE_VERSION}"), "--silent"])
                .current_dir(&dir)
                .status()
                .is_ok_and(|status| status.success());
            if !packed {
                let url = format!("https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz");
                let fetched = Command::new("curl").args(["-fsSL", "-o"]).arg(&tarball).arg(&url).status();
                assert!(fetched.is_ok_and(|status| status.success()), "cannot download {url} (npm and curl failed)");
            }
        }
        let unpacked = Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .args(["-C"])
            .arg(&dir)
            .args(["--strip-components=1", "package/axe.min.js"])
            .status();
        assert!(unpacked.is_ok_and(|status| status.success()), "cannot unpack {}", tarball.display());
    }
    std::fs::read_to_string(&script).unwrap()
}

/// Runs axe-core on the page as it is: its violations, one line each.
pub(super) async fn violations(browser: &Browser, axe: &str) -> Vec<String> {
    browser.client.execute(axe, vec![]).await.expect("axe-core loads");
    let found = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             axe.run(document, {resultTypes: ['violations']}) \
               .then(r => done(r.violations.map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at ' + \
                               v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')))) \
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(found.clone()).unwrap_or_else(|_| panic!("axe-core answered {found}"))
}
