//! The parent's loop: up to `--test-threads` children at a time, each
//! test's record collected as its child reports or ends. The parent never
//! starts a thread (see the module invariants of [`super`]).

use std::process::ExitCode;
use std::time::Instant;

use super::children::Running;
use super::config::{kill_children_and_die, ForkServer};
use super::protocol::{failed_record, print_summary, Tally};
use crate::registry::TestDef;

impl ForkServer {
    pub(super) fn run(mut self, plan: Vec<(&'static TestDef, bool)>, filtered_out: usize) -> ExitCode {
        let started = Instant::now();
        // Initialise std's lazy thread state once, here, rather than inside
        // every child's baseline; joined, so the parent is single-threaded
        // again before the first fork.
        let _ = std::thread::spawn(|| ()).join();
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only makes async-signal-safe calls.
            unsafe { libc::signal(signal, kill_children_and_die as *const () as libc::sighandler_t) };
        }
        let count = plan.len();
        println!("\nrunning {count} {}", if count == 1 { "test" } else { "tests" });
        let tests: Vec<&'static TestDef> = plan.iter().map(|(def, _)| *def).collect();
        let mut queue = plan.into_iter().enumerate();
        let mut ignored = 0;
        // The next test to run, printing the ignored ones on the way.
        let mut next_test = || {
            queue.find_map(|(index, (def, is_ignored))| {
                if is_ignored {
                    println!("test {} ... ignored", def.full_name());
                    ignored += 1;
                }
                (!is_ignored).then_some(index)
            })
        };
        let mut running: Vec<Running> = Vec::new();
        let mut tally = Tally::default();
        loop {
            // A reused child waiting for work takes the next test, or exits.
            for child in running.iter_mut().filter(|child| child.def.is_none() && child.command.is_some()) {
                match next_test() {
                    Some(index) => child.assign(index, tests[index], self.timeout),
                    None => child.command = None,
                }
            }
            while running.len() < self.jobs {
                let Some(index) = next_test() else { break };
                match self.fork_test(tests[index], &tests, &running, None) {
                    Ok(child) => running.push(child),
                    Err(error) => {
                        let record =
                            failed_record(tests[index], format!("leakcheck could not fork for this test: {error}"));
                        tally.failures.push(record);
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            self.wait_for_io(&mut running);
            let mut index = 0;
            while index < running.len() {
                if let Some(record) = running[index].take_reused_record() {
                    // Passed clean; the child waits for its next test.
                    self.report(record, &mut tally);
                    index += 1;
                    continue;
                }
                if running[index].record.is_some() && !running[index].timed_out {
                    index += 1;
                    continue;
                }
                let child = running.swap_remove(index);
                if let Some(record) = self.conclude(child, &tests, &mut running) {
                    self.report(record, &mut tally);
                }
            }
        }
        print_summary(tally, ignored, filtered_out, started)
    }
}
