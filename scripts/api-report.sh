#!/bin/bash
# api-report.sh - the public surface of every Swift module under Sources/, per module:
# public/open declarations, those without a `///` doc comment, `@unchecked Sendable`
# count; then the 10 largest Swift files (Sources/ and Tests/) by lines, with their code lines.
#
# Usage: scripts/api-report.sh [--missing [MODULE]] [DIR]
#   DIR        a checkout (default: the one this script lives in)
#   --missing  also list every undocumented public declaration as file:line (of MODULE only, if given)
#
# It reads the source text, not the compiler's symbol graph, so it works on any checkout
# (old commits included) without a build. What counts as a public declaration:
#   - a declaration carrying `public` or `open` (func, init, var, let, subscript, type, typealias,
#     case, associatedtype), unless an enclosing type is not public (such a member is not API);
#   - a member with no access modifier inside a `public extension` or a `public protocol`;
#   - each case name of a public enum (`case a, b` is two declarations).
# Extensions themselves are not counted. A declaration is documented when the line above it,
# skipping attribute-only lines (`@inlinable`, `@_spi(X)`, ...), is a `///` line or ends a
# `/** ... */` block. Declarations inside function bodies are never counted.
set -euo pipefail
missing=0; only=""
while [ $# -gt 0 ]; do
  case $1 in
    --missing) missing=1
               if [ $# -gt 1 ] && [ ! -d "$2" ]; then only=$2; shift; fi ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) break ;;
  esac
  shift
done
dir=${1:-$(dirname "$0")/..}
[ -d "$dir/Sources" ] || { echo "api-report.sh: no Sources/ under $dir" >&2; exit 2; }

exec python3 - "$dir" "$missing" "$only" <<'PY'
import os, re, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly

root, show_missing, only = sys.argv[1], sys.argv[2] == "1", sys.argv[3]

MODS = r"(?:public|open|internal|private|fileprivate|package|static|class|final|override|mutating|" \
       r"nonmutating|nonisolated|lazy|weak|unowned|convenience|required|indirect|dynamic|optional|" \
       r"(?:public|private|fileprivate|internal|package|open)\(set\))"
ATTR = r"@[A-Za-z_][\w.]*(?:\([^()]*(?:\([^()]*\)[^()]*)*\))?"
DECL = re.compile(r"^((?:" + ATTR + r"\s*)*)((?:" + MODS + r"\s+)*)" +
                  r"(func|var|let|init|subscript|struct|class|enum|protocol|actor|typealias|" +
                  r"associatedtype|extension|case|macro)(?![\w])")
TYPES = {"struct", "class", "enum", "protocol", "actor", "extension"}
ATTR_ONLY = re.compile(r"^(?:" + ATTR + r"\s*)+$")

def strip(line, state):
    """The line without comments and string contents; state carries /* */ and \"\"\" across lines."""
    out, i, n = [], 0, len(line)
    while i < n:
        if state["block"]:
            j = line.find("*/", i)
            if j < 0: return "".join(out)
            state["block"] = False; i = j + 2; continue
        if state["multi"]:
            j = line.find('"""', i)
            if j < 0: return "".join(out)
            state["multi"] = False; out.append('""'); i = j + 3; continue
        c = line[i]
        if line.startswith("//", i): break
        if line.startswith("/*", i): state["block"] = True; i += 2; continue
        if line.startswith('"""', i): state["multi"] = True; i += 3; continue
        if c == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            out.append('""'); i = j + 1; continue
        out.append(c); i += 1
    return "".join(out)

def case_names(text):
    """Names declared by `case a, b(Int), c = 3` (text after the keyword)."""
    names, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([": depth += 1
        elif ch in ")]": depth -= 1
        elif ch in "{}" and depth == 0: break
        elif ch == "," and depth == 0: names.append(cur); cur = ""; continue
        cur += ch
    names.append(cur)
    return [m.group(1) for m in (re.match(r"\s*`?(\w+)", x) for x in names) if m]

def documented(raw, idx):
    j = idx - 1
    while j >= 0 and ATTR_ONLY.match(raw[j].strip()): j -= 1
    if j < 0: return False
    prev = raw[j].strip()
    if prev.startswith("///"): return True
    if prev.endswith("*/"):
        while j >= 0 and "/*" not in raw[j]: j -= 1
        return j >= 0 and "/**" in raw[j]
    return False

def scan(path):
    raw = open(path, encoding="utf-8", errors="replace").read().split("\n")
    state = {"block": False, "multi": False}
    # Scope stack entries: (kind, public, members implicitly public); kind is a type keyword or "code".
    # An extension counts as public: its members are API when marked (the extended type is elsewhere).
    stack, pending = [], None
    decls, undoc, unchecked, code = 0, [], 0, 0
    for idx, line in enumerate(raw):
        s = strip(line, state)
        unchecked += len(re.findall(r"@unchecked\s+Sendable", s))
        t = s.strip()
        if t: code += 1
        in_code = any(e[0] == "code" for e in stack)
        outer = stack[-1] if stack else ("file", True, False)
        m = DECL.match(t) if not in_code else None
        opener = None
        if m:
            mods = m.group(2).split()
            kw = m.group(3)
            explicit = "public" in mods or "open" in mods
            enclosing_public = all(e[1] for e in stack)
            # Members of a public protocol or a `public extension` are public unless marked otherwise.
            implicit = outer[2] and not any(x in ("internal", "private", "fileprivate", "package") for x in mods)
            is_public = enclosing_public and (explicit or implicit)
            if kw == "case":
                if outer[0] == "enum":
                    if outer[1]:
                        for name in case_names(t[m.end():]):
                            decls += 1
                            if not documented(raw, idx): undoc.append((idx + 1, "case " + name))
                # `case` outside an enum body is a switch/if-case pattern: not a declaration.
            elif kw == "extension":
                opener = ("extension", True, explicit)
            else:
                if is_public:
                    decls += 1
                    if not documented(raw, idx):
                        undoc.append((idx + 1, t[:100]))
                if kw in TYPES:
                    opener = (kw, is_public, kw == "protocol" and is_public)
                # A one-line enum (`enum K { case a, b }`): its cases have no line of their own for a comment.
                inline = re.search(r"\{\s*case\b(.*)", t)
                if kw == "enum" and is_public and inline:
                    for name in case_names(inline.group(1)):
                        decls += 1
                        undoc.append((idx + 1, "case " + name + " (in a one-line enum)"))
        if opener is not None:
            pending = opener
        # Walk the braces of the stripped line to keep the scope stack.
        for ch in s:
            if ch == "{":
                stack.append(pending if pending is not None else ("code", True, False))
                pending = None
            elif ch == "}":
                if stack: stack.pop()
        # A declaration that opens no body on its line (e.g. `public var x: Int`) ends the pending opener
        # only for non-type declarations; a type header may continue onto the next lines.
        if m and opener is None and not in_code:
            pending = pending if pending and pending[0] in TYPES else None
    return len(raw) - (1 if raw and raw[-1] == "" else 0), decls, undoc, unchecked, code

rows, files = [], []
src = os.path.join(root, "Sources")
for mod in sorted(os.listdir(src)):
    mdir = os.path.join(src, mod)
    if not os.path.isdir(mdir): continue
    n_files = n_lines = n_decls = n_unchecked = 0
    missing = []
    for dp, _, fs in os.walk(mdir):
        for f in sorted(fs):
            if not f.endswith(".swift"): continue
            p = os.path.join(dp, f)
            lines, d, u, unc, code = scan(p)
            rel = os.path.relpath(p, root)
            files.append((lines, code, rel))
            n_files += 1; n_lines += lines; n_decls += d; n_unchecked += unc
            missing += [(rel, ln, what) for ln, what in u]
    if n_files == 0: continue
    rows.append((mod, n_files, n_lines, n_decls, len(missing), n_unchecked, missing))

tests = os.path.join(root, "Tests")
if os.path.isdir(tests):
    for dp, _, fs in os.walk(tests):
        for f in fs:
            if f.endswith(".swift"):
                p = os.path.join(dp, f)
                lines, _, _, _, code = scan(p)
                files.append((lines, code, os.path.relpath(p, root)))

w = max(len(r[0]) for r in rows)
print(f"{'module':<{w}}  {'files':>5}  {'lines':>6}  {'public':>6}  {'undoc':>5}  {'unchecked':>9}")
tot = [0, 0, 0, 0, 0]
for mod, nf, nl, nd, nu, nc, _ in rows:
    print(f"{mod:<{w}}  {nf:>5}  {nl:>6}  {nd:>6}  {nu:>5}  {nc:>9}")
    for i, v in enumerate((nf, nl, nd, nu, nc)): tot[i] += v
print(f"{'total':<{w}}  {tot[0]:>5}  {tot[1]:>6}  {tot[2]:>6}  {tot[3]:>5}  {tot[4]:>9}")
print()
print("largest Swift files (Sources/, Tests/), by lines; code: lines left without comments and blanks")
print(f"{'lines':>6}  {'code':>5}  file")
for lines, code, rel in sorted(files, key=lambda x: (-x[0], x[2]))[:10]:
    print(f"{lines:>6}  {code:>5}  {rel}")
if show_missing:
    print()
    print("undocumented public declarations:")
    for mod, *_, miss in rows:
        if only and mod != only: continue
        for rel, ln, what in miss:
            print(f"{rel}:{ln}: {what}")
PY
