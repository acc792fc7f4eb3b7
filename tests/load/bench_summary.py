#!/usr/bin/env python3
"""bench_summary.py -- the summary step of `make bench` (called by tests/load/bench.sh)

    bench_summary.py OUTDIR GOALS [--date D] [--seconds S]

Reads OUTDIR/summary.txt (the "BENCH name value unit [note]" lines of every bench script, in
order), OUTDIR/scripts.txt ("script seconds exit-status" per bench script) and GOALS
(tests/load/goals.txt). Prints one table: every figure with its issue, goal, the limit measured
in the same run and the ratio to it, and a mark per goal (pass, MISS, or NONE when the figure
was not produced); then writes OUTDIR/bench.json with every figure, the per-script durations,
the ferry-load JSON files found in OUTDIR and the list of plots.

The BENCH line format stays what the scripts print; two optional tokens in the note refine it:
  limit=NAME:VALUE   the limit measured in the same run (when it is not a BENCH line of its own)
  goal=OPVALUE       a goal (>=N, >N, <=N, <N) for a figure that goals.txt does not list
Exit status: 0 (misses are reported, not failures; the caller decides).
"""
import glob
import json
import os
import re
import sys

ISSUE_BY_PREFIX = [("rules_", "#3"), ("auth_", "#4"), ("replication_", "#5"), ("stream_", "#6"),
                   ("http_probe", "#6"), ("ferry_rss", "#6"), ("write_", "#7"), ("sdk_", "#8"),
                   ("load_", "#10"), ("soak_", "#10")]
GOAL_RE = re.compile(r"^(>=|<=|>|<)(-?[0-9.]+(?:e[0-9]+)?)$")


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000 or v == int(v):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.0f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"


def short_limit(name):
    for p in ("replication_", "stream_initial_", "write_", "sdk_", "auth_", "rules_"):
        if name.startswith(p):
            name = name[len(p):]
            break
    for s in ("_ops_per_second", "_rows_per_second", "_rows_per_s", "_per_second", "_per_s"):
        if name.endswith(s):
            name = name[: -len(s)]
            break
    return name


def check(goal, v):
    m = GOAL_RE.match(goal or "")
    if not m or v is None:
        return None
    op, g = m.group(1), float(m.group(2))
    return {">=": v >= g, ">": v > g, "<=": v <= g, "<": v < g}[op]


