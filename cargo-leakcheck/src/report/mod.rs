//! Turning test records into what people and tools read.

mod human;
mod json;

pub(crate) use human::{final_report, progress_line};
pub(crate) use json::{json_report, write_atomically};
