//! Turning test records into what people and tools read.

mod github;
mod human;
mod json;
mod junit;
mod notes;
mod outputs;
mod progress;
mod singletons;

pub(crate) use github::annotations;
pub(crate) use human::{final_report, progress_line};
pub(crate) use json::json_report;
pub(crate) use junit::junit_report;
pub(crate) use notes::policy_notes;
pub(crate) use outputs::{print_stdout, Finished, Outputs};
pub(crate) use progress::Progress;
pub(crate) use singletons::{singleton_section, singletons};
