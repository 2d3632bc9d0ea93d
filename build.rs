//! Builds the playground's and the dashboard's assets (`playground/web`: GraphiQL, React and
//! graphql-ws from npm, pinned by its lockfile, bundled by esbuild) into `OUT_DIR/playground`, for the binary to
//! embed and serve, so that the page loads nothing from anywhere but its own origin.
//!
//! It needs Node.js and npm (`npm ci` runs when `node_modules` does not match the lockfile).
//! Without them, or when the build fails, the binary still builds: it embeds a page script that
//! says why the playground is missing and how to fix it, and the start-up log says so too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("playground/web");
    for path in ["package.json", "package-lock.json", "build.mjs", "src"] {
        println!("cargo:rerun-if-changed={}", web.join(path).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("playground");
    std::fs::create_dir_all(&out).expect("creating OUT_DIR/playground");
    let status = match build(&web, &out) {
        Ok(()) => "built".to_string(),
        Err(why) => {
            println!("cargo:warning=the playground's assets were not built: {why}");
            // A path that never exists: the next build tries again (Node.js may be there by then).
            println!(
                "cargo:rerun-if-changed={}",
                web.join("node_modules/.not-built-yet").display()
            );
            let message = format!(
                "The playground's assets were not built when this binary was ({why}). \
                 Install Node.js (18 or later) and npm, then build again (cargo build): the build \
                 runs `npm ci` in playground/web and bundles GraphiQL from its lockfile."
            );
            let script = format!(
                "document.getElementById('graphiql').textContent = {};",
                js_string(&message)
            );
            std::fs::write(out.join("playground.js"), &script).expect("writing the fallback");
            std::fs::write(
                out.join("dashboard.js"),
                script.replace("'graphiql'", "'dashboard'"),
            )
            .expect("writing the fallback");
            for empty in [
                "playground.css",
                "playground.js.LEGAL.txt",
                "playground.css.LEGAL.txt",
                "dashboard.js.LEGAL.txt",
            ] {
                std::fs::write(out.join(empty), "").expect("writing the fallback");
            }
            format!("missing: {why}")
        }
    };
    println!("cargo:rustc-env=VOICEGRAPH_PLAYGROUND_ASSETS={status}");
}

fn build(web: &Path, out: &Path) -> Result<(), String> {
    run(
        Command::new("node").arg("--version"),
        "Node.js is not installed (node)",
    )?;
    let lock = std::fs::read(web.join("package-lock.json"))
        .map_err(|e| format!("reading playground/web/package-lock.json: {e}"))?;
    let installed = std::fs::read(web.join("node_modules/.package-lock.json")).ok();
    if installed.as_deref() != Some(lock.as_slice()) {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(web),
            "`npm ci` failed in playground/web (is npm installed, and the npm registry reachable?)",
        )?;
    }
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(out)
            .current_dir(web),
        "bundling the playground (node build.mjs) failed",
    )
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// `s` as a JavaScript string literal.
fn js_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("\\u003c"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
