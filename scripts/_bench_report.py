"""Results of the image-registration benchmark: the accumulating store (results.json) and its report.

The report, rendered from the store alone (so runs split over several invocations make one table): the per-case
table (a ``before`` row with the identity map's measures, then one row per method), the per-peer summary (our
wins / ties / losses in each label's Dice, a tie within ±0.002, and in mean map error, a tie within ±0.05 mm;
median and worst time ratio ours / peer per thread setting), a per-image summary, and the goals of issue 12
section 2, each PASS / FAIL with its worst case. Accuracy is read from the 1-thread run when there is one.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile

import numpy as np

DICE_TIE, ERR_TIE = 0.002, 0.05
MEMORY_LIMIT_MB = 24 * 1024
PEERS = ("dipy", "ants", "ants_long", "sitk")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class Store:
    """``OUT/results.json``: ``runs`` (one entry per invocation), ``cases`` (name -> definition and checks) and
    ``results`` (``"case|method|threads"`` -> measures); rewritten atomically after every change."""

    def __init__(self, out: str):
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "results.json")
        if os.path.exists(self.path):
            with open(self.path) as fh:
                self.data = json.load(fh)
        else:
            self.data = {"version": 1, "runs": [], "cases": {}, "results": {}}

    @staticmethod
    def threads_label(threads) -> str:
        return "default" if threads is None else str(threads)

    def key(self, name, method, threads) -> str:
        return f"{name}|{method}|{self.threads_label(threads)}"

    def done(self, name, method, threads) -> bool:
        rec = self.data["results"].get(self.key(name, method, threads))
        return rec is not None and "error" not in rec

    def add_run(self, info: dict) -> None:
        self.data["runs"].append(info)
        self.save()

    def set_case(self, name: str, meta: dict) -> None:
        self.data["cases"][name] = meta
        self.save()

    def set_result(self, name, method, threads, res: dict) -> None:
        self.data["results"][self.key(name, method, threads)] = dict(res, run=len(self.data["runs"]) - 1)
        self.save()

    def save(self) -> None:
        _atomic_write(self.path, json.dumps(self.data, indent=1, default=_json_default))

    def write_text(self, filename: str, text: str) -> None:
        _atomic_write(os.path.join(self.out, filename), text)

    def work_dir(self, name: str) -> str:
        return os.path.join(self.out, ".work", name.replace("/", "__"))

    def drop_work(self, name: str) -> None:
        shutil.rmtree(self.work_dir(name), ignore_errors=True)


# --------------------------------------------------------------------------------------------------- lookups

def _rec(data, name, method, label):
    rec = data["results"].get(f"{name}|{method}|{label}")
    return None if rec is None or "error" in rec else rec


def _acc(data, name, method, labels):
    """The record whose accuracy the report uses: the 1-thread run if any, else the first setting present."""
    for label in ["1"] + [t for t in labels if t != "1"]:
        rec = _rec(data, name, method, label)
        if rec is not None:
            return rec
    return None


def _dice(rec) -> dict:
    return {k[5:]: v for k, v in rec.items() if k.startswith("dice_")}


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def _table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |" for r in [header] + rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- tables

def _cells(recs, labels):
    """Per thread setting: wall s and CPU s; then per setting: peak MB (registration + libraries)."""
    ok = [r if r is not None and "error" not in r else None for r in recs]
    times = [c for r in ok for c in (_f(r and r["seconds"], "{:.1f}"), _f(r and r["cpu_seconds"], "{:.1f}"))]
    return times + [_f(r and r["peak_mb"] + r["lib_mb"], "{:.0f}") for r in ok]


def case_table(data, names, methods, labels) -> str:
    header = ["case", "method"] + [c for t in labels for c in (f"s @{t}", f"cpu s @{t}")] + \
        [f"MB @{t}" for t in labels] + ["Dice", "err mm", "err95 mm", "NDV %", "SDlogJ"]
    rows = []
    for name in names:
        if name not in data["cases"]:
            continue
        b = data["cases"][name].get("before", {})
        rows.append([name, "before"] + [""] * (len(header) - 7) + [
            "/".join(f"{v:.3f}" for v in _dice(b).values()), _f(b.get("mean_error_mm"), "{:.2f}"),
            _f(b.get("p95_error_mm"), "{:.2f}"), "", ""])
        for m in methods:
            recs = [data["results"].get(f"{name}|{m}|{t}") for t in labels]
            if all(r is None for r in recs):
                continue
            errors = [f"@{t}: {r['error']}" for r, t in zip(recs, labels) if r is not None and "error" in r]
            acc = _acc(data, name, m, labels)
            row = [name, m] + _cells(recs, labels)
            if acc is None:
                rows.append(row + ["failed " + errors[0][:80], "", "", "", ""])
                continue
            rows.append(row + ["/".join(f"{v:.3f}" for v in _dice(acc).values()),
                               _f(acc.get("mean_error_mm"), "{:.2f}"), _f(acc.get("p95_error_mm"), "{:.2f}"),
                               _f(acc["ndv_percent"], "{:.3f}"), _f(acc["sdlogj"], "{:.3f}")])
            rows += [[name, m, "failed " + e[:80]] + [""] * (len(header) - 3) for e in errors]
    return _table(header, rows)


def case_list(data, names) -> str:
    """What each case is: warp family and parameters, the truth's size and checks, the perturbation."""
    skip = {"image", "family", "seed", "perturbation", "before", "shape", "spacing", "kind", "target_max_mm",
            "max_displacement_mm", "truth_jacobian_min", "truth_jacobian_max", "residual_max_mm", "build_seconds",
            "note", "grad_cap"}
    rows = []
    for name in names:
        m = data["cases"].get(name)
        if m is None:
            continue
        params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()
                           if k not in skip)
        rows.append([name, "x".join(str(n) for n in m.get("shape", [])),
                     "/".join(f"{s:g}" for s in m.get("spacing", [])), _f(m.get("max_displacement_mm"), "{:.1f}"),
                     f"{m['truth_jacobian_min']:.2f}-{m['truth_jacobian_max']:.2f}" if "truth_jacobian_min" in m
                     else "-", _f(m.get("residual_max_mm"), "{:.0e}"), params or m.get("note", "")])
    return _table(["case", "shape", "voxel mm", "max disp mm", "det DT", "residual mm", "parameters"], rows) if rows \
        else ""


