#!/usr/bin/python3
"""check_layers.py - the include-and-call graph of bridge/ and transports/ must have no cycle.

One node per .c file of bridge/ and transports/. An arrow A -> B when
- A includes B.h (collapsed into B.c), directly; the includes are the `#include "..."`
  lines of A resolved the way the compiler does it, kept only if `cc -MM` (with A's
  flags from compile_commands.json: the project's -I, -D, -std) says A's translation
  unit really uses the header. A header with no .c of its own (transport_ops.h,
  vm_manager_internal.h, ...) is see-through: including it is including what it
  includes;
- A calls or reads something B defines: an undefined symbol of A's object file (nm -u)
  that B's object file defines (nm --defined-only, global symbols).
Every strongly connected component of more than one file is a cycle: the check
lists each, with every arrow inside it and the names that tie the arrow
(the headers, the symbols), and exits 1. No cycle: exits 0.

    check_layers.py [--build DIR] [--source DIR]       the check (ctest "layers")
    check_layers.py --floors                          each file's floor: 1 + the highest
                                                      floor of what it uses (a cycle
                                                      shares one floor), bottom first
    check_layers.py --dot > layers.dot                the graph for Graphviz, one rank per
                                                      floor, each arrow labelled with its names
    check_layers.py --arrows                          every arrow, with its names

The objects are those of the build directory (default <source>/build), so run it
after a build; compile_commands.json comes from CMAKE_EXPORT_COMPILE_COMMANDS, which
CMakeLists.txt sets.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys

DIRS = ("bridge", "transports")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def parse_args():
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=here)
    ap.add_argument("--build", default=None)
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--floors", action="store_true")
    out.add_argument("--dot", action="store_true")
    out.add_argument("--arrows", action="store_true")
    a = ap.parse_args()
    a.source = os.path.abspath(a.source)
    a.build = os.path.abspath(a.build or os.path.join(a.source, "build"))
    return a


class Unit:
    """One .c of bridge/ or transports/: its compile command, object, flags."""

    def __init__(self, src, rel, entry):
        self.rel = rel
        self.directory = entry["directory"]
        argv = entry.get("arguments") or shlex.split(entry["command"])
        self.flags = []  # what cc -MM needs: includes, defines, standard
        self.obj = None
        i = 0
        while i < len(argv):
            a = argv[i]
            if a == "-o":
                self.obj = os.path.join(self.directory, argv[i + 1])
                i += 2
                continue
            if a in ("-I", "-D", "-isystem", "-include", "-iquote"):
                self.flags += [a, argv[i + 1]]
                i += 2
                continue
            if a.startswith(("-I", "-D", "-std=", "-isystem", "-iquote")):
                self.flags.append(a)
            i += 1
        self.include_dirs = [os.path.join(self.directory, f[2:]) for f in self.flags
                             if f.startswith("-I") and len(f) > 2]
        self.include_dirs += [os.path.join(self.directory, self.flags[k + 1])
                              for k, f in enumerate(self.flags) if f in ("-I", "-iquote")]


def load_units(a):
    path = os.path.join(a.build, "compile_commands.json")
    try:
        with open(path) as f:
            db = json.load(f)
    except FileNotFoundError:
        sys.exit("check_layers: %s is missing: configure the build first "
                 "(CMakeLists.txt sets CMAKE_EXPORT_COMPILE_COMMANDS)" % path)
    units = {}
    for e in db:
        src = os.path.normpath(os.path.join(e["directory"], e["file"]))
        rel = os.path.relpath(src, a.source)
        if rel.split(os.sep)[0] in DIRS and rel.endswith(".c") and rel not in units:
            units[rel] = Unit(src, rel, e)
    if not units:
        sys.exit("check_layers: no bridge/ or transports/ file in %s" % path)
    return units


def used_headers(a, u):
    """The project headers (relative paths) cc -MM says u's translation unit uses."""
    r = subprocess.run(["cc", "-MM"] + u.flags + [os.path.join(a.source, u.rel)],
                       cwd=u.directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("check_layers: cc -MM %s failed:\n%s" % (u.rel, r.stderr))
    deps = r.stdout.replace("\\\n", " ").split(":", 1)[1].split()
    out = set()
    for d in deps:
        rel = os.path.relpath(os.path.normpath(os.path.join(u.directory, d)), a.source)
        if rel.split(os.sep)[0] in DIRS and rel.endswith(".h"):
            out.add(rel)
    return out


def direct_includes(a, rel, include_dirs):
    """The project headers rel names in #include "...", resolved like the compiler:
    first rel's own directory, then the -I directories."""
    with open(os.path.join(a.source, rel), encoding="utf-8", errors="replace") as f:
        text = f.read()
    out = []
    for name in INCLUDE.findall(text):
        for d in [os.path.dirname(os.path.join(a.source, rel))] + include_dirs:
            p = os.path.normpath(os.path.join(d, name))
            if os.path.exists(p):
                r = os.path.relpath(p, a.source)
                if r.split(os.sep)[0] in DIRS:
                    out.append(r)
                break
    return out


def nm(obj, *opts):
    r = subprocess.run(["nm", "-g"] + list(opts) + [obj], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("check_layers: nm %s failed (build first?):\n%s" % (obj, r.stderr))
    return [line.split()[-1] for line in r.stdout.splitlines() if line.strip()]


def build_graph(a, units):
    """{file: {target: set(names)}} over the .c files."""
    owner = {os.path.splitext(rel)[0] + ".h": rel for rel in units}

    def through(header, include_dirs, seen):
        """The .c files including header stands for (see-through for headers with no .c)."""
        if header in owner:
            return {owner[header]: header}
        if header in seen:
            return {}
        seen.add(header)
        got = {}
        for h in direct_includes(a, header, include_dirs):
            for c, via in through(h, include_dirs, seen).items():
                got.setdefault(c, "%s (via %s)" % (via, os.path.basename(header)))
        return got

    edges = {rel: {} for rel in units}
    for rel, u in units.items():
        used = used_headers(a, u)
        for h in direct_includes(a, rel, u.include_dirs):
            if h not in used:
                continue
            for c, via in through(h, u.include_dirs, set()).items():
                if c != rel:
                    edges[rel].setdefault(c, set()).add("#include " + os.path.basename(via))

    defined = {}
    for rel, u in units.items():
        if not u.obj or not os.path.exists(u.obj):
            sys.exit("check_layers: object of %s (%s) is missing: build first" % (rel, u.obj))
        for sym in nm(u.obj, "--defined-only"):
            defined.setdefault(sym, rel)
    for rel, u in units.items():
        for sym in nm(u.obj, "-u"):
            c = defined.get(sym)
            if c and c != rel:
                edges[rel].setdefault(c, set()).add(sym)
    return edges


def sccs(nodes, edges):
    """Tarjan's strongly connected components, iteratively."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def floors(nodes, edges, comps):
    """{file: floor}: 1 + the highest floor of what the file (its component) uses."""
    comp_of = {n: i for i, c in enumerate(comps) for n in c}
    floor = {}

    def of(i):
        if i in floor:
            return floor[i]
        floor[i] = 0  # guards recursion; components form a DAG
        below = [of(comp_of[t]) for n in comps[i] for t in edges[n] if comp_of[t] != i]
        floor[i] = 1 + max(below, default=0)
        return floor[i]

    sys.setrecursionlimit(10000)
    return {n: of(comp_of[n]) for n in nodes}


def names(s, limit=None):
    incl = sorted(x for x in s if x.startswith("#include"))
    syms = sorted(x for x in s if not x.startswith("#include"))
    out = incl + syms
    if limit and len(out) > limit:
        out = out[:limit] + ["... %d more" % (len(out) - limit)]
    return ", ".join(out)


def main():
    a = parse_args()
    units = load_units(a)
    edges = build_graph(a, units)
    nodes = sorted(units)
    comps = sccs(nodes, edges)
    cycles = [c for c in comps if len(c) > 1]
    fl = floors(nodes, edges, comps)

    if a.arrows:
        for n in nodes:
            for t in sorted(edges[n]):
                print("%s -> %s: %s" % (n, t, names(edges[n][t])))
        return 0
    if a.floors:
        in_cycle = {n for c in cycles for n in c}
        for n in sorted(nodes, key=lambda n: (fl[n], n)):
            print("%2d  %s%s" % (fl[n], n, "  (cycle)" if n in in_cycle else ""))
        return 0
    if a.dot:
        print("digraph layers {\n  rankdir=BT;\n  node [shape=box, fontsize=10];")
        for f in sorted(set(fl.values())):
            same = " ".join('"%s"' % n for n in nodes if fl[n] == f)
            print("  { rank=same; %s }" % same)
        in_cycle = {n for c in cycles for n in c}
        for n in nodes:
            if n in in_cycle:
                print('  "%s" [color=red];' % n)
            for t in sorted(edges[n]):
                up = fl[t] >= fl[n]
                print('  "%s" -> "%s" [label="%s", fontsize=7%s];'
                      % (n, t, names(edges[n][t], 3).replace('"', "'"), ", color=red" if up else ""))
        print("}")
        return 0

    print("check_layers: %d files, %d arrows, %d floors"
          % (len(nodes), sum(len(e) for e in edges.values()), max(fl.values())))
    if not cycles:
        print("no cycle")
        return 0
    for i, c in enumerate(cycles, 1):
        print("\ncycle %d: %d files: %s" % (i, len(c), " ".join(c)))
        members = set(c)
        for n in c:
            for t in sorted(edges[n]):
                if t in members:
                    print("  %s -> %s: %s" % (n, t, names(edges[n][t])))
    print("\nFAIL: %d cycle(s) in the include-and-call graph of %s"
          % (len(cycles), " and ".join(d + "/" for d in DIRS)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
