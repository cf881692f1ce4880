//! Sites for zero-config tests: the line of the test's own function that
//! names what leaked.
//!
//! A plain `#[test]` runs no code of ours, so no stack is recorded when it
//! creates something (tracing it from outside would change what it does).
//! What can still be said cheaply and surely: the test function's line that
//! mentions the file it opened, the name it gave its thread, or the program it
//! started. Only the test's own body is searched, and the site says it is a
//! mention (`role: "mentioned"`), never a recorded stack. Leaks with nothing
//! distinctive to look for (an eventfd, an unnamed thread) get none.

use std::path::{Path, PathBuf};

use leakcheck::record::{Site, SiteRole};
use leakcheck::temp_dir::is_path;
use leakcheck::{Leak, TestRecord};

/// Source files searched at most, and their size at most: a bound for huge
/// packages (the search runs for leaking tests only).
const MAX_FILES: usize = 2_000;
const MAX_FILE_BYTES: u64 = 2 << 20;

/// Gives each leak of `record` without a site the line of the test's body
/// (in the package at `package_dir`) that names it, if there is one.
pub(crate) fn attach(record: &mut TestRecord, package_dir: &Path) {
    let function = record.name.rsplit("::").next().unwrap_or(&record.name).to_owned();
    let module = record.name.rsplit("::").nth(1).map(str::to_owned);
    let mut bodies: Option<Vec<Body>> = None;
    for leak in record.leaks.iter_mut().filter(|leak| leak.sites().is_empty()) {
        let needles = needles(leak);
        if needles.is_empty() {
            continue;
        }
        let bodies = bodies.get_or_insert_with(|| test_bodies(package_dir, &function, module.as_deref()));
        let found = needles.iter().find_map(|needle| {
            bodies.iter().find_map(|body| {
                let line = body.lines.iter().position(|line| line.contains(needle.as_str()))?;
                Some((body, body.first_line + line, needle))
            })
        });
        if let Some((body, line, needle)) = found {
            let relative = body.file.strip_prefix(package_dir).unwrap_or(&body.file);
            *leak.sites_mut() = vec![Site {
                location: format!("{}:{line}", relative.display()),
                function: record.name.clone(),
                file: Some(body.file.to_string_lossy().into_owned()),
                line: Some(line as u32),
                frames: vec![format!("mentions {needle}")],
                role: SiteRole::Mentioned,
                bytes: None,
                blocks: None,
            }];
        }
    }
}

/// What to look for in the test's source to find where `leak` was made,
/// the most telling first.
fn needles(leak: &Leak) -> Vec<String> {
    match leak {
        Leak::Fd { target, .. } if is_path(target) && !target.ends_with(" (deleted)") => {
            // A file: its name without the digits a temporary name carries.
            let name = target.rsplit('/').next().unwrap_or(target);
            let longest = name.split(|c: char| c.is_ascii_digit()).max_by_key(|part| part.len()).unwrap_or(name);
            if longest.len() >= 6 {
                vec![longest.to_owned()]
            } else {
                vec![format!("\"{target}\"")]
            }
        }
        Leak::Fd { target, .. } if target.ends_with(" (deleted)") => vec!["tempfile".to_owned()],
        Leak::Fd { detail, .. } if detail.starts_with("tcp listening") || detail.starts_with("udp bound") => {
            vec!["bind(".to_owned()]
        }
        Leak::Fd { detail, .. } if detail.starts_with("tcp ") => vec!["connect(".to_owned(), "accept(".to_owned()],
        Leak::Fd { detail, .. } if detail.starts_with("unix ") => {
            // A named socket by its path's file name, else the type.
            let path = detail.split_whitespace().nth(2).filter(|word| is_path(word));
            let name = path.and_then(|path| path.rsplit('/').next()).filter(|name| name.len() >= 4);
            name.map(str::to_owned).into_iter().chain(["UnixStream".to_owned(), "UnixListener".to_owned()]).collect()
        }
        Leak::Fd { detail, .. } if detail.starts_with("pipe") => vec!["piped()".to_owned(), "pipe(".to_owned()],
        // The kernel keeps 15 bytes of a thread's name.
        Leak::Thread { name, unnamed: false, .. } if name.len() >= 15 => vec![format!("\"{name}")],
        Leak::Thread { name, unnamed: false, .. } if !name.is_empty() => vec![format!("\"{name}\"")],
        Leak::Child { cmdline, orphaned: false, .. } => {
            let Some(program) = cmdline.split_whitespace().next() else { return Vec::new() };
            let program = program.trim_start_matches('[').trim_end_matches(']');
            let program = program.rsplit('/').next().unwrap_or(program);
            if program.is_empty() {
                Vec::new()
            } else {
                vec![format!("\"{program}\"")]
            }
        }
        Leak::File { path, .. } => {
            // Its own name, unless tempfile made it up: then what kept it.
            // In the temp dir, its topmost name; elsewhere, its own name.
            let top = if path.starts_with('/') { path.rsplit('/').next() } else { path.split('/').next() };
            let top = top.unwrap_or(path);
            let kept = ["keep(", "into_path(", "persist(", "forget("].map(str::to_owned);
            if top.starts_with(".tmp") || top.len() < 4 {
                kept.into()
            } else {
                std::iter::once(format!("{top}\"")).chain(kept).collect()
            }
        }
        _ => Vec::new(),
    }
}

