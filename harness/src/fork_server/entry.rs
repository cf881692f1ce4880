//! The harness's entry: the command line (libtest-mimic) and the plan of
//! tests, handed to the server.

use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};

use super::child::count_panics;
use super::config::ForkServer;
use crate::registry::TestDef;

/// Entry point of `leakcheck::main!()`, over every registered test.
pub(crate) fn harness_main(tests: &'static [TestDef]) -> ExitCode {
    let args = Arguments::from_args();
    let mut defs: Vec<&'static TestDef> = tests.iter().collect();
    defs.sort_by_key(|def| def.full_name());
    let trials: Vec<Trial> = defs
        .iter()
        .map(|def| Trial::test(def.full_name(), || Ok(())).with_ignored_flag(def.ignore.is_some()))
        .collect();
    if args.list {
        let _listed = libtest_mimic::run(&args, trials);
        return ExitCode::SUCCESS;
    }
    count_panics();
    let mut plan = Vec::new();
    let mut filtered_out = 0;
    for (def, trial) in defs.into_iter().zip(&trials) {
        if args.is_filtered_out(trial) {
            filtered_out += 1;
        } else {
            plan.push((def, args.is_ignored(trial)));
        }
    }
    ForkServer::new(&args).run(plan, filtered_out)
}
