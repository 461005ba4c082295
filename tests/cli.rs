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

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn bad_data_fails_with_one_line_naming_file_and_line_and_leaves_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.csv", None, "cannot read"),
        (
            "short.csv",
            Some("a,b,label\n1,2,0\n3,4,1\n5,1\n"),
            "short.csv line 4: 2 columns, expected 3",
        ),
        (
            "word.csv",
            Some("1,2,0\n3,four,1\n"),
            "word.csv line 2: column 2: \"four\" is not a number",
        ),
        (
            "nan.csv",
            Some("1,2,0\n3,nan,1\n"),
            "nan.csv line 2: column 2: nan (data must be finite)",
        ),
        (
            "inf.csv",
            Some("1,2,0\n3,4,1\n-inf,0,1\n"),
            "inf.csv line 3: column 1: -inf (data must be finite)",
        ),
        ("empty.csv", Some(""), "empty.csv: no data rows"),
        ("header.csv", Some("x,y,label\n"), "header.csv: no data rows"),
        ("one.csv", Some("1,2,3\n4,5,3\n"), "only one class (label 3)"),
        (
            "float.csv",
            Some("1,2,0.5\n4,5,1\n"),
            "not all integers; for regression pass --task regress",
        ),
    ];
    for (name, text, expected) in cases {
        let path = match text {
            Some(t) => write(dir.path(), name, t),
            None => dir.path().join(name).display().to_string(),
        };
        let out = dir.path().join(format!("run-{name}"));
        let (ok, _, err) = natgrad(&[
            "train",
            "--data",
            &path,
            "--device",
            "cpu",
            "--out",
            &out.display().to_string(),
        ]);
        assert!(!ok, "{name}: training succeeded");
        let lines = error_lines(&err);
        assert_eq!(lines.len(), 1, "{name}: {err}");
        assert!(lines[0].contains(expected), "{name}: {:?} lacks {expected:?}", lines[0]);
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            !out.join("model.safetensors").exists(),
            "{name}: a checkpoint was written"
        );
    }
}

