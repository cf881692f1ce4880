//! Explain re-runs: a test that leaked runs once more in a fresh child,
//! recording where its leaks were created; the sites go to the first run's
//! record, whose verdict stands.

use super::children::Running;
use super::config::ForkServer;
use crate::record::{Outcome, TestRecord};
use crate::registry::TestDef;

impl ForkServer {
    /// Turns a child that ended into its test's record, or starts the
    /// explain re-run of a test that leaked (pushed onto `running`; its
    /// record comes when the re-run ends). `None` when there is no record
    /// yet, or none at all (a reused child that was told to exit).
    pub(super) fn conclude(
        &self,
        mut child: Running,
        tests: &[&'static TestDef],
        running: &mut Vec<Running>,
    ) -> Option<TestRecord> {
        let explaining = child.explaining.take();
        let Some(def) = child.def else {
            // A reused child that was told to exit, gone.
            self.reap_idle(child);
            return None;
        };
        let record = self.finish(child, def);
        match explaining {
            // An explain re-run ended: its sites go to the first run's leaks.
            Some(mut first) => {
                crate::sites::attach(&mut first.leaks, &record.leaks);
                Some(first)
            }
            None if self.explain && !record.leaks.is_empty() && record.outcome != Outcome::TimedOut => {
                let heap = record.leaks.iter().any(|leak| matches!(leak, crate::Leak::Heap { .. }));
                match self.fork_test(def, tests, running, Some(heap)) {
                    Ok(mut rerun) => {
                        rerun.explaining = Some(record);
                        running.push(rerun);
                        None
                    }
                    Err(_) => Some(record),
                }
            }
            None => Some(record),
        }
    }
}
