//! Damaged or edited files, and runs that end badly, reach natgrad as one line naming the problem
//! and exit 1: never a panic, an abort, or a run that carries on at a wrong place.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Runs natgrad: (exit code, stderr).
fn natgrad(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_natgrad"))
        .args(args)
        .output()
        .expect("natgrad runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts natgrad refused with exit 1 and one error line containing `says`.
fn refused(args: &[&str], says: &str) {
    let (code, err) = natgrad(args);
    assert_eq!(code, Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("natgrad: error")).collect();
    assert!(
        lines.len() == 1 && lines[0].contains(says),
        "{args:?}: {err:?} lacks {says:?}"
    );
}

/// A run in `dir/name` on the CPU: 2 epochs of digits (9 steps each), with `extra` flags.
fn small_run(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["train", "--device", "cpu", "--epochs", "2", "--out"];
    args.push(out.to_str().unwrap());
    args.extend(extra);
    let (code, err) = natgrad(&args);
    assert_eq!(code, Some(0), "{err}");
    out
}

/// Rewrites the JSON header of the safetensors file at `path` through `edit`, keeping the data.
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Sets metadata `key` (a JSON text) in the safetensors file at `path`.
fn set_metadata(path: &Path, key: &str, value: &str) {
    edit_header(path, |h| {
        h["__metadata__"][key] = Value::String(value.into());
    });
}

/// Edits the JSON held in metadata `key` of the file at `path`.
fn edit_metadata_json(path: &Path, key: &str, edit: impl FnOnce(&mut Value)) {
    edit_header(path, |h| {
        let mut v: Value = serde_json::from_str(h["__metadata__"][key].as_str().unwrap()).unwrap();
        edit(&mut v);
        h["__metadata__"][key] = Value::String(v.to_string());
    });
}

/// A named way to damage a file, and what natgrad must then say.
type Damage = (&'static str, Box<dyn Fn(&Path)>, &'static str);

#[test]
fn a_damaged_checkpoint_is_refused_before_anything_is_allocated_or_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let run = small_run(dir.path(), "run", &["--hidden", "8"]);
    let model = run.join("model.safetensors");
    let cases: [Damage; 6] = [
        (
            // 10¹⁵ inputs: θ would need 10¹⁷ bytes
            "huge",
            Box::new(|p| edit_metadata_json(p, "spec", |s| s["inputs"] = 1_000_000_000_000_000u64.into())),
            "parameters, past what a device can index",
        ),
        (
            // widths whose product wraps a 64-bit count
            "wrapping",
            Box::new(|p| edit_metadata_json(p, "spec", |s| s["hidden"] = serde_json::json!([1u64 << 40, 1u64 << 40]))),
            "past what a device can index",
        ),
        (
            "labels short",
            Box::new(|p| set_metadata(p, "labels", "[0.0, 1.0]")),
            "metadata \"labels\": 2 labels for 10 classes",
        ),
        (
            "labels twice",
            Box::new(|p| set_metadata(p, "labels", "[0,1,2,3,4,5,6,7,8,8]")),
            "label 8 appears twice",
        ),
        (
            "no labels",
            Box::new(|p| {
                edit_header(p, |h| {
                    h["__metadata__"].as_object_mut().unwrap().remove("labels");
                })
            }),
            "no class \"labels\" for a classifier",
        ),
        (
            "standardisation",
            Box::new(|p| set_metadata(p, "standardize", r#"{"mean": [0.0], "std": [1.0]}"#)),
            "1 means and 1 deviations for 64 inputs",
        ),
    ];
    for (name, damage, says) in cases {
        let copy = dir.path().join(format!("{name}.safetensors"));
        std::fs::copy(&model, &copy).unwrap();
        damage(&copy);
        let copy = copy.to_str().unwrap();
        refused(
            &["eval", "--model", copy, "--dataset", "digits", "--device", "cpu"],
            says,
        );
        let npy = dir.path().join("f.npy");
        let npy = npy.to_str().unwrap();
        refused(
            &[
                "fisher",
                "--model",
                copy,
                "--dataset",
                "digits",
                "--device",
                "cpu",
                "--out",
                npy,
            ],
            says,
        );
    }
}

#[test]
fn a_damaged_state_is_refused_and_the_run_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [Damage; 4] = [
        (
            "past the epoch",
            Box::new(|p| edit_metadata_json(p, "value.run.progress", |v| v["position"] = 1_000_000_000u64.into())),
            "batch 1000000000 of 9 is not where 18 steps lead",
        ),
        (
            "epoch 0",
            Box::new(|p| edit_metadata_json(p, "value.run.progress", |v| v["epoch"] = 0.into())),
            "epoch 0 batch 0 of 9 is not where 18 steps lead",
        ),
        (
            // a state whose batch size was changed: its steps no longer fit the epochs
            "another batch",
            Box::new(|p| edit_metadata_json(p, "value.run.config", |v| v["batch"] = 0.into())),
            "of 1 is not where 18 steps lead",
        ),
        (
            "negative damping",
            Box::new(|p| set_metadata(p, "value.optimizer.damping", "-1")),
            "optimizer.damping -1 is not a non-negative number",
        ),
    ];
    for (name, damage, says) in cases {
        let run = small_run(dir.path(), name, &["--hidden", "8"]);
        let state = run.join("state.safetensors");
        damage(&state);
        let before = std::fs::read(run.join("epochs.csv")).unwrap();
        refused(&["train", "--resume", run.to_str().unwrap(), "--epochs", "4"], says);
        assert_eq!(
            std::fs::read(run.join("epochs.csv")).unwrap(),
            before,
            "{name}: epochs.csv changed"
        );
    }
}

/// A last step that makes θ non-finite (nothing after it checks a loss) is divergence, not a run
/// that ends "done" with a NaN loss: exit 1, and the checkpoint holds parameters whose loss is
/// finite.
#[test]
fn a_run_whose_last_step_diverges_says_so_and_keeps_finite_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, err) = natgrad(&[
        "train",
        "--device",
        "cpu",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the loss became NaN at step 1: training diverged"),
        "{err}"
    );
    let model = out.join("model.safetensors");
    let (code, err) = natgrad(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "digits",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn settings_that_would_be_ignored_or_divide_by_zero_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    refused(
        &["train", "--dataset", "digits", "--task", "regress", "--out", out],
        "digits is a classification dataset: --task regress is for CSV files",
    );
    for curvature in ["diagonal", "woodbury"] {
        refused(
            &["train", "--curvature", curvature, "--damping", "0", "--out", out],
            "give --damping > 0",
        );
    }
    refused(
        &["train", "--hidden", "5000000000,5000000000", "--out", out],
        "past what a device can index",
    );
    assert!(!Path::new(out).exists(), "a refused run wrote {out}");
}

/// The dense Fisher of a model far larger than memory is refused on the CPU (not an abort of
/// the allocator), naming the size and the memory there is.
#[test]
fn a_fisher_beyond_memory_is_refused_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    // 525 010 parameters: F is 1.1 TB
    let run = dir.path().join("wide");
    let (code, err) = natgrad(&[
        "train",
        "--device",
        "cpu",
        "--hidden",
        "7000",
        "--optimizer",
        "adam",
        "--steps",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let model = run.join("model.safetensors");
    let npy = dir.path().join("f.npy");
    refused(
        &[
            "fisher",
            "--model",
            model.to_str().unwrap(),
            "--dataset",
            "digits",
            "--device",
            "cpu",
            "--out",
            npy.to_str().unwrap(),
        ],
        "Fisher matrix F needs 1102542000400 bytes (525010×525010 f32), above this device's available memory",
    );
    assert!(!npy.exists());
}
