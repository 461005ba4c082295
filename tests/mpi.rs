//! Data-parallel runs under `mpirun` (feature `mpi`; `.ci/run` installs Open MPI): two ranks end
//! where one process ends, on the CPU and on the GPU; a killed or hung rank ends the job within
//! the bound with an error naming it; a run stopped on two ranks resumes on any number; a bad row
//! in one rank's part of a file is told once.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_natgrad");

/// `natgrad train args` on `ranks` ranks (`--oversubscribe`: this machine may have fewer cores),
/// with `env` set for every rank.
fn mpirun_with(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()]);
    for (name, value) in env {
        c.args(["-x", name]).env(name, value);
    }
    c.args([BIN, "train"]).args(args);
    c
}

fn mpirun(ranks: usize, args: &[&str]) -> Command {
    mpirun_with(ranks, args, &[])
}

/// A job that is killed if the test ends before it does.
struct Job(Option<std::process::Child>);

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
        }
    }
}

fn run(mut c: Command) -> Output {
    c.output().expect("mpirun runs (apt-get install openmpi-bin)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn train_loss(dir: &Path) -> f64 {
    summary(dir)["train_loss"].as_f64().unwrap()
}

/// One process's run of the same arguments.
fn alone(args: &[&str]) -> Output {
    Command::new(BIN).arg("train").args(args).output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The README's command, `mpirun -np 2 natgrad train`, against `natgrad train`: the same final
/// loss to 1e-4, on the CPU and on the GPU (lavapipe in CI), and rank 0's report of what moved.
#[test]
fn two_ranks_end_where_one_process_ends_on_the_cpu_and_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    for device in ["cpu", "gpu"] {
        let (one, two) = (
            dir.path().join(format!("{device}-1")),
            dir.path().join(format!("{device}-2")),
        );
        let o = alone(&["--device", device, "--out", path(&one)]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let o = run(mpirun(2, &["--device", device, "--out", path(&two)]));
        assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
        let (a, b) = (train_loss(&one), train_loss(&two));
        assert!((a - b).abs() <= 1e-4 * a, "{device}: one process {a}, two ranks {b}");
        let s = summary(&two);
        assert_eq!(s["ranks"], 2);
        // the gradient is p f32 values, summed once a step; the examples come by all-to-all
        let p = s["config"]["parameters"].as_f64().unwrap();
        let moved = &s["communication_per_step"];
        assert_eq!(moved["gradient"]["bytes"].as_f64(), Some(4.0 * p));
        assert_eq!(moved["gradient"]["collective"], "all-reduce");
        assert_eq!(moved["examples"]["collective"], "all-to-all");
        let stdout = text(&o.stdout);
        assert_eq!(stdout.matches("done:").count(), 1, "rank 0 alone reports: {stdout}");
    }
}

/// The processes of a job started with `marker` among their arguments, by rank.
fn ranks_of(marker: &str) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !text(&cmdline).contains(marker) || !text(&cmdline).starts_with(BIN) {
            continue;
        }
        let env = text(&std::fs::read(entry.path().join("environ")).unwrap_or_default());
        if let Some(rank) = env
            .split('\0')
            .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok())
        {
            found.push((rank, pid));
        }
    }
    found
}

/// Starts a two-rank run writing to `out` that would go on for ever, with `env` set for every
/// rank, and waits until both ranks are up and it has taken steps.
fn endless_run(out: &Path, env: &[(&str, &str)]) -> Job {
    let mut c = mpirun_with(
        2,
        &[
            "--device",
            "cpu",
            "--hidden",
            "8",
            "--steps",
            "100000000",
            "--out",
            path(out),
        ],
        env,
    );
    let job = Job(Some(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()));
    let started = Instant::now();
    while !out.join("metrics.csv").exists() || ranks_of(path(out)).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "the run did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    job
}