def _wtl(diffs, tie, higher_better=True):
    w = sum(1 for d in diffs if (d > tie if higher_better else d < -tie))
    ls = sum(1 for d in diffs if (d < -tie if higher_better else d > tie))
    return f"{w}/{len(diffs) - w - ls}/{ls}"


def _ratios(data, names, peer, label, key="seconds"):
    """``(ours / peer, case)`` of ``key`` (wall ``seconds`` or ``cpu_seconds``) for the cases with both."""
    out = []
    for name in names:
        a, b = _rec(data, name, "ours", label), _rec(data, name, peer, label)
        if a is not None and b is not None:
            out.append((a[key] / max(b[key], 1e-9), name))
    return out


def _med_worst(r) -> str:
    return f"{statistics.median(x for x, _ in r):.2f} ({max(r)[0]:.2f} {max(r)[1]})" if r else "-"


def peer_summary(data, names, labels) -> str:
    header = ["peer", "Dice W/T/L", "by label", "err W/T/L"] + \
        [f"time ours/peer @{t}: median (worst)" for t in labels] + ["cpu s ours/peer @1"]
    rows = []
    for peer in PEERS:
        dd, de = {}, []
        for name in names:
            a, b = _acc(data, name, "ours", labels), _acc(data, name, peer, labels)
            if a is None or b is None:
                continue
            da, db = _dice(a), _dice(b)
            for k in da:
                if k in db:
                    dd.setdefault(k, []).append(da[k] - db[k])
            if "mean_error_mm" in a and "mean_error_mm" in b:
                de.append(a["mean_error_mm"] - b["mean_error_mm"])
        if not dd:
            continue
        times = [_med_worst(_ratios(data, names, peer, t)) for t in labels]
        times.append(_med_worst(_ratios(data, names, peer, "1", "cpu_seconds")))
        rows.append([peer, _wtl([x for v in dd.values() for x in v], DICE_TIE),
                     ", ".join(f"{k} {_wtl(v, DICE_TIE)}" for k, v in dd.items()),
                     _wtl(de, ERR_TIE, higher_better=False) if de else "-"] + times)
    return _table(header, rows) if rows else "(no case with ours and a peer)"


