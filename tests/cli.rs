//! The command line: exit codes, one-line errors, and the commands' output.

use std::process::Command;

fn natgrad(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_natgrad"))
        .args(args)
        .output()
        .expect("natgrad runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// natgrad's own error lines (drivers may print their own noise on stderr).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("natgrad: error")).collect()
}

#[test]
fn devices_lists_adapters_and_both_picks() {
    let (ok, out, err) = natgrad(&["devices"]);
    assert!(ok, "{err}");
    assert!(out.contains("GPU adapters, best first:"), "{out}");
    assert!(out.contains("max storage binding"), "{out}");
    assert!(
        out.contains("--device auto picks:") && out.contains("--device gpu picks:  GPU"),
        "{out}"
    );
}

#[test]
fn demo_runs_on_both_devices_and_they_agree() {
    let (ok, out, err) = natgrad(&[
        "demo",
        "--batch",
        "100",
        "--params",
        "67",
        "--device",
        "gpu,cpu",
        "--repeats",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("fisher build") && out.contains("cg solve"), "{out}");
    let agreement = out
        .lines()
        .find(|l| l.starts_with("agreement"))
        .expect("an agreement line");
    let d_err: f64 = agreement
        .rsplit("d ")
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(d_err < 1e-3, "{agreement}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("f64 reference")).count(),
        2,
        "{out}"
    );
}

#[test]
fn bad_requests_fail_with_one_line() {
    for args in [
        &["demo", "--device", "gpu", "--adapter", "no-such-adapter-anywhere"][..],
        &["demo", "--damping", "-1"][..],
        &["demo", "--params", "0"][..],
        &["demo", "--cg-tol", "nan"][..],
    ] {
        let (ok, _, err) = natgrad(args);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(error_lines(&err).len(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (_, _, err) = natgrad(&["demo", "--device", "gpu", "--adapter", "no-such-adapter-anywhere"]);
    assert!(
        err.contains("no GPU adapter found matching \"no-such-adapter-anywhere\""),
        "{err}"
    );
}
