//! What a forked child does: run its test (and, reused, the next ones) on
//! a fresh thread between a baseline and a check, and write each record.
//! Never returns to the parent's code.

use std::fs::File;
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::guard::{combine_runs, Finding, Guard};
use crate::options::Options;
use crate::record::{AllowedLeak, Leak, Outcome, TestRecord};
use crate::registry::{ShouldPanic, TestDef};
use crate::temp_dir::Listing;

/// The forked child's work: runs `first`, then, while each test passes
/// clean and `commands` (reuse on) sends more, the tests of `tests` it is
/// sent. Each record goes to `records` as one line, starting with '+' if
/// the child then waits for another test, '-' if it exits. Never returns.
pub(super) fn serve_tests(
    first: &'static TestDef,
    tests: &[&'static TestDef],
    mut commands: Option<File>,
    mut records: File,
    (explain, heap): (bool, bool),
    temp_dir: Option<PathBuf>,
) -> ! {
    let marker = std::env::var(crate::env_names::TEST_ID).ok();
    if let Some(dir) = &temp_dir {
        // SAFETY: no other thread exists in this child yet.
        unsafe { std::env::set_var(crate::temp_dir::TMPDIR_VAR, dir) };
    }
    let mut def = first;
    loop {
        // Under cargo leakcheck, name this test in the marker every process
        // it starts inherits, so an orphan it leaves (invisible from in
        // here) can still be blamed on it. Single-threaded here (no test
        // thread runs between tests), so changing the environment is sound.
        // An explain re-run's processes are not the first run's: its own
        // marker keeps an orphan of it (killed with its group, but maybe not
        // yet gone) from being blamed on the test twice.
        if let Some(marker) = &marker {
            let suffix = if explain { "/explain" } else { "" };
            // SAFETY: no other thread exists in this child between tests.
            unsafe { std::env::set_var(crate::env_names::TEST_ID, format!("{marker}/{}{suffix}", def.full_name())) };
        }
        let files = temp_dir.as_deref().map(Listing::of);
        let before = commands.is_some().then(crate::reuse::ProcessState::read);
        let (mut record, panicked) = run_in_child(def, explain, heap);
        if let (Some(dir), Some(files)) = (&temp_dir, &files) {
            add_files_left(&mut record, &def.options, dir, files);
        }
        let reused = before.is_some_and(|before| {
            !panicked
                && crate::reuse::record_is_clean(&record)
                && crate::reuse::ProcessState::read().allows_reuse_since(&before)
        });
        // The test's output first, so the parent has all of it when the record comes.
        let _ = io::stdout().flush();
        let mut line = vec![if reused { b'+' } else { b'-' }];
        let _ = serde_json::to_writer(&mut line, &record);
        line.push(b'\n');
        let _ = records.write_all(&line);
        let next = commands.as_mut().filter(|_| reused).and_then(|commands| {
            let mut index = [0u8; 4];
            commands.read_exact(&mut index).ok()?;
            tests.get(u32::from_le_bytes(index) as usize).copied()
        });
        match next {
            Some(test) => def = test,
            None => break,
        }
    }
    drop(records);
    // SAFETY: ends the child without running the parent's atexit handlers
    // or destructors, which belong to the parent.
    unsafe { libc::_exit(0) }
}

/// Judges what the test left in its temp dir since `before` by its
/// options, into `record` (empty directories as warnings); its fds' paths
/// in that dir named by `$TMPDIR`.
fn add_files_left(record: &mut TestRecord, options: &Options, dir: &Path, before: &Listing) {
    let (judged, empty_dirs) = crate::temp_dir::judge_left(dir, before, options, &mut record.leaks);
    let allowed = judged.allowed.into_iter().map(|(leak, reason)| AllowedLeak { leak, reason: reason.to_owned() });
    record.allowed.extend(allowed);
    record.warnings.extend(empty_dirs);
    if !judged.leaks.is_empty() && record.outcome == Outcome::Passed {
        record.outcome = Outcome::Leaked;
    }
    record.leaks.extend(judged.leaks);
}

/// Runs one test in the forked child: on a fresh thread named after it,
/// between a baseline and a check. Returns its record and whether it
/// panicked.
///
/// With `explain`, one measured run records where its leaks were created
/// (heap blocks too with `heap`).
fn run_in_child(def: &'static TestDef, explain: bool, heap: bool) -> (TestRecord, bool) {
    let name = def.full_name();
    let runs = if explain { def.options.repeat_runs().min(1) } else { def.options.repeat_runs() };
    // An explain re-run does not settle: the first run already told lasting
    // leaks from passing ones, and only lasting ones are matched.
    let options = if explain { Options { grace_ms: Some(0), ..def.options } } else { def.options };
    // Repeat mode: a first, unmeasured run does the one-time initialisation.
    let mut panicked_once = false;
    if runs > 0 {
        let (result, panicked) = run_on_fresh_thread(def, &name);
        if let Err(message) = result {
            let record = TestRecord {
                message: Some(format!("warm-up run: {message}")),
                ..TestRecord::new("", name, Outcome::Failed)
            };
            return (record, panicked);
        }
        panicked_once |= panicked;
    }
    let mut findings = Vec::new();
    let mut body = Ok(());
    for _ in 0..runs.max(1) {
        let recorder = explain.then(|| crate::sites::Recorder::start(heap));
        let guard = Guard::start_for_thread(&name);
        let panics = PANICS.load(Ordering::Relaxed);
        let (result, panicked) = run_on_fresh_thread(def, &name);
        let panicked = panicked || PANICS.load(Ordering::Relaxed) != panics;
        panicked_once |= panicked;
        let mut finding = guard.and_then(|guard| {
            // See Guard::finish_after_panic.
            if panicked {
                guard.finish_after_panic(&options)
            } else {
                guard.finish(&options)
            }
        });
        if let (Some(recorder), Ok(finding)) = (recorder, &mut finding) {
            recorder.finish(&mut finding.judgement.leaks);
        }
        findings.push(finding);
        body = result;
        if body.is_err() {
            break;
        }
    }
    let (finding, warnings) = match findings.into_iter().collect::<Result<Vec<Finding>, _>>() {
        Ok(findings) if runs > 0 => combine_runs(findings),
        Ok(mut findings) => (findings.pop().unwrap_or_default(), Vec::new()),
        Err(_) => {
            let unchecked = ["fd", "thread", "child", "heap"].map(str::to_owned).to_vec();
            (Finding { unchecked, ..Finding::default() }, Vec::new())
        }
    };
    let mut leaks = finding.judgement.leaks;
    let mut singletons = Vec::new();
    // A leak of the test that ran first in this child may be a singleton it
    // only made because it ran first (see crate::one_time).
    if runs == 0 && !explain && body.is_ok() && !panicked_once && crate::one_time::worth_a_second_run(&leaks) {
        (leaks, singletons) = separate_one_time(def, &name, &options, leaks);
    }
    let allowed = finding
        .judgement
        .allowed
        .into_iter()
        .map(|(leak, reason)| AllowedLeak { leak, reason: reason.to_owned() })
        .collect();
    let (outcome, message) = match body {
        Ok(()) if leaks.is_empty() => (Outcome::Passed, None),
        Ok(()) => (Outcome::Leaked, None),
        Err(message) => (Outcome::Failed, Some(message)),
    };
    let record = TestRecord {
        message,
        leaks,
        allowed,
        warnings,
        unchecked: finding.unchecked,
        closed_fds: finding.closed_fds,
        singletons,
        ..TestRecord::new("", name, outcome)
    };
    (record, panicked_once)
}

/// The test's first run leaked: runs it once more in this child and splits
/// the first run's leaks into its own and the one-time ones. A second run
/// that fails, panics or cannot be checked moves nothing.
fn separate_one_time(def: &'static TestDef, name: &str, options: &Options, leaks: Vec<Leak>) -> (Vec<Leak>, Vec<Leak>) {
    let Ok(guard) = Guard::start_for_thread(name) else { return (leaks, Vec::new()) };
    let panics = PANICS.load(Ordering::Relaxed);
    let (result, panicked) = run_on_fresh_thread(def, name);
    if result.is_err() || panicked || PANICS.load(Ordering::Relaxed) != panics {
        return (leaks, Vec::new());
    }
    match guard.finish(options) {
        Ok(second) => {
            crate::one_time::end_children(&second.judgement.leaks);
            crate::one_time::split(leaks, &second.judgement.leaks, name)
        }
        Err(_) => (leaks, Vec::new()),
    }
}

/// Runs the test once on a fresh thread named `name` (joined, so its
/// thread-locals are gone); returns its verdict and whether it panicked.
fn run_on_fresh_thread(def: &'static TestDef, name: &str) -> (Result<(), String>, bool) {
    let run = def.run;
    let joined = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || catch_unwind(AssertUnwindSafe(run)))
        .map(|handle| handle.join());
    let panicked = matches!(joined, Ok(Err(_)) | Ok(Ok(Err(_))));
    let body = match joined {
        Err(error) => Err(format!("leakcheck could not start the test thread: {error}")),
        Ok(Err(_)) | Ok(Ok(Err(_))) if def.should_panic == ShouldPanic::Yes => Ok(()),
        Ok(Ok(Err(payload))) => match def.should_panic {
            ShouldPanic::WithMessage(expected) => {
                let message = crate::panic_text::payload_text(payload.as_ref());
                if message.contains(expected) {
                    Ok(())
                } else {
                    Err(format!("panic did not contain expected string\n      panic message: {message:?}\n expected substring: {expected:?}"))
                }
            }
            _ => Err(format!("the test panicked: {}", crate::panic_text::payload_text(payload.as_ref()))),
        },
        Ok(Err(_)) => Err("the test thread panicked".to_owned()),
        Ok(Ok(Ok(result))) => match (result, def.should_panic) {
            (Ok(()), ShouldPanic::No) => Ok(()),
            (Ok(()), _) => Err("test did not panic as expected".to_owned()),
            (Err(message), _) => Err(message),
        },
    };
    (body, panicked)
}

/// Panics so far in this process, on any thread (see [`count_panics`]).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic before the usual hook prints it. A panic on any
/// thread of a test (one it spawned and joined, say) may fill std's
/// process-wide backtrace and symbol caches (41 MB with `RUST_BACKTRACE=1`,
/// seen in tempfile's tests), memory that is not the test's to free: after
/// one, the heap is not judged. A test that sets its own hook replaces this
/// one, and its panics then go uncounted.
pub(super) fn count_panics() {
    let usual = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        usual(info);
    }));
}
