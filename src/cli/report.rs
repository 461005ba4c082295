//! The lines `natgrad train` ends with: the profile by phase, the final figures, the outputs.

use natgrad::backend::profiled::PHASES;
use natgrad::train::Summary;

/// Prints what the run did.
pub fn finished(summary: &Summary, out: &std::path::Path) {
    if let Some(profile) = &summary.profile_ms_per_step {
        let phases: Vec<String> = PHASES
            .iter()
            .filter_map(|name| profile.get(*name).map(|ms| format!("{name} {ms:.2}")))
            .collect();
        println!(
            "time per step (ms, mean of {}; each operation waited for, on the device's clock where it has one): {}; total {:.2}",
            summary.steps,
            phases.join(", "),
            profile.values().sum::<f64>()
        );
    }
    if let Some(p) = &summary.profile {
        println!(
            "device: {:.1} submissions and {:.1} host waits per step (at most {} in one step)",
            p.submissions_per_step, p.host_syncs_per_step, p.max_host_syncs_per_step
        );
    }
    let accuracy = |a: Option<f64>| a.map(|a| format!(", accuracy {a:.4}")).unwrap_or_default();
    let val = summary
        .val
        .and_then(|v| {
            v.val_loss
                .map(|l| format!("; validation loss {l:.6}{}", accuracy(v.val_accuracy)))
        })
        .unwrap_or_default();
    println!(
        "done: {} steps in {:.2} s; training loss {:.6}{}{val}",
        summary.steps,
        summary.wall_s,
        summary.train_loss,
        accuracy(summary.train_accuracy)
    );
    println!(
        "outputs in {}: metrics.csv, epochs.csv, summary.json, model.safetensors, state.safetensors, loss.svg",
        out.display()
    );
}
