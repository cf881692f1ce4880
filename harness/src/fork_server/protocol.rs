//! Speaking to whoever runs the harness: libtest's lines (`test X ... ok`,
//! the failures, the closing `test result:` line) and, under `cargo
//! leakcheck`, one JSON record per test on `LEAKCHECK_RECORDS_FD`.

use std::io::Write;
use std::time::Instant;

use super::config::ForkServer;
use crate::record::{Outcome, TestRecord};
use crate::registry::TestDef;

/// Passed and failed tests so far.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) passed: usize,
    pub(super) failures: Vec<TestRecord>,
}

impl ForkServer {
    /// Prints the verdict of `record`, passes it on to `cargo leakcheck` and counts it.
    pub(super) fn report(&mut self, record: TestRecord, tally: &mut Tally) {
        println!("test {} ... {}", record.name, if record.outcome == Outcome::Passed { "ok" } else { "FAILED" });
        if let Some(records) = &mut self.records {
            if let Ok(line) = serde_json::to_string(&record) {
                let _ = writeln!(records, "{line}");
            }
        }
        if record.outcome == Outcome::Passed {
            tally.passed += 1;
        } else {
            tally.failures.push(record);
        }
    }
}

pub(super) fn failed_record(def: &TestDef, message: String) -> TestRecord {
    TestRecord { message: Some(message), ..TestRecord::new("", def.full_name(), Outcome::Failed) }
}

fn print_failures(failures: &[TestRecord]) {
    if failures.is_empty() {
        return;
    }
    println!("\nfailures:");
    for record in failures {
        println!("\n---- {} stdout ----", record.name);
        if let Some(output) = record.output.as_deref().filter(|output| !output.is_empty()) {
            print!("{output}");
            if !output.ends_with('\n') {
                println!();
            }
        }
        if let Some(message) = &record.message {
            println!("{message}");
        }
        if !record.leaks.is_empty() {
            println!("{}", crate::record::describe_leaks(&record.leaks));
        }
    }
    println!("\nfailures:");
    for record in failures {
        println!("    {}", record.name);
    }
}

/// The failures, then libtest's closing line; the exit code libtest would give.
pub(super) fn print_summary(
    tally: Tally,
    ignored: usize,
    filtered_out: usize,
    started: Instant,
) -> std::process::ExitCode {
    let Tally { passed, failures } = tally;
    print_failures(&failures);
    let result = if failures.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(101)
    }
}
