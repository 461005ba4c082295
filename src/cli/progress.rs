//! What `natgrad train` shows while it runs: a progress bar on a terminal, one line per epoch
//! otherwise, and the notices the run loop raises.

use std::io::IsTerminal;

use natgrad::train::Event;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new() -> Self {
        Self { bar: None }
    }

    pub fn event(&mut self, event: Event) {
        match event {
            // the bar draws on stderr: a terminal on both (not mpirun's pty for stdout alone)
            Event::Start { total_steps } if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() => {
                let bar = indicatif::ProgressBar::new(total_steps as u64);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps, {elapsed} elapsed, ETA {eta} {msg}",
                ) {
                    bar.set_style(style);
                }
                self.bar = Some(bar);
            }
            Event::Start { .. } => {}
            Event::Notice(text) => eprintln!("natgrad: {text}"),
            Event::Step(row) => {
                if let Some(bar) = &self.bar {
                    bar.set_position(row.step as u64);
                    bar.set_message(format!("epoch {} loss {:.4}", row.epoch, row.loss));
                }
            }
            Event::Epoch(row) => {
                let accuracy = row
                    .train_accuracy
                    .map(|a| format!(" accuracy {a:.4}"))
                    .unwrap_or_default();
                let val = row
                    .val_loss
                    .map(|l| {
                        let a = row
                            .val_accuracy
                            .map(|a| format!(" accuracy {a:.4}"))
                            .unwrap_or_default();
                        format!(" | validation loss {l:.4}{a}")
                    })
                    .unwrap_or_default();
                let line = format!(
                    "epoch {:>3}: training loss {:.6}{accuracy}{val} ({:.2} s)",
                    row.epoch, row.train_loss, row.wall_s
                );
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => println!("{line}"),
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
