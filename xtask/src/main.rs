//! Project chores, in plain Rust: `cargo xtask <command>`.
//!
//! - `cargo xtask test`: every check CI runs (format, clippy, the binary's
//!   features, tests, doc tests, each benchmark once in test mode, API docs
//!   without warnings, examples). Fails if any fails, and prints a summary.
//! - `cargo xtask features`: the binary's dependency tree without its default
//!   features has no rustls, ring, mimalloc or tokio-tungstenite, and libc is
//!   none of its own dependencies (a step of `cargo xtask test`).
//! - `cargo xtask bench [ARGS]`: the criterion benchmarks (ARGS go to criterion).
//! - `cargo xtask bench e2e [ARGS]`: the end-to-end benchmark: the release
//!   binary in front of an in-tree backend, against a direct connection and
//!   nginx and HAProxy when installed (ARGS go to `tests/bench_e2e.rs`, e.g.
//!   `--rounds 5`).
//! - `cargo xtask soak [ARGS]`: thousands of tunnels and requests through the
//!   release binary, every byte checked (ARGS go to the soak program, e.g.
//!   `--tunnels 5000 --concurrency 1000`).
//! - `cargo xtask layout`: no module of a crate imports one that imports it
//!   back (a step of `cargo xtask test`; `layout.rs` says what counts).
//! - `cargo xtask fuzz [CASES]`: the HTTP/1 codec's differential properties
//!   (against hyper's client) with CASES generated responses each (default
//!   200,000), in release mode; `cargo xtask test` runs 400 of each.

