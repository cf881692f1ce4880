#!/usr/bin/env python3
"""The house rules of the source tree, checked from the code itself.

For each crate (a `src/` directory with `main.rs` or `lib.rs`):
  - no import cycle between files: edges come from `use crate::...`,
    `use super::...` and inline `crate::`/`super::`/`self::` paths, resolved
    to the file that defines the module they name (through `pub use`
    re-exports of a `mod.rs`);
  - no source file over 600 lines, no function over 100 lines, code in
    `#[cfg(test)]` modules excepted.

Usage: scripts/check_layout.py [CRATE_SRC_DIR ...]
Exit status 1 with one line per violation; 0 when the tree is clean.
"""

import os
import re
import sys

MAX_FILE_LINES = 600
MAX_FN_LINES = 100
DEFAULT_CRATES = ["cargo-leakcheck/src", "harness/src", "harness/macros/src"]


def strip_code(text):
    """Blanks comments, strings and char literals (newlines kept), so braces
    and paths are read from code only."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            m = re.match(r"'(\\[^']*|[^\\'])'", text[i:i + 12])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(code, open_at):
    depth = 0
    for j in range(open_at, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def test_spans(code):
    """Byte spans of `#[cfg(test)]` items (test modules and helpers)."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?(mod|fn|impl)\b[^{;]*\{", code):
        spans.append((m.start(), matching_brace(code, m.end() - 1)))
    return spans


def in_spans(pos, spans):
    return any(a <= pos <= b for a, b in spans)


