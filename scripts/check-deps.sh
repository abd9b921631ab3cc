#!/bin/bash
# check-deps.sh - every target's dependencies in Package.swift are exactly the modules
# its Swift files import: nothing imported that is only reachable transitively, nothing
# declared that no file imports. Modules of the toolchain (Glibc, Foundation, Testing,
# Synchronization, ...) need no declaration and are not counted.
# Prints one line per mismatch and exits 1 if there is any; else one "ok" line.
# Needs swift (swift package dump-package, ~1 s) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
swift package dump-package | python3 -c '
import json, os, re, sys

TOOLCHAIN = {"Swift", "_Concurrency", "Glibc", "Musl", "Darwin", "Foundation", "FoundationEssentials",
             "FoundationNetworking", "Dispatch", "Synchronization", "Testing", "XCTest"}
IMPORT = re.compile(r"^\s*(?:@[\w]+(?:\([^)]*\))?\s+)*import\s+(?:(?:typealias|struct|class|enum|protocol|let|var|func)\s+)?(\w+)")

pkg = json.load(sys.stdin)
problems = 0
for t in pkg["targets"]:
    name = t["name"]
    path = t.get("path") or os.path.join("Tests" if t["type"] == "test" else "Sources", name)
    imports = {}
    for root, _, files in os.walk(path):
        for f in files:
            if not f.endswith(".swift"):
                continue
            with open(os.path.join(root, f)) as fh:
                for line in fh:
                    m = IMPORT.match(line)
                    if m and m.group(1) not in TOOLCHAIN:
                        imports.setdefault(m.group(1), os.path.join(root, f))
    if not imports and not any(f.endswith(".swift") for _, _, fs in os.walk(path) for f in fs):
        continue  # a C target: its includes are not imports
    declared = set()
    for d in t["dependencies"]:
        for kind in ("byName", "target", "product"):
            if kind in d:
                declared.add(d[kind][0])
    for m in sorted(set(imports) - declared):
        print(f"{name}: imports {m} ({imports[m]}) but does not declare it in Package.swift")
        problems += 1
    for m in sorted(declared - set(imports)):
        print(f"{name}: declares {m} in Package.swift but no file imports it")
        problems += 1
if problems:
    print(f"check-deps: {problems} mismatch(es) between Package.swift and the imports")
    sys.exit(1)
n = len(pkg["targets"])
print(f"check-deps: ok ({n} targets: dependencies match the imports)")
'