def _margins(data, names, labels):
    """Per case: (min over labels of ours - best peer Dice, its label/peer, ours - best peer error or None)."""
    out = {}
    for name in names:
        a = _acc(data, name, "ours", labels)
        peers = {p: _acc(data, name, p, labels) for p in PEERS}
        peers = {p: r for p, r in peers.items() if r is not None}
        if a is None or not peers:
            continue
        dice = []
        for k, v in _dice(a).items():
            best_p = max(peers, key=lambda p: _dice(peers[p]).get(k, -1.0))
            dice.append((v - _dice(peers[best_p]).get(k, -1.0), f"{k} {v:.3f} vs {best_p} "
                         f"{_dice(peers[best_p]).get(k, -1.0):.3f}"))
        err = None
        if "mean_error_mm" in a:
            best_p = min(peers, key=lambda p: peers[p].get("mean_error_mm", np.inf))
            e = peers[best_p].get("mean_error_mm")
            if e is not None:
                err = (a["mean_error_mm"] - e, f"{a['mean_error_mm']:.2f} vs {best_p} {e:.2f} mm")
        out[name] = (min(dice), err)
    return out


def _goal(rows, goal, label, ok, worst):
    rows.append([goal, label, "n/a" if ok is None else ("PASS" if ok else "FAIL"), worst])


def _mem(rec):
    return rec["peak_mb"] + rec["lib_mb"]


def goals(data, names, labels) -> str:
    """Issue 12, section 2: each goal PASS / FAIL (n/a without data) with its worst case."""
    rows = []
    marg = _margins(data, names, labels)
    if marg:
        name, ((d, why), _) = min(marg.items(), key=lambda kv: kv[1][0][0])
        _goal(rows, f"Dice (each label) >= best peer - {DICE_TIE}", "acc", d >= -DICE_TIE, f"{name}: {why}")
    errs = {n: m[1] for n, m in marg.items() if m[1] is not None}
    if errs:
        name, (e, why) = max(errs.items(), key=lambda kv: kv[1][0])
        _goal(rows, f"map error <= best peer + {ERR_TIE} mm", "acc", e <= ERR_TIE, f"{name}: {why}")
    ndv = [(r["ndv_percent"], n) for n in names for r in [_acc(data, n, "ours", labels)] if r is not None]
    if ndv:
        _goal(rows, "NDV = 0", "acc", max(ndv)[0] == 0, f"{max(ndv)[1]}: {max(ndv)[0]:.4f} %")
    for t in labels:
        r = _ratios(data, names, "dipy", t)
        if r:
            _goal(rows, "never slower than dipy SyN", t, max(r)[0] <= 1.0, f"{max(r)[1]}: {max(r)[0]:.2f}x")
            med = statistics.median(x for x, _ in r)
            _goal(rows, "median time <= 0.5x dipy SyN", t, med <= 0.5, f"median {med:.2f}x over {len(r)} cases")
        big = [n for n in names if n.startswith("mni1/")]
        rb = [x for x in r if x[1] in big]
        if rb:
            _goal(rows, "MNI 1 mm: time <= 0.5x dipy SyN", t, max(rb)[0] <= 0.5, f"{max(rb)[1]}: {max(rb)[0]:.2f}x")
        worst = None
        for n in big:
            ours = _rec(data, n, "ours", t)
            for p in ("dipy", "ants"):
                other = _rec(data, n, p, t)
                if ours is not None and other is not None:
                    q = _mem(ours) / max(_mem(other), 1e-9)
                    worst = max(worst or (q, ""), (q, f"{n}: {_mem(ours):.0f} vs {p} {_mem(other):.0f} MB"))
        if worst:
            _goal(rows, "MNI 1 mm: peak memory <= dipy SyN and ANTs SyN", t, worst[0] <= 1.0, worst[1])
    mems = [(_mem(r), n) for n in names for t in labels for r in [_rec(data, n, "ours", t)] if r is not None]
    killed = [n for n in names for t in labels
              if "ended with code" in data["results"].get(f"{n}|ours|{t}", {}).get("error", "")]
    if mems or killed:
        _goal(rows, "no case out of memory on 24 GiB (ours)", "all",
              not killed and max(mems)[0] <= MEMORY_LIMIT_MB,
              f"killed: {killed[0]}" if killed else f"{max(mems)[1]}: {max(mems)[0]:.0f} MB")
    return _table(["goal", "threads", "status", "worst case"], rows) if rows else "(no goal measurable)"


