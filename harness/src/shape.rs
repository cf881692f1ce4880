//! The shape of a leak: what stays the same when the same code leaks the
//! same resource in another process (or in another run of the test).
//! Singleton detection compares counts of each shape.

use std::collections::BTreeMap;

use crate::record::Leak;

/// The shape of a leak: its kind and an identity that is the same in every
/// process (numbers that vary between processes folded: socket inodes,
/// ports and pids in fd targets, the counter at the end of a thread name;
/// never the digits inside a name, as in `r2d2-worker-#`).
/// `test_threads` are the names of the test threads of the process, whose
/// name an unnamed thread inherits.
pub fn shape_of(leak: &Leak, test_threads: &[&str]) -> Option<String> {
    Some(match leak {
        Leak::Fd { target, detail, .. } => {
            let what = if target.starts_with("socket:") || target.starts_with("pipe:") {
                // "unix stream (connected, unnamed)", "pipe, read end; ...":
                // the description up to the first detail of its peer.
                detail.split([';', '(']).next().unwrap_or(detail).trim().to_owned()
            } else {
                target.clone()
            };
            format!("fd {}", fold_digits(&what))
        }
        Leak::Thread { name, .. } => {
            let inherited = test_threads.iter().any(|test| comm_of(test) == name);
            format!("thread {}", if inherited { "(unnamed)".to_owned() } else { fold_trailing_number(name) })
        }
        // A program's name is the same in every process.
        Leak::Child { cmdline, .. } => format!("child {}", program_of(cmdline)),
        // Neither is a singleton: what survives the process is left.
        Leak::Heap { .. } | Leak::File { .. } => return None,
    })
}

/// The program of a child process as the kernel names it (`comm`: the
/// executable's file name, at most 15 bytes), from its command line or,
/// for a zombie, from `[comm]`: the same for a child seen running in one run
/// and as a zombie in the next.
pub fn program_of(cmdline: &str) -> String {
    let zombie = cmdline.strip_prefix('[').and_then(|rest| rest.strip_suffix(']'));
    let program = match zombie {
        Some(comm) => comm,
        None => {
            let first = cmdline.split_whitespace().next().unwrap_or_default();
            first.rsplit('/').next().unwrap_or(first)
        }
    };
    comm_of(program).to_owned()
}

/// Instances of each shape among `leaks`.
pub fn shape_counts(leaks: &[Leak], test_threads: &[&str]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for shape in leaks.iter().filter_map(|leak| shape_of(leak, test_threads)) {
        *counts.entry(shape).or_insert(0) += 1;
    }
    counts
}

/// Splits `leaks` into the ones taken, `counts[shape]` of each shape, and
/// the rest, in their order. The lowest fd numbers (oldest threads and
/// children) are taken first: a library's start-up makes them first.
pub fn take_by_shape(
    leaks: Vec<Leak>,
    counts: &BTreeMap<String, usize>,
    test_threads: &[&str],
) -> (Vec<Leak>, Vec<Leak>) {
    let mut left = counts.clone();
    let mut order: Vec<usize> = (0..leaks.len()).collect();
    order.sort_by_key(|&index| match &leaks[index] {
        Leak::Fd { fd, .. } => i64::from(*fd),
        Leak::Thread { tid, .. } => i64::from(*tid),
        Leak::Child { pid, .. } => i64::from(*pid),
        Leak::Heap { .. } | Leak::File { .. } => i64::MAX,
    });
    let mut taken = vec![false; leaks.len()];
    for index in order {
        let Some(shape) = shape_of(&leaks[index], test_threads) else { continue };
        taken[index] = left.get_mut(&shape).filter(|left| **left > 0).map(|left| *left -= 1).is_some();
    }
    let (mut take, mut rest) = (Vec::new(), Vec::new());
    for (leak, taken) in leaks.into_iter().zip(taken) {
        if taken {
            take.push(leak);
        } else {
            rest.push(leak);
        }
    }
    (take, rest)
}

/// What the kernel keeps of a thread name: its first 15 bytes.
pub(crate) fn comm_of(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// `worker-12` -> `worker-#`, `pool3` -> `pool#`; `r2d2-worker` unchanged.
fn fold_trailing_number(name: &str) -> String {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() == name.len() {
        name.to_owned()
    } else {
        format!("{stem}#")
    }
}

fn fold_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(fd: i32, target: &str, detail: &str) -> Leak {
        Leak::Fd { fd, target: target.into(), detail: detail.into(), sites: vec![] }
    }

    #[test]
    fn shapes_fold_what_differs_between_processes() {
        let a = fd(5, "socket:[1234]", "unix stream (connected, unnamed)");
        let b = fd(9, "socket:[98]", "unix stream (connected, unnamed)");
        assert_eq!(shape_of(&a, &[]), shape_of(&b, &[]));
        let file = fd(3, "/tmp/db-4130.sqlite", "regular file");
        assert_eq!(shape_of(&file, &[]).unwrap(), "fd /tmp/db-#.sqlite");
        let pipe = fd(3, "pipe:[77]", "pipe, read end; other end held by child `cat` (pid 12)");
        assert_eq!(shape_of(&pipe, &[]).unwrap(), "fd pipe, read end");
    }

    #[test]
    fn thread_names_fold_only_their_trailing_counter() {
        let thread = |name: &str| Leak::Thread {
            tid: 7,
            name: name.into(),
            state: "S".into(),
            unnamed: false,
            waiting_in: None,
            sites: vec![],
        };
        assert_eq!(shape_of(&thread("r2d2-worker-0"), &[]).unwrap(), "thread r2d2-worker-#");
        assert_eq!(shape_of(&thread("r2d2-worker-11"), &[]), shape_of(&thread("r2d2-worker-0"), &[]));
        assert_eq!(shape_of(&thread("h2-conn"), &[]).unwrap(), "thread h2-conn");
        assert_eq!(shape_of(&thread("pool7"), &[]).unwrap(), "thread pool#");
    }

    #[test]
    fn a_child_has_one_program_running_or_zombie() {
        assert_eq!(program_of("/usr/bin/sleep 30"), "sleep");
        assert_eq!(program_of("[sleep]"), "sleep");
        assert_eq!(program_of("/opt/bin/a-very-long-program-name --flag"), program_of("[a-very-long-pro]"));
    }

    #[test]
    fn an_unnamed_thread_has_the_same_shape_whichever_test_started_it() {
        let thread = |name: &str| Leak::Thread {
            tid: 1,
            name: name.into(),
            state: "sleeping".into(),
            unnamed: false,
            waiting_in: None,
            sites: vec![],
        };
        assert_eq!(
            shape_of(&thread("pool::first_tes"), &["pool::first_test"]),
            shape_of(&thread("other::second"), &["other::second"])
        );
        assert_ne!(shape_of(&thread("flusher"), &["a"]), shape_of(&thread("worker"), &["a"]));
    }
}