/// One test function's body: its file, the line number of its first line,
/// and its lines.
struct Body {
    file: PathBuf,
    first_line: usize,
    lines: Vec<String>,
}

/// The bodies of every `fn <function>(` in the package's sources; when the
/// test is in a module, bodies in files that mention `mod <module>` (or are
/// named after it) first.
fn test_bodies(package_dir: &Path, function: &str, module: Option<&str>) -> Vec<Body> {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        collect_rust_files(&package_dir.join(dir), &mut files);
    }
    let signature = format!("fn {function}(");
    let mut bodies: Vec<(bool, Body)> = Vec::new();
    for file in files {
        let Ok(source) = std::fs::read_to_string(&file) else { continue };
        if !source.contains(&signature) {
            continue;
        }
        let in_module = module.is_some_and(|module| {
            source.contains(&format!("mod {module}")) || file.file_stem().is_some_and(|stem| stem == module)
        });
        let lines: Vec<&str> = source.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let Some(at) = line.find(&signature) else { continue };
            if at > 0 && !line[..at].ends_with(|c: char| c.is_whitespace()) {
                continue;
            }
            let end = body_end(&lines, index);
            let body = lines[index..=end].iter().map(|line| (*line).to_owned()).collect();
            bodies.push((in_module, Body { file: file.clone(), first_line: index + 1, lines: body }));
        }
    }
    // Files of the test's module first, in a stable order otherwise.
    bodies.sort_by_key(|(in_module, _)| !in_module);
    bodies.into_iter().map(|(_, body)| body).collect()
}

/// The index of the line that closes the function starting at `start`:
/// braces counted from its first `{` (an approximation that ignores braces
/// in strings and comments, good enough to bound a search).
fn body_end(lines: &[&str], start: usize) -> usize {
    let mut depth = 0i32;
    let mut opened = false;
    for (index, line) in lines.iter().enumerate().skip(start) {
        for c in line.chars() {
            match c {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        if opened && depth <= 0 {
            return index;
        }
    }
    lines.len().saturating_sub(1)
}

fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        if files.len() >= MAX_FILES {
            return;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => collect_rust_files(&path, files),
            Ok(kind)
                if kind.is_file()
                    && path.extension().is_some_and(|ext| ext == "rs")
                    && entry.metadata().is_ok_and(|meta| meta.len() <= MAX_FILE_BYTES) =>
            {
                files.push(path)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leak_is_found_by_what_the_test_body_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        std::fs::write(
            dir.path().join("tests/io.rs"),
            "mod fd {\n    #[test]\n    fn keeps_log() {\n        let f = File::create(\"/tmp/app-log.txt\");\n        \
             std::thread::Builder::new().name(\"flusher\".into());\n        Command::new(\"sleep\").spawn();\n    }\n}\n\
             fn keeps_log_helper() { File::create(\"/tmp/app-log.txt\"); }\n",
        )
        .unwrap();
        let mut record = TestRecord::new("pkg::io", "fd::keeps_log", leakcheck::Outcome::Leaked);
        record.leaks = vec![
            Leak::Fd { fd: 3, target: "/tmp/app-log.txt".into(), detail: "regular file".into(), sites: vec![] },
            Leak::Thread {
                tid: 9,
                name: "flusher".into(),
                state: "sleeping".into(),
                unnamed: false,
                waiting_in: None,
                sites: vec![],
            },
            Leak::Child {
                pid: 7,
                cmdline: "/bin/sleep 30".into(),
                state: "sleeping".into(),
                orphaned: false,
                age_ms: None,
                sites: vec![],
            },
            Leak::Fd { fd: 4, target: "anon_inode:[eventfd]".into(), detail: "eventfd".into(), sites: vec![] },
        ];
        attach(&mut record, dir.path());
        let locations: Vec<Vec<&str>> =
            record.leaks.iter().map(|leak| leak.sites().iter().map(|site| site.location.as_str()).collect()).collect();
        assert_eq!(locations, [vec!["tests/io.rs:4"], vec!["tests/io.rs:5"], vec!["tests/io.rs:6"], vec![]]);
        assert_eq!(record.leaks[0].sites()[0].role, SiteRole::Mentioned);
    }
}