class Crate:
    def __init__(self, src):
        self.src = src
        root = "main.rs" if os.path.exists(os.path.join(src, "main.rs")) else "lib.rs"
        self.root = os.path.join(src, root)
        self.files = {}  # path -> module path (tuple)
        self._collect(self.root, ())

    def _collect(self, path, modpath):
        self.files[path] = modpath
        code = strip_code(open(path).read())
        spans = test_spans(code)
        raw = open(path).read()
        for m in re.finditer(r"(?m)^\s*(pub(\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code):
            if in_spans(m.start(), spans):
                continue
            name = m.group(3)
            base = os.path.dirname(path) if os.path.basename(path) in ("mod.rs", "main.rs", "lib.rs") else path[:-3]
            candidates = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            # `#[path = "file.rs"]` on the line(s) above the declaration.
            attr = re.search(r'#\[path\s*=\s*"([^"]+)"\]\s*$', raw[max(0, m.start() - 200):m.start()])
            if attr:
                candidates = [os.path.join(os.path.dirname(path), attr.group(1))]
            for candidate in candidates:
                if os.path.exists(candidate):
                    self._collect(candidate, modpath + (name,))
                    break

    def file_of(self, modpath):
        for path, mp in self.files.items():
            if mp == modpath:
                return path
        return None

    def reexports(self, path):
        """name -> absolute module path it comes from, for `pub use` in a file."""
        code = strip_code(open(path).read())
        out = {}
        for m in re.finditer(r"\bpub(\([^)]*\))?\s+use\s+([^;]+);", code):
            for full in expand_use(m.group(2)):
                parts = full.split("::")
                name = parts[-1].split(" as ")[-1].strip()
                absolute = self.absolute(parts[:-1], self.files[path], path)
                if absolute is not None:
                    out[name] = absolute
        return out

    def absolute(self, parts, modpath, path):
        """Resolves the leading crate/super/self of a path to a module path."""
        if not parts:
            return tuple(modpath)
        here = list(modpath)
        head, rest = parts[0], parts[1:]
        if head == "crate":
            return tuple(rest)
        if head == "self":
            return tuple(here + rest)
        if head == "super":
            base = here[:-1]
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
            return tuple(base + rest)
        # A path relative to this module (a child module) or an extern crate.
        if self.file_of(tuple(here + [head])) is not None:
            return tuple(here + parts)
        return None

    def target_file(self, modpath, seen=None):
        """The file that defines the deepest module of `modpath`, following
        re-exports of the items named after it."""
        seen = seen or set()
        best, depth = None, 0
        for k in range(len(modpath), -1, -1):
            f = self.file_of(tuple(modpath[:k]))
            if f is not None:
                best, depth = f, k
                break
        if best is None:
            return None
        if depth < len(modpath) and best not in seen:
            item = modpath[depth]
            exports = self.reexports(best)
            if item in exports:
                seen.add(best)
                return self.target_file(exports[item] + tuple(modpath[depth + 1:]), seen) or best
        return best

    def edges(self):
        edges = {}
        for path, modpath in self.files.items():
            code = strip_code(open(path).read())
            spans = test_spans(code)
            targets = set()
            for m in re.finditer(r"\buse\s+([^;]+);", code):
                if in_spans(m.start(), spans):
                    continue
                for full in expand_use(m.group(1)):
                    parts = [p.split(" as ")[0].strip() for p in full.split("::")]
                    if parts[0] not in ("crate", "super", "self") and self.file_of(tuple(list(modpath) + [parts[0]])) is None:
                        continue
                    absolute = self.absolute(parts, modpath, path)
                    if absolute is not None:
                        targets.add(self.target_file(absolute))
            for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", code):
                if in_spans(m.start(), spans) or code[max(0, m.start() - 4):m.start()].strip().endswith("use"):
                    continue
                absolute = self.absolute(m.group(1).split("::"), modpath, path)
                if absolute is not None:
                    targets.add(self.target_file(absolute))
            targets.discard(None)
            targets.discard(path)
            # A parent declaring its children is not an import.
            edges[path] = targets
        return edges


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", " ", tree).strip()

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur.strip():
            parts.append(cur)
        return [p.strip() for p in parts if p.strip()]

    def walk(s):
        s = s.strip()
        brace = s.find("{")
        if brace < 0:
            return [s]
        prefix = s[:brace].rstrip(":").strip()
        inner = s[brace + 1:s.rfind("}")]
        out = []
        for part in split_top(inner):
            for sub in walk(part):
                if sub == "self":
                    out.append(prefix)
                elif prefix:
                    out.append(prefix + "::" + sub)
                else:
                    out.append(sub)
        return out

    # A glob import (`a::*`) depends on the module it names.
    return [p[:-3] if p.endswith("::*") else p for p in walk(tree) if p and p != "*"]


def find_cycles(edges):
    """Strongly connected components with more than one file."""
    index, low, stack, on_stack, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sccs


def long_functions(path):
    code = strip_code(open(path).read())
    spans = test_spans(code)
    out = []
    for m in re.finditer(r"\bfn\s+(\w+)\s*(<[^{;]*?>)?\s*\(", code):
        if in_spans(m.start(), spans):
            continue
        # The body starts at the first `{` after the signature (or there is
        # none: a trait method declaration ends with `;`).
        j = m.end()
        depth = 1
        while j < len(code) and depth:
            depth += {"(": 1, ")": -1}.get(code[j], 0)
            j += 1
        semi, brace = code.find(";", j), code.find("{", j)
        if brace < 0 or (0 <= semi < brace):
            continue
        end = matching_brace(code, brace)
        lines = code.count("\n", m.start(), end) + 1
        if lines > MAX_FN_LINES:
            out.append((m.group(1), code.count("\n", 0, m.start()) + 1, lines))
    return out


def main(argv):
    if not argv[1:]:
        os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    crates = argv[1:] or DEFAULT_CRATES
    problems = []
    for src in crates:
        crate = Crate(src)
        for cycle in find_cycles(crate.edges()):
            problems.append(f"import cycle in {src}: " + " <-> ".join(os.path.relpath(p, src) for p in cycle))
        for path in sorted(crate.files):
            code = strip_code(open(path).read())
            spans = test_spans(code)
            test_lines = sum(code.count("\n", a, b) + 1 for a, b in spans)
            lines = code.count("\n") + 1 - test_lines
            if lines > MAX_FILE_LINES:
                problems.append(f"{path}: {lines} lines outside tests (at most {MAX_FILE_LINES})")
            for name, line, length in long_functions(path):
                problems.append(f"{path}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES})")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"layout: {', '.join(crates)}: no import cycle, no file over {MAX_FILE_LINES} lines, no function over {MAX_FN_LINES} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