/// Starts an endless two-rank run writing to `out` and sends rank 1 `signal`; the job's output
/// and how long it took to end after the signal.
fn signal_rank_one(out: &Path, signal: &str) -> (Output, Duration) {
    let mut job = endless_run(out, &[("NATGRAD_MPI_TIMEOUT_S", "3")]);
    let (_, pid) = *ranks_of(path(out)).iter().find(|(r, _)| *r == 1).unwrap();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
    assert!(status.unwrap().success());
    let signalled = Instant::now();
    let output = job.0.take().unwrap().wait_with_output().unwrap();
    let took = signalled.elapsed();
    // a stopped rank that the job's end did not reach
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    (output, took)
}

#[test]
fn a_killed_rank_ends_the_job_with_its_rank_named() {
    let dir = tempfile::tempdir().unwrap();
    let (o, took) = signal_rank_one(&dir.path().join("killed"), "KILL");
    let stderr = text(&o.stderr);
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(stderr.contains("rank 1"), "{stderr}");
}

#[test]
fn a_hung_rank_ends_the_job_within_the_timeout_with_its_rank_named() {
    let dir = tempfile::tempdir().unwrap();
    let (o, took) = signal_rank_one(&dir.path().join("hung"), "STOP");
    let stderr = text(&o.stderr);
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(stderr.contains("rank 1 did not answer, hung or dead"), "{stderr}");
}

/// SIGUSR1 to mpirun (which forwards it to every rank) stops the ranks together after a step:
/// everything saved, exit 130, and the run continues from there with --resume.
#[test]
fn sigusr1_stops_every_rank_after_saving_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stopped");
    let mut job = endless_run(&out, &[]);
    let pid = job.0.as_ref().unwrap().id();
    assert!(
        Command::new("kill")
            .args(["-USR1", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let o = job.0.take().unwrap().wait_with_output().unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert_eq!(stderr.matches("interrupted after step").count(), 1, "{stderr}");
    let s = summary(&out);
    assert_eq!(s["interrupted"], true);
    let steps = s["steps"].as_u64().unwrap();
    let more = (steps + 5).to_string();
    let o = run(mpirun(2, &["--resume", path(&out), "--steps", &more]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(summary(&out)["steps"].as_u64(), Some(steps + 5));
}

/// Ended after two epochs on two ranks, resumed to four on two, or on one: the unbroken run's
/// loss.
#[test]
fn a_run_stopped_on_two_ranks_resumes_on_any_number() {
    let dir = tempfile::tempdir().unwrap();
    let unbroken = dir.path().join("unbroken");
    let o = alone(&["--device", "cpu", "--epochs", "4", "--out", path(&unbroken)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for (k, resumed_on) in [2usize, 1].into_iter().enumerate() {
        let out = dir.path().join(format!("resumed-{k}"));
        let o = run(mpirun(2, &["--device", "cpu", "--epochs", "2", "--out", path(&out)]));
        assert!(o.status.success(), "{}", text(&o.stderr));
        let resume = ["--resume", path(&out), "--epochs", "4"];
        let o = match resumed_on {
            1 => alone(&resume),
            n => run(mpirun(n, &resume)),
        };
        assert!(o.status.success(), "{}", text(&o.stderr));
        let (a, b) = (train_loss(&unbroken), train_loss(&out));
        assert!((a - b).abs() <= 1e-4 * a, "resumed on {resumed_on}: {b}, unbroken {a}");
        assert_eq!(summary(&out)["steps"], summary(&unbroken)["steps"]);
    }
}

/// A bad row in rank 1's part of a CSV: one error line, naming the file and its own line number.
#[test]
fn a_bad_row_in_one_ranks_part_is_told_once() {
    let dir = tempfile::tempdir().unwrap();
    let csv: PathBuf = dir.path().join("bad.csv");
    let mut rows: Vec<String> = (0..200).map(|i| format!("{},{},{}", i % 7, i % 5, i % 2)).collect();
    rows[180] = "1,oops,0".into();
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    let o = run(mpirun(
        2,
        &["--data", path(&csv), "--out", path(&dir.path().join("bad"))],
    ));
    let stderr = text(&o.stderr);
    assert!(!o.status.success());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("natgrad: error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].ends_with("bad.csv line 181: column 2: \"oops\" is not a number"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("rank 1: "), "{}", errors[0]);
}