mod layout;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "test" => test(),
        "bench" => bench(rest),
        "soak" => run_bin(true, "soak", rest),
        "fuzz" => fuzz(rest),
        "features" => lean_binary(),
        "layout" => layout(),
        "help" | "-h" | "--help" => {
            println!(
                "usage: cargo xtask <test | features | bench [criterion args] | bench e2e [args] | soak [args] | fuzz [cases]>"
            );
            Ok(())
        }
        other => Err(format!(
            "unknown command `{other}` (try `cargo xtask help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    // xtask/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

struct Step {
    name: &'static str,
    ok: bool,
    secs: f64,
}

fn run(name: &'static str, mut cmd: Command, steps: &mut Vec<Step>) {
    eprintln!("\n==> {name}: {cmd:?}");
    let start = Instant::now();
    let ok = match cmd.status() {
        Ok(status) => status.success(),
        Err(e) => {
            eprintln!("xtask: could not start {name}: {e}");
            false
        }
    };
    steps.push(Step {
        name,
        ok,
        secs: start.elapsed().as_secs_f64(),
    });
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn test() -> Result<(), String> {
    let mut steps = Vec::new();

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("fmt", fmt, &mut steps);

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    run("clippy", clippy, &mut steps);

    // No module imports one that imports it back.
    let start = Instant::now();
    eprintln!("\n==> layout: no import cycle between the modules of a crate");
    let ok = match layout() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("xtask: {e}");
            false
        }
    };
    steps.push(Step {
        name: "layout",
        ok,
        secs: start.elapsed().as_secs_f64(),
    });

    // The binary's features mean what they say: without its default ones it
    // builds no TLS, allocator or demo crates, and that build cannot rot.
    let start = Instant::now();
    eprintln!("\n==> features: cargo tree -p halfclose-proxy --no-default-features");
    let ok = match lean_binary() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("xtask: {e}");
            false
        }
    };
    steps.push(Step {
        name: "features",
        ok,
        secs: start.elapsed().as_secs_f64(),
    });
    let mut lean = cargo();
    lean.args([
        "check",
        "-p",
        "halfclose-proxy",
        "--no-default-features",
        "--locked",
    ]);
    run("lean build", lean, &mut steps);

    let mut tests = cargo();
    if has_nextest() {
        tests.args([
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]);
    } else {
        tests.args(["test", "--workspace", "--locked", "--no-fail-fast"]);
    }
    run("tests", tests, &mut steps);

    let mut doc = cargo();
    doc.args(["test", "--workspace", "--locked", "--doc"]);
    run("doc tests", doc, &mut steps);

    // Each criterion benchmark once, in test mode, so benches cannot rot.
    let mut benches = cargo();
    benches.args(["test", "--workspace", "--benches", "--locked"]);
    run("benches", benches, &mut steps);

    let mut docs = cargo();
    docs.args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run("docs", docs, &mut steps);

    // Built in debug, like the tests; a few hundred of each, small sizes.
    let start = Instant::now();
    eprintln!("\n==> soak (short)");
    let ok = run_bin(false, "soak", &SHORT_SOAK.map(String::from)).is_ok();
    steps.push(Step {
        name: "soak",
        ok,
        secs: start.elapsed().as_secs_f64(),
    });

    // The end-to-end benchmark once, quickly, so that it cannot rot.
    let start = Instant::now();
    eprintln!("\n==> bench e2e (quick)");
    let ok = run_bin(false, "bench-e2e", &["--quick".to_owned()]).is_ok();
    steps.push(Step {
        name: "bench e2e",
        ok,
        secs: start.elapsed().as_secs_f64(),
    });

    let mut examples = cargo();
    examples.args(["build", "--workspace", "--locked", "--examples"]);
    run("examples", examples, &mut steps);

    eprintln!("\nxtask test summary:");
    for s in &steps {
        eprintln!(
            "  {:<10} {:<4} {:>7.1}s",
            s.name,
            if s.ok { "ok" } else { "FAIL" },
            s.secs
        );
    }
    let failed: Vec<&str> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    if failed.is_empty() {
        eprintln!("all checks passed");
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

/// Crates the binary must not build without its default features (`tls`,
/// `mimalloc`, `demo`), anywhere in its dependency tree.
const NOT_WITHOUT_DEFAULTS: [&str; 4] = ["rustls", "ring", "mimalloc", "tokio-tungstenite"];

/// Crates the binary must not depend on itself, whatever its features
/// (libc comes in through tokio; the binary's one prctl goes through rustix).
const NOT_DIRECT: [&str; 1] = ["libc"];

/// Checks the binary's dependency tree: [`NOT_WITHOUT_DEFAULTS`] absent from
/// it without default features, [`NOT_DIRECT`] absent from its direct
/// dependencies with all features, on every target.
/// `cargo xtask layout`: fails if a module of a crate imports one that
/// imports it back (see `layout.rs` for what counts as an import).
fn layout() -> Result<(), String> {
    let mut problems = Vec::new();
    for src in layout::CRATES {
        let (cycles, graph) = layout::cycles(&root().join(src))?;
        let arrows: usize = graph.values().map(|to| to.len()).sum();
        eprintln!(
            "{src}: {} modules, {arrows} imports, {} cycles",
            graph.len(),
            cycles.len()
        );
        for cycle in cycles {
            let mut path = cycle.clone();
            path.push(cycle[0].clone());
            problems.push(format!("{src}: {}", path.join(" -> ")));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("import cycles:\n  {}", problems.join("\n  "))),
    }
}

fn lean_binary() -> Result<(), String> {
    let lean = tree(&["--no-default-features"])?;
    let found = named(&lean, &NOT_WITHOUT_DEFAULTS);
    if !found.is_empty() {
        return Err(format!(
            "halfclose-proxy --no-default-features builds {} (see `cargo tree -p halfclose-proxy \
             --no-default-features -e normal -i {}`)",
            found.join(", "),
            found[0]
        ));
    }
    let direct = tree(&["--all-features", "--target", "all", "--depth", "1"])?;
    let found = named(&direct, &NOT_DIRECT);
    if !found.is_empty() {
        return Err(format!(
            "halfclose-proxy depends on {} itself",
            found.join(", ")
        ));
    }
    eprintln!(
        "none of {} without default features; no {} among its own dependencies",
        NOT_WITHOUT_DEFAULTS.join(", "),
        NOT_DIRECT.join(", ")
    );
    Ok(())
}

/// `cargo tree -p halfclose-proxy -e normal --prefix none --locked ARGS`: one
/// crate a line, its name first (`rustls v0.23.31`).
fn tree(args: &[&str]) -> Result<String, String> {
    let mut cmd = cargo();
    cmd.args([
        "tree",
        "-p",
        "halfclose-proxy",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--locked",
    ])
    .args(args);
    eprintln!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("could not start cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("cargo tree printed non-UTF-8: {e}"))
}

/// The crates of `names` that start a line of `tree` (as its first word).
fn named<'a>(tree: &str, names: &[&'a str]) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|name| {
            tree.lines()
                .any(|line| line.split_whitespace().next() == Some(*name))
        })
        .collect()
}

