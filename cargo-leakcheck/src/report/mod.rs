//! Turning test records into what people and tools read.

mod github;
mod human;
mod json;
mod junit;
mod notes;
mod progress;

pub(crate) use github::annotations;
pub(crate) use human::{final_report, progress_line};
pub(crate) use json::{json_report, write_atomically};
pub(crate) use junit::junit_report;
pub(crate) use notes::policy_notes;
pub(crate) use progress::Progress;