#[test]
fn train_eval_fisher_and_plot_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "xor.csv", &{
        let mut text = String::from("x,y,label\n");
        for i in 0..60 {
            let (a, b) = ((i % 2) as f32, ((i / 2) % 2) as f32);
            text += &format!(
                "{},{},{}\n",
                a + 0.05 * (i % 7) as f32,
                b - 0.04 * (i % 5) as f32,
                (a != b) as u8
            );
        }
        text
    });
    let run = |opt: &str| {
        let out = dir.path().join(opt).display().to_string();
        let (ok, stdout, err) = natgrad(&[
            "train",
            "--data",
            &data,
            "--hidden",
            "6",
            "--activation",
            "tanh",
            "--optimizer",
            opt,
            "--epochs",
            "3",
            "--batch",
            "20",
            "--standardize",
            "--device",
            "cpu",
            "--out",
            &out,
        ]);
        assert!(ok, "{opt}: {err}");
        assert!(stdout.contains(&format!("outputs in {out}")), "{stdout}");
        out
    };
    let (ngd, adam) = (run("ngd"), run("adam"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{ngd}/summary.json")).unwrap()).unwrap();
    for key in [
        "train_loss",
        "train_objective",
        "train_accuracy",
        "steps",
        "epochs",
        "wall_s",
        "device",
        "adapter",
        "config",
    ] {
        assert!(!summary[key].is_null(), "summary.json lacks {key}");
    }
    let header = std::fs::read_to_string(format!("{ngd}/metrics.csv")).unwrap();
    assert!(header.starts_with(
        "step,epoch,loss,objective,accuracy,grad_norm,step_size,kl_pred,cg_iters,cg_rel_residual,damping,wall_s\n"
    ));
    let epochs = std::fs::read_to_string(format!("{ngd}/epochs.csv")).unwrap();
    assert!(epochs.starts_with("epoch,train_loss,train_objective,train_accuracy,val_loss,val_accuracy,wall_s\n"));

    let model = format!("{ngd}/model.safetensors");
    let (ok, stdout, err) = natgrad(&["eval", "--model", &model, "--data", &data, "--json", "--device", "cpu"]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let trained = summary["train_loss"].as_f64().unwrap();
    assert!(
        (e["loss"].as_f64().unwrap() - trained).abs() <= 1e-6 * trained,
        "{e} vs {trained}"
    );
    assert_eq!(e["n"], 60);

    let npy = dir.path().join("F.npy").display().to_string();
    let (ok, _, err) = natgrad(&[
        "fisher", "--model", &model, "--data", &data, "--out", &npy, "--device", "cpu",
    ]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&npy).unwrap();
    let p = 2 * 6 + 6 + 6 + 1;
    assert!(bytes.starts_with(b"\x93NUMPY") && String::from_utf8_lossy(&bytes[..128]).contains(&format!("({p}, {p}")));

    let svg = dir.path().join("both.svg").display().to_string();
    let (ok, _, err) = natgrad(&["plot", &ngd, &adam, "--out", &svg]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("ngd") && text.contains("adam"));

    // a model meets data with other features: one line, non-zero exit
    let wide = write(dir.path(), "wide.csv", "1,2,3,0\n4,5,6,1\n");
    let (ok, _, err) = natgrad(&["eval", "--model", &model, "--data", &wide, "--device", "cpu"]);
    assert!(!ok);
    assert_eq!(
        error_lines(&err),
        [format!(
            "natgrad: error: {wide}: 3 features per row, but the model takes 2"
        )]
    );
}

#[test]
fn bench_writes_the_records_of_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json").display().to_string();
    let (ok, out, err) = natgrad(&[
        "bench",
        "--params",
        "67",
        "--batch",
        "33",
        "--repeats",
        "1",
        "--cg-iters",
        "5",
        "--device",
        "gpu,cpu",
        "--json",
        &json,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("gpu/cpu") && out.contains("timed on the device's clock") || out.contains("host clock"),
        "{out}"
    );
    let records: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for device in ["gpu", "cpu"] {
        for op in [
            "fisher_build",
            "matvec",
            "cg_solve",
            "scores",
            "ngd_step",
            "ngd_step_implicit",
            "ngd_step_woodbury",
            "ngd_step_block",
            "ngd_step_diagonal",
            "ceiling_copy",
            "ceiling_gemm",
        ] {
            let r = records
                .iter()
                .find(|r| r["device"] == device && r["op"] == op)
                .unwrap_or_else(|| panic!("no {device} {op}"));
            for key in [
                "op",
                "device",
                "adapter",
                "backend",
                "n",
                "p",
                "ms_median",
                "ms_min",
                "gflops",
                "gbps",
            ] {
                assert!(r.get(key).is_some(), "{device} {op}: no {key}");
            }
            if !op.starts_with("ceiling") {
                let (median, min) = (r["ms_median"].as_f64().unwrap(), r["ms_min"].as_f64().unwrap());
                assert!(min > 0.0 && min <= median, "{device} {op}: {min} {median}");
            }
        }
    }
}

/// natgrad with `envs` set and `unset` removed from its environment: (exit code, stdout, stderr).
fn natgrad_env(args: &[&str], envs: &[(&str, &str)], unset: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natgrad"));
    command.args(args).envs(envs.iter().copied());
    unset.iter().for_each(|k| {
        command.env_remove(k);
    });
    let out = command.output().expect("natgrad runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Settings that cannot train, a value beyond f32 in a file, a bad environment variable, and
/// models far too large are each one line and exit 1, never a panic or an abort; nothing is
/// written for them.
#[test]
fn runs_that_cannot_train_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.csv");
    std::fs::write(&big, "a,b,y\n1,2,0\n3,1e39,1\n").unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["train", "--cg-iters", "0"], "--cg-iters"),
        (&["train", "--epochs", "0"], "--epochs"),
        (&["train", "--steps", "0"], "--steps"),
        (
            &["train", "--data", big.to_str().unwrap()],
            "line 3: column 2: 1e39 overflows f32",
        ),
        (
            &["train", "--hidden", "65000,65000", "--device", "cpu"],
            "parameter vectors needs",
        ),
        (
            &[
                "train",
                "--hidden",
                "65000,65000",
                "--optimizer",
                "adam",
                "--device",
                "cpu",
            ],
            "for --optimizer adam",
        ),
        (
            &[
                "train",
                "--hidden",
                "65000,65000",
                "--optimizer",
                "sgd",
                "--device",
                "cpu",
            ],
            "for --optimizer sgd",
        ),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().copied().chain(["--out", out]).collect();
        let (code, _, err) = natgrad_env(&args, &[], &[]);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        let lines = error_lines(&err);
        assert!(lines.len() == 1 && lines[0].contains(says), "{args:?}: {err}");
        assert!(!std::path::Path::new(out).exists(), "{args:?} wrote {out}");
    }
    // not a number, and one beyond what a wait can hold (Duration would panic on it)
    for timeout in ["abc", "1e20"] {
        let (code, _, err) = natgrad_env(
            &["train", "--device", "gpu", "--steps", "1", "--out", out],
            &[("NATGRAD_GPU_TIMEOUT_S", timeout)],
            &[],
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(error_lines(&err)[0].contains("NATGRAD_GPU_TIMEOUT_S"), "{err}");
    }
}

/// Without XDG_RUNTIME_DIR, looking for a GPU prints nothing natgrad did not write.
#[test]
fn a_gpu_run_without_a_runtime_dir_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, _, err) = natgrad_env(
        &[
            "train",
            "--device",
            "gpu",
            "--steps",
            "1",
            "--hidden",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
        &["XDG_RUNTIME_DIR"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("natgrad")),
        "lines natgrad did not write: {err}"
    );
}

/// The shipped CSV holds what `--dataset digits` trains on: a model trained on the one evaluates
/// the same on the other.
#[test]
fn the_shipped_digits_file_and_the_builtin_dataset_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, _, err) = natgrad(&[
        "train",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let model = out.join("model.safetensors");
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv");
    let eval = |source: &[&str]| {
        let mut args = vec!["eval", "--json", "--device", "cpu", "--model", model.to_str().unwrap()];
        args.extend_from_slice(source);
        let (ok, out, err) = natgrad(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let (file, builtin) = (eval(&["--data", csv]), eval(&["--dataset", "digits"]));
    assert_eq!(file["loss"], builtin["loss"]);
    assert_eq!(file["accuracy"], builtin["accuracy"]);
}

/// A run that ends above the loss it started from says so (SGD at 3× its workable rate on digits
/// neither diverges nor learns).
#[test]
fn a_run_whose_loss_rose_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = [
        "train",
        "--device",
        "cpu",
        "--optimizer",
        "sgd",
        "--lr",
        "3",
        "--epochs",
        "2",
    ];
    let (ok, _, err) = natgrad(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("warning: the training loss rose over the run"), "{err}");
    let (ok, _, err) = natgrad(&[
        "train",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--out",
        dir.path().join("ngd").to_str().unwrap(),
    ]);
    assert!(ok && !err.contains("warning"), "{err}");
}

/// A run never loses another's work: a directory holding a run is refused (the good model kept),
/// replaced only with --overwrite, and an unnamed run takes a fresh directory.
#[test]
fn a_run_never_overwrites_another() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("R");
    let r = good.to_str().unwrap();
    let (ok, _, err) = natgrad(&["train", "--device", "cpu", "--epochs", "2", "--out", r]);
    assert!(ok, "{err}");
    let model = std::fs::read(good.join("model.safetensors")).unwrap();
    let diverging = [
        "train",
        "--device",
        "cpu",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--steps",
        "20",
        "--out",
        r,
    ];
    let (ok, _, err) = natgrad(&diverging);
    assert!(!ok);
    let lines = error_lines(&err);
    assert!(
        lines.len() == 1 && lines[0].contains("holds a run") && lines[0].contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(good.join("model.safetensors")).unwrap(),
        model,
        "the good model changed"
    );
    let (ok, _, err) = natgrad(&[&diverging[..], &["--overwrite"]].concat());
    assert!(!ok && err.contains("diverged"), "{err}");
    assert!(good.join("model.safetensors").exists() && !good.join("summary.json").exists());
    // no --out: runs/digits-ngd, then runs/digits-ngd-2
    for expected in ["runs/digits-ngd", "runs/digits-ngd-2"] {
        let out = Command::new(env!("CARGO_BIN_EXE_natgrad"))
            .args(["train", "--device", "cpu", "--steps", "2"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            dir.path().join(expected).join("summary.json").exists(),
            "{expected} missing"
        );
        assert!(
            !dir.path().join(expected).join(".natgrad.lock").exists(),
            "lock left behind"
        );
    }
}

/// SIGINT finishes the step, saves everything, says how to resume and exits 130; `--resume`
/// then finishes the run.
#[test]
fn an_interrupted_run_says_how_to_resume_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_natgrad"))
        .args([
            "train",
            "--device",
            "cpu",
            "--curvature",
            "dense",
            "--steps",
            "40",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // interrupt once the first steps are in metrics.csv
    let metrics = out.join("metrics.csv");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 60, "no steps after a minute");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("interrupted"))
        .expect("a line saying so");
    assert!(
        line.contains(&format!("natgrad train --resume {}", out.display())),
        "{line}"
    );
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains(r#""interrupted": true"#), "{summary}");
    assert!(out.join("loss.svg").exists() && out.join("state.safetensors").exists());
    let (ok, _, err) = natgrad(&["train", "--resume", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 40);
    assert!(summary.get("interrupted").is_none(), "{summary}");
}

/// SIGKILL at any moment leaves a checkpoint and a state that load (every write is a rename), and
/// the lock of the killed run does not keep the next one out.
#[test]
fn killed_runs_leave_files_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    for k in 0..15u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_natgrad"))
            .args([
                "train",
                "--device",
                "cpu",
                "--checkpoint-every",
                "1",
                "--overwrite",
                "--out",
            ])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + (k * 37) % 150));
        let _ = child.kill();
        let _ = child.wait();
        if out.join("model.safetensors").exists() {
            natgrad::io::checkpoint::Checkpoint::load(&out.join("model.safetensors")).unwrap();
        }
        if out.join("state.safetensors").exists() {
            natgrad::io::state::load(&out.join("state.safetensors")).unwrap();
        }
    }
    let (ok, _, err) = natgrad(&[
        "train",
        "--device",
        "cpu",
        "--steps",
        "3",
        "--overwrite",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
}