def image_summary(data, names, labels) -> str:
    """Per image: cases, median / worst Dice and error margins vs the best peer, median time ratio vs dipy."""
    marg = _margins(data, names, labels)
    rows = []
    for image in dict.fromkeys(n.split("/")[0] for n in names):
        group = [n for n in names if n.split("/")[0] == image and n in marg]
        if not group:
            continue
        dm = [marg[n][0][0] for n in group]
        em = [marg[n][1][0] for n in group if marg[n][1] is not None]
        times = []
        for t in labels:
            r = [x for x, n in _ratios(data, group, "dipy", t)]
            times.append(f"{statistics.median(r):.2f}" if r else "-")
        rows.append([image, len(group), f"{statistics.median(dm):+.3f} ({min(dm):+.3f})",
                     f"{statistics.median(em):+.2f} ({max(em):+.2f})" if em else "-"] + times)
    return _table(["image", "cases", "Dice - best peer: median (worst)", "err - best peer mm: median (worst)"]
                  + [f"time / dipy @{t}" for t in labels], rows) if rows else ""


def render(data, names, methods, labels) -> str:
    runs = data.get("runs", [])
    commits = sorted({str(r.get("commit")) for r in runs})
    parts = [
        "# Image registration benchmark", "",
        f"Runs: {len(runs)} (commits {', '.join(commits)}); threads per method: {', '.join(labels)}. "
        "s is the registration's wall time, cpu s its CPU time (user + system, all threads: on a loaded "
        "machine the steadier figure); MB is the peak resident memory of the method's process above its level "
        "after loading the case (registration + the method's libraries). Dice per label in the order GM/WM (MNI), c1/c2/c3 dark to bright (T1 "
        "slice), shape (circle); err is the mean (err95: 95th percentile) distance to the true map inside the "
        "fixed image's foreground; NDV % and SDlogJ of the method's map, 3 voxels from the border, where the map "
        "stays inside the moving field of view. Accuracy "
        "columns come from the 1-thread run. `before`: the identity map.", "",
        case_table(data, names, methods, labels), "",
        "## Cases", "",
        "max disp: the true map's largest displacement; det DT: the range of its Jacobian determinant; residual: "
        "the largest inverse residual of the truth (see scripts/_bench_warps.py).", "",
        case_list(data, names), "",
        "## Summary per peer (ours vs peer)", "",
        f"W/T/L: our wins / ties / losses, Dice per label (tie within ±{DICE_TIE}) and mean map error (tie within "
        f"±{ERR_TIE} mm); time ratio ours / peer, median and worst (case) per thread setting.", "",
        peer_summary(data, names, labels), "",
        "## Summary per image", "", image_summary(data, names, labels), "",
        "## Goals (issue 12, section 2)", "", goals(data, names, labels), "",
    ]
    return "\n".join(parts)


def plot(data, names, path) -> None:
    """Per case: Dice margin to the best peer against the time ratio to dipy SyN (1 thread); optional."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    marg = _margins(data, names, ["1", "default"])
    pts = [(r, marg[n][0][0], n) for r, n in _ratios(data, names, "dipy", "1") if n in marg]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for image in dict.fromkeys(n.split("/")[0] for _, _, n in pts):
        sel = [(x, y) for x, y, n in pts if n.split("/")[0] == image]
        ax.scatter([x for x, _ in sel], [y for _, y in sel], label=image, s=18)
    ax.axhline(-DICE_TIE, color="k", lw=0.5, ls="--")
    ax.axvline(0.5, color="k", lw=0.5, ls=":")
    ax.axvline(1.0, color="k", lw=0.5, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("time ours / dipy SyN (1 thread)")
    ax.set_ylabel("Dice ours - best peer (worst label)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