def main():
    out, goals_file = sys.argv[1], sys.argv[2]
    opts = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    goals = {}  # name -> (issue, goal, limit name or None, order)
    for line in open(goals_file, encoding="utf-8"):
        f = [] if line.lstrip().startswith("#") else line.split()
        if len(f) < 3:
            continue
        goals[f[0]] = (f[1], f[2], f[3] if len(f) > 3 and not f[3].startswith("--") else None,
                       len(goals))
    figures, order = {}, []
    summary = os.path.join(out, "summary.txt")
    for line in open(summary, encoding="utf-8", errors="replace") if os.path.exists(summary) else []:
        f = line.rstrip("\n").split(" ", 4)
        if len(f) < 4 or f[0] != "BENCH":
            continue
        name, note = f[1], f[4] if len(f) > 4 else ""
        fig = {"name": name, "value": num(f[2]), "raw_value": f[2], "unit": f[3], "note": note}
        m = re.search(r"\blimit=([A-Za-z0-9_.-]+):(-?[0-9.]+)", note)
        if m:
            fig["limit"] = {"name": m.group(1), "value": float(m.group(2))}
        m = re.search(r"\bgoal=((?:>=|<=|>|<)-?[0-9.]+)", note)
        if m:
            fig["goal"] = m.group(1)
        if name not in figures:
            order.append(name)
        figures[name] = fig
    used_as_limit = {g[2] for g in goals.values() if g[2]}
    rows = []
    for name in list(goals) + [n for n in order if n not in goals]:
        fig = figures.get(name)
        issue, goal, lname, _ = goals.get(name, (None, None, None, 0))
        if fig is None and name not in goals:
            continue
        if fig is None:
            fig = {"name": name, "value": None, "raw_value": None, "unit": "", "note": "not produced"}
            figures[name] = fig
        if issue is None:
            issue = next((i for p, i in ISSUE_BY_PREFIX if name.startswith(p)), "")
        fig["issue"] = issue
        if goal is None:
            goal = fig.get("goal")
        fig["goal"] = goal
        if lname and lname in figures and figures[lname].get("value") is not None:
            fig["limit"] = {"name": lname, "value": figures[lname]["value"]}
        lim = fig.get("limit")
        fig["ratio"] = (round(fig["value"] / lim["value"], 3)
                        if lim and lim["value"] and fig["value"] is not None else None)
        if goal and goal != "report":
            ok = check(goal, fig["value"])
            fig["mark"] = "NONE" if fig["value"] is None else ("pass" if ok else "MISS")
        elif goal == "report":
            fig["mark"] = "NONE" if fig["value"] is None else "reported"
        else:
            fig["mark"] = ""
        if name in used_as_limit and name not in goals:
            fig["is_limit"] = True
            continue
        rows.append(fig)
    rank = {i: k for k, i in enumerate(["#3", "#4", "#5", "#6", "#7", "#8", "#10", ""])}
    rows.sort(key=lambda r: (rank.get(r["issue"], 99), 0 if r["name"] in goals else 1,
                             goals.get(r["name"], (0, 0, 0, 0))[3]))
    hdr = ("issue", "figure", "value", "unit", "goal", "limit (same run)", "ratio", "mark")
    table = []
    for r in rows:
        lim = r.get("limit")
        table.append((r["issue"], r["name"], fmt(r["value"]) if r["value"] is not None else "n/a",
                      r["unit"], r["goal"] or "", f"{short_limit(lim['name'])} {fmt(lim['value'])}" if lim else "",
                      f"{r['ratio']:.3f}" if r["ratio"] is not None else "", r["mark"]))
    w = [max(len(str(x[i])) for x in table + [hdr]) for i in range(len(hdr))]
    line = lambda x: "  " + "  ".join(  # noqa: E731
        (str(v).rjust(w[i]) if i in (2, 6) else str(v).ljust(w[i])) for i, v in enumerate(x)).rstrip()
    print(line(hdr))
    print("  " + "  ".join("-" * n for n in w))
    prev = None
    for x in table:
        if prev is not None and x[0] != prev:
            print()
        prev = x[0]
        print(line(x))
    marks = [r["mark"] for r in rows]
    print(f"\n  goals: {marks.count('pass')} pass, {marks.count('MISS')} MISS, "
          f"{marks.count('NONE')} not produced; {marks.count('reported')} figures reported without a goal")

    scripts = []
    st = os.path.join(out, "scripts.txt")
    for line in open(st, encoding="utf-8") if os.path.exists(st) else []:
        f = line.split()
        if len(f) == 3:
            scripts.append({"script": f[0], "seconds": float(f[1]), "exit": int(f[2])})
    runs = {}
    for p in sorted(glob.glob(os.path.join(out, "*.json"))):
        if os.path.basename(p) == "bench.json":
            continue
        try:
            runs[os.path.basename(p)[:-5]] = json.load(open(p, encoding="utf-8"))
        except (OSError, ValueError) as e:
            runs[os.path.basename(p)[:-5]] = {"error": f"unreadable: {e}"}
    plots = sorted(os.path.relpath(p, out) for ext in ("svg", "png")
                   for p in glob.glob(os.path.join(out, "**", "*." + ext), recursive=True))
    doc = {
        "date": opts.get("--date"),
        "cores": os.cpu_count(),
        "duration_s": num(opts.get("--seconds")),
        "scripts": scripts,
        "goals": {"pass": marks.count("pass"), "miss": marks.count("MISS"),
                  "not_produced": marks.count("NONE")},
        "figures": [figures[n] for n in order] +
                   [f for n, f in figures.items() if n not in order],
        "runs": runs,
        "plots": plots,
    }
    with open(os.path.join(out, "bench.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