fn bench(args: &[String]) -> Result<(), String> {
    // `cargo xtask bench -- relay` and `cargo xtask bench relay` mean the same.
    let args = match args.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ => args,
    };
    if let Some(("e2e", rest)) = args.split_first().map(|(f, r)| (f.as_str(), r)) {
        return run_bin(true, "bench-e2e", rest);
    }
    let mut cmd = cargo();
    // Bench targets only: criterion arguments must not reach libtest harnesses.
    cmd.args(["bench", "--workspace", "--benches", "--locked"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not start cargo bench: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("benchmarks failed".into())
    }
}

/// The codec's differential properties (our HTTP/1 codec against hyper's
/// client, on generated and mutated responses), with many more cases than
/// `cargo xtask test` runs.
fn fuzz(args: &[String]) -> Result<(), String> {
    let cases: u64 = match args.first().map(String::as_str) {
        None => 200_000,
        Some(n) => n
            .replace('_', "")
            .parse()
            .map_err(|_| format!("fuzz: {n:?} is not a number of cases"))?,
    };
    let start = Instant::now();
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--locked",
        "-p",
        "proxy-tower",
        "--lib",
        "client::h1::codec::differential",
        "--",
        // The figures (cases compared, refused) are printed by the test.
        "--nocapture",
    ])
    .env("PROPTEST_CASES", cases.to_string());
    let status = cmd
        .status()
        .map_err(|e| format!("could not start cargo test: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    match status.success() {
        true => {
            eprintln!(
                "fuzz: 2 properties x {cases} cases, 0 failures ({secs:.0} s, build included)"
            );
            Ok(())
        }
        false => Err(format!(
            "fuzz: a property failed within {cases} cases (the minimal input is printed above)"
        )),
    }
}

/// The soak that `cargo xtask test` runs.
const SHORT_SOAK: [&str; 8] = [
    "--tunnels",
    "300",
    "--requests",
    "300",
    "--concurrency",
    "100",
    "--max-size",
    "262144",
];

/// Builds the proxy and the programs of the tests package (release or debug),
/// then runs `program` with the proxy's path and `args`.
fn run_bin(release: bool, program: &str, args: &[String]) -> Result<(), String> {
    let args = match args.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ => args,
    };
    let mut build = cargo();
    build.args([
        "build",
        "--locked",
        "-p",
        "halfclose-proxy",
        "-p",
        "e2e-tests",
        "--bins",
    ]);
    if release {
        build.arg("--release");
    }
    let built = build
        .status()
        .map_err(|e| format!("could not start cargo build: {e}"))?;
    if !built.success() {
        return Err(format!("building {program} failed"));
    }
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let dir = target.join(if release { "release" } else { "debug" });
    let status = Command::new(dir.join(program))
        .arg("--proxy")
        .arg(dir.join("halfclose-proxy"))
        .args(args)
        .status()
        .map_err(|e| format!("could not start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_is_named_by_the_first_word_of_a_line() {
        let tree = "halfclose-proxy v0.1.0 (/src)\nrustls-pki-types v1.12.0\nring v0.17.14\n\
                    tokio v1.50.0\nmy-libc-wrapper v1.0.0 (libc)\n";
        assert_eq!(named(tree, &NOT_WITHOUT_DEFAULTS), ["ring"]);
        assert!(named(tree, &NOT_DIRECT).is_empty());
        assert_eq!(named("libc v0.2.186\n", &NOT_DIRECT), ["libc"]);
    }
}
