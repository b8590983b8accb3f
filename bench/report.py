"""Turn the benchmark suites' pytest-benchmark JSON into tables and charts.

    python -m bench.report [--json FILE] [--run]

--run first measures the whole bench/ directory: `python -m pytest bench/ --benchmark-only
--benchmark-json=FILE`, from the repository root. Then, from FILE (default
bench/results/bench.json), it prints the markdown tables of each suite (Linear L1..L4 from
bench/test_bench_linear.py, BatchNorm1d N1..N3 and the STREAM triad from
bench/test_bench_batchnorm.py, activations, softmax and cross-entropy from
bench/test_bench_ops.py, Adam and SGD-momentum steps O1..O3 from bench/test_bench_optim.py,
whole training steps S1 and S2 from bench/test_bench_steps.py, the matrix products of S1, S2
and 2048^3 with the FMA peak from bench/test_bench_products.py),
writes bench/results/<suite>.md and the PNG charts in bench/results/, and regenerates each
suite's section of BENCHMARKS.md and its table in the summary in README.md between the
markers below. A suite absent from FILE leaves its section and its summary table as they are.
Every number comes from the JSON; every file is replaced atomically.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_JSON = RESULTS / "bench.json"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
README_MD = ROOT / "README.md"
HEADER = """# Benchmarks

Measured by the pytest-benchmark suites in bench/ and written by the scripts there
(`python -m bench.report --run`); no number in this file is typed by hand. Ratios measured
side by side in one run are what to quote; absolute times depend on the machine.
"""
IMPLS = ("native", "reference", "torch")
PHASES = ("forward", "forward+backward")
PHASE = "forward+backward"  # the only phase of the batchnorm and ops suites
SGEMM_API = {"sgemm-scipy": "scipy.linalg.blas.sgemm", "sgemm-numpy": "numpy.matmul(out=)"}


def atomic_write(path, data):
    """Write bytes or text to `path` through a temporary file in the same directory, so a
    reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); give it the usual mode under the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run_benchmarks(json_path):
    """Run the suite from the repository root; the JSON is moved into place only if pytest
    succeeded, so a failed run leaves the previous results alone."""
    json_path = Path(json_path).resolve()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=json_path.parent, prefix=f".{json_path.name}.",
                               suffix=".tmp")
    os.close(fd)
    # pytest without the working directory on sys.path: run from the repository root,
    # `python -m pytest` would import the source tree's fastnn (no compiled extension)
    # instead of the installed one
    command = [sys.executable, "-c", "import sys; sys.path.remove(''); import pytest; "
               "sys.exit(pytest.main(sys.argv[1:]))", "bench/", "--benchmark-only",
               f"--benchmark-json={tmp}"]
    print("running: pytest bench/ --benchmark-only", flush=True)
    try:
        result = subprocess.run(command, cwd=ROOT)
        if result.returncode != 0:
            sys.exit(f"pytest failed (exit code {result.returncode}); results not updated")
        shown = json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path
        finish_json(tmp, json_path,
                    f"python -m pytest bench/ --benchmark-only --benchmark-json={shown}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def finish_json(source, json_path, command):
    """Write pytest-benchmark's JSON from `source` to `json_path`, recording the command as a
    reader would type it (not with a temporary file's name) and dropping the per-round
    timings, which the report does not use and which make the file megabytes long."""
    with open(source) as f:
        doc = json.load(f)
    doc.setdefault("fastnn", {})["command"] = command
    for bench in doc["benchmarks"]:
        bench["stats"].pop("data", None)
    atomic_write(json_path, json.dumps(doc, indent=1) + "\n")


SUITES = ("products", "linear", "batchnorm", "ops", "optim", "steps", "busy")


def markers(name):
    """The start and end markers of a generated block: a suite's section of BENCHMARKS.md
    (name = the suite), the README summary ("summary") or a suite's table in it
    ("summary:<suite>")."""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def suite_of(bench):
    """The suite a benchmark belongs to: its file's name, bench/test_bench_<suite>.py."""
    module = bench.get("fullname", "").split("::", 1)[0]
    stem = Path(module).stem
    if stem.startswith("test_bench_"):
        return stem[len("test_bench_"):]
    info = bench["extra_info"]
    return "linear" if "flops" in info else "ops" if "op" in info else "batchnorm"


def load(json_path):
    """{suite: {(workload, phase, threads, impl): benchmark entry}} and the whole JSON
    document. The ops suite names its workload "op"."""
    with open(json_path) as f:
        doc = json.load(f)
    suites = {}
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        # suites this report does not cover may label their benchmarks differently
        key = (info.get("workload", info.get("op")),
               *(info.get(k) for k in ("phase", "threads", "impl")))
        if "load" in info:  # the busy suite measures each case at two loads
            key = (key[0], f"{key[1]}@{info['load']}", *key[2:])
        suites.setdefault(suite_of(bench), {})[key] = bench
    return suites, doc


def best(entry):
    """The fastest round: on a shared machine noise only ever adds time, so the minimum is the
    steadiest estimate of a kernel's cost (as timeit's documentation advises)."""
    return entry["stats"]["min"]


def gflops(entry):
    return entry["extra_info"]["flops"] / best(entry) / 1e9


def gbps(entry):
    """Achieved bandwidth: the bytes of the minimal passes over the best time, in GB/s."""
    return entry["extra_info"]["bytes"] / best(entry) / 1e9


def fmt_time(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


# ---- shared by the suites: rows, table cells, charts, sections ----

def compare(entries, workload, phase, threads):
    """The row of one (workload, phase, threads): each implementation's entry (None where not
    measured) and native's speed-ups vs_reference and vs_torch (the other's best time over
    native's; None without both)."""
    row = {"workload": workload, "phase": phase, "threads": threads}
    for impl in IMPLS:
        row[impl] = entries.get((workload, phase, threads, impl))
    native = row["native"]
    for impl in ("reference", "torch"):
        other = row[impl]
        row[f"vs_{impl}"] = (best(other) / best(native)
                             if native is not None and other is not None else None)
    return row


def ratio(value, native, other):
    """native's `value` over `other`'s (the same function of two entries), or None."""
    return value(native) / value(other) if native is not None and other is not None else None


def sample(row):
    """Any measured entry of a row, for its shape and dtype."""
    return next(row[i] for i in IMPLS if row[i] is not None)


def cell(value, fmt):
    return "–" if value is None else fmt.format(value)


IMPL_HEADER = ["native", "reference", "torch", "native vs reference", "native vs torch"]


def impl_cells(row):
    """The cells under IMPL_HEADER: each implementation's best time, native's speed-ups."""
    return ([fmt_time(best(row[i])) if row[i] is not None else "–" for i in IMPLS]
            + [cell(row[k], "{:.2f}x") for k in ("vs_reference", "vs_torch")])


def table(header, lines):
    """A markdown table: the header cells, then one list of cells per row."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


SPEEDUP_CHART = ([("vs reference", "vs_reference"), ("vs torch", "vs_torch")],
                 "native speed-up (best time of other / native)", 1.0, "{:.2f}x")


def bar_charts(all_rows, labels, charts, title):
    """One PNG of grouped bars per entry of charts, {file name: (series, ylabel, baseline,
    label format)} with series [(legend, row key)], written to bench/results/. Returns the
    paths written (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no charts written (pip install matplotlib)")
        return []
    matplotlib.use("Agg")  # files only; no display here
    import io

    import matplotlib.pyplot as plt

    x = range(len(all_rows))
    written = []
    for name, (series, ylabel, baseline, label_fmt) in charts.items():
        fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(all_rows)), 4.5))
        width = 0.8 / len(series)
        for n, (legend, key) in enumerate(series):
            values = [r[key] if r[key] is not None else 0 for r in all_rows]
            bars = ax.bar([i + (n - (len(series) - 1) / 2) * width for i in x], values, width,
                          label=legend)
            ax.bar_label(bars, [label_fmt.format(v) if v else "" for v in values],
                         fontsize=6, rotation=90, padding=2)
        if baseline is not None:
            ax.axhline(baseline, color="black", linewidth=0.8)
        ax.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.margins(y=0.15)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        atomic_write(RESULTS / name, buf.getvalue())
        written.append(RESULTS / name)
    return written


def build_summary(doc):
    """One paragraph on what the numbers were measured with, from the JSON."""
    extra = doc.get("fastnn", {})
    info = extra.get("build_info", {})
    versions = extra.get("versions", {})
    machine = doc.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", "unknown CPU"))
    commit = doc.get("commit_info", {})
    lines = [
        f"- fastnn {info.get('version', '?')}, OpenMP {'on' if info.get('openmp') else 'off'}, "
        f"{info.get('num_procs', '?')} processors, compile args "
        f"`{' '.join(info.get('compile_args', []))}`",
        f"- matrix products: fastnn's core, path `{info.get('isa', '?')}`; BLAS: "
        f"{info.get('blas', '?')}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- CPU: {cpu}; commit {commit.get('id', '?')[:12]}"
        f"{' (dirty tree)' if commit.get('dirty') else ''}",
    ]
    return "\n".join(lines)


def measured_line(doc):
    """When and with what command the JSON was measured."""
    extra = doc.get("fastnn", {})
    try:
        date = datetime.datetime.fromisoformat(doc["datetime"]).strftime("%Y-%m-%d %H:%M %Z")
    except (KeyError, ValueError):
        date = "at an unknown date"
    return (f"Measured on {date} with `{extra.get('command', 'pytest bench/ --benchmark-only')}` "
            "(regenerate: `python -m bench.report --run`).")


def section(suite, title, doc, intro, tables, charts):
    """A suite's BENCHMARKS.md section, between its markers."""
    start, end = markers(suite)
    parts = [start, f"## {title}", "", measured_line(doc), "", build_summary(doc), "", intro,
             "", tables]
    for chart in charts:
        parts.append(f"![{chart.stem}]({chart.relative_to(ROOT).as_posix()})")
    parts += ["", end]
    return "\n".join(parts)


def publish(suite, title, doc, intro, tables, charts):
    """Print a suite's tables, write bench/results/<suite>.md and its BENCHMARKS.md section;
    returns the paths written."""
    print(tables)
    text = section(suite, title, doc, intro, tables, charts)
    start, end = markers(suite)
    atomic_write(RESULTS / f"{suite}.md",
                 text.replace(start, "").replace(end, "").strip() + "\n")
    replace_section(BENCHMARKS_MD, start, end, text, HEADER)
    return [RESULTS / f"{suite}.md", *charts]


# ---- Linear + bias + ReLU (L1..L4) ----

LINEAR_INTRO = (
    "Best round time per step (the minimum over rounds: on this shared machine noise only "
    "adds time). *native vs X* is X's best time over native's (above 1: native is "
    "faster). GFLOP/s counts 2·B·in·out for the forward and 6·B·in·out for forward+"
    "backward (bias and ReLU not counted); *of sgemm rate* divides it by the faster raw "
    "2-thread sgemm of the forward's shape. forward+backward is one forward and one "
    "backward accumulating dweight and dbias, every buffer reused; torch's forward runs "
    "under no_grad, its backward through autograd.")


def best_sgemm(entries, workload):
    """The fastest raw sgemm entry of a workload, or None."""
    found = [e for (w, phase, _, _), e in entries.items() if w == workload and phase == "sgemm"]
    return min(found, key=best, default=None)


def rows(entries):
    """One dict per (workload, phase, threads) with the best times and the derived ratios."""
    keys = sorted({(w, p, t) for (w, p, t, i) in entries if p in PHASES},
                  key=lambda k: (k[0], PHASES.index(k[1]), k[2]))
    out = []
    for w, p, t in keys:
        row = compare(entries, w, p, t)
        native = row["native"]
        row["gflops"] = gflops(native) if native is not None else None
        row["sgemm_fraction"] = ratio(gflops, native, best_sgemm(entries, w))
        out.append(row)
    return out


def markdown_tables(entries):
    """One markdown table per workload, with a line on its raw sgemm rate."""
    parts = []
    all_rows = rows(entries)
    for workload in sorted({r["workload"] for r in all_rows}):
        first = next(e for (w, *_), e in entries.items() if w == workload)
        B, C, OC = first["extra_info"]["shape"]
        dtype = first["extra_info"]["dtype"]
        parts.append(f"#### {workload}: batch {B}, in {C}, out {OC}, {dtype}\n")
        sgemm = best_sgemm(entries, workload)
        if sgemm is not None:
            info = sgemm["extra_info"]
            others = [e for (w, p, _, _), e in entries.items()
                      if w == workload and p == "sgemm" and e is not sgemm]
            also = "".join(f"; {SGEMM_API.get(e['extra_info']['impl'], e['extra_info']['impl'])}"
                           f" {gflops(e):.1f}" for e in others)
            parts.append(
                f"Raw sgemm of the forward's shape, {info['threads']} threads: "
                f"{gflops(sgemm):.1f} GFLOP/s in {fmt_time(best(sgemm))} with "
                f"{SGEMM_API.get(info['impl'], info['impl'])}{also}.\n"
            )
        parts.append(table(
            ["phase", "threads", *IMPL_HEADER, "native GFLOP/s", "of sgemm rate"],
            [[r["phase"], str(r["threads"]), *impl_cells(r), cell(r["gflops"], "{:.1f}"),
              cell(r["sgemm_fraction"], "{:.0%}")]
             for r in all_rows if r["workload"] == workload]))
        parts.append("")
    return "\n".join(parts)


def write_charts(entries):
    """Speed-up bars (native over reference and over torch) and the fraction of the sgemm
    rate, as PNGs in bench/results/. Returns the paths written (none without matplotlib)."""
    all_rows = rows(entries)
    labels = [f"{r['workload']} {'fwd' if r['phase'] == 'forward' else 'fwd+bwd'} "
              f"t{r['threads']}" for r in all_rows]
    charts = {
        "linear_speedup.png": SPEEDUP_CHART,
        "linear_sgemm_fraction.png": (
            [("native", "sgemm_fraction")],
            "native rate / raw 2-thread sgemm rate", None, "{:.0%}"),
    }
    return bar_charts(all_rows, labels, charts, "fastnn Linear+bias+ReLU, float32 (L1..L4)")


def linear_summary(entries):
    """The README table of the 2-thread ratios of L1..L4."""
    by_key = {(r["workload"], r["phase"], r["threads"]): r for r in rows(entries)}
    lines = []
    for workload in sorted({w for w, _, _ in by_key}):
        fwd, both = by_key.get((workload, "forward", 2)), by_key.get((workload, PHASE, 2))
        if fwd is None or both is None:
            continue
        lines.append([workload, cell(fwd["vs_reference"], "{:.2f}x"),
                      cell(fwd["vs_torch"], "{:.2f}x"), cell(fwd["sgemm_fraction"], "{:.0%}"),
                      cell(both["vs_reference"], "{:.2f}x"), cell(both["vs_torch"], "{:.2f}x")])
    return table(["workload", "forward vs NumPy twin", "forward vs PyTorch", "forward, % of sgemm",
                  "fwd+bwd vs NumPy twin", "fwd+bwd vs PyTorch"], lines)


# ---- memory-bound suites (BatchNorm1d, ops, optim): GB/s against the STREAM triad ----

def triads(entries):
    """{threads: STREAM triad entry} among the batchnorm suite's entries."""
    return {t: e for (w, p, t, i), e in entries.items()
            if (w, p, i) == ("triad", "triad", "native")}


def bandwidth_rows(entries, triad, phases=(PHASE,)):
    """One dict per (workload, phase, threads) of the benchmarks of `phases`, workloads in the
    order measured: the best times, native's speed-ups, its bandwidth and that as a fraction
    of the triad's (`triad`: {threads: entry}) at the same thread count. A row's "name" is
    its workload, followed by its phase when there are several."""
    order = list(dict.fromkeys(w for w, *_ in entries))
    keys = sorted({(w, p, t) for (w, p, t, i) in entries if p in phases},
                  key=lambda k: (order.index(k[0]), phases.index(k[1]), k[2]))
    out = []
    for w, p, t in keys:
        row = compare(entries, w, p, t)
        row["name"] = w if len(phases) == 1 else f"{w} {p}"
        native = row["native"]
        row["gbps"] = gbps(native) if native is not None else None
        row["triad_fraction"] = ratio(gbps, native, triad.get(t))
        out.append(row)
    return out


def triad_line(triad):
    """The sentence giving the machine's measured memory bandwidth."""
    if not triad:
        return "No STREAM triad measurement in this run.\n"
    n = next(iter(triad.values()))["extra_info"]["shape"][0]
    rates = "; ".join(f"{gbps(e):.1f} GB/s on {t} thread{'s' if t > 1 else ''} "
                      f"({fmt_time(best(e))})" for t, e in sorted(triad.items()))
    return (f"Machine limit, STREAM triad (`fastnn._native.stream_triad`, a = b + s·c over "
            f"{n / 1e6:.0f}M float64, 24 bytes per element): {rates}.\n")


def bandwidth_tables(entries, triad, names, phases=(PHASE,)):
    """The triad line and one table over the workloads (and phases) and thread counts; `names`
    heads the name and shape columns. Without a triad the *of triad* column is left out."""
    lines = []
    for r in bandwidth_rows(entries, triad, phases):
        cells = [r["name"], " × ".join(map(str, sample(r)["extra_info"]["shape"])),
                 str(r["threads"]), *impl_cells(r), cell(r["gbps"], "{:.1f}")]
        lines.append(cells + ([cell(r["triad_fraction"], "{:.0%}")] if triad else []))
    header = [*names, "threads", *IMPL_HEADER, "native GB/s", *(["of triad"] if triad else [])]
    return triad_line(triad) + "\n" + table(header, lines) + "\n"


def bandwidth_charts(entries, triad, charts, title, phases=(PHASE,)):
    """The charts of a memory-bound suite, labelled name and threads."""
    all_rows = bandwidth_rows(entries, triad, phases)
    labels = [f"{r['name']} t{r['threads']}" for r in all_rows]
    return bar_charts(all_rows, labels, charts, title)


def bandwidth_summary(entries, triad, first, lead, phases=(PHASE,)):
    """The README table of the 2-thread ratios, after `lead` (which ends before its closing
    parenthesis, where the triad's rate goes); `first` heads the name column."""
    found = [r for r in bandwidth_rows(entries, triad, phases) if r["threads"] == 2]
    if not found:
        return None
    limit = f", STREAM triad {gbps(triad[2]):.1f} GB/s" if 2 in triad else ""
    lines = [[r["name"], cell(r["vs_reference"], "{:.2f}x"), cell(r["vs_torch"], "{:.2f}x"),
              cell(r["gbps"], "{:.1f}")] + ([cell(r["triad_fraction"], "{:.0%}")] if triad else [])
             for r in found]
    header = [first, "vs NumPy twin", "vs PyTorch", "native GB/s",
              *(["% of triad"] if triad else [])]
    return f"{lead}{limit}):\n\n" + table(header, lines)


BN_INTRO = (
    "One training step: a forward normalising with the batch statistics and updating the "
    "running statistics, then a backward accumulating dweight and dbias, every buffer "
    "reused; torch is `torch.nn.functional.batch_norm` with autograd. Best round time per "
    "step (the minimum over rounds). *native vs X* is X's best time over native's (above "
    "1: native is faster). GB/s counts the minimal traffic, 8·B·C·4 bytes (forward: read "
    "x for the statistics, read x and write y; backward: read dy and x for the sums, read "
    "dy and x and write dx); *of triad* divides it by the STREAM triad's GB/s at the same "
    "thread count. N1 and N2 (0.5 and 8 MB of arrays) stay largely in cache between "
    "passes, so they can exceed the triad's rate; N3 (256 MB) cannot.")

OPS_INTRO = (
    "One step: a forward, then a backward from a fixed upstream gradient; relu, tanh and "
    "gelu elementwise, softmax along the last axis, cross-entropy the mean over the rows "
    "of logits against integer targets (its backward is d loss / d logits). fastnn reuses "
    "every buffer (out=, dx=, probs=, dlogits=); torch runs eagerly, its backward through "
    "autograd. Best round time per step (the minimum over rounds). *native vs X* is X's "
    "best time over native's (above 1: native is faster). GB/s counts the least traffic, "
    "each array read or written once per pass: 5 arrays for an activation or softmax (read "
    "x, write y, read dy and x or y, write dx), 4 for cross-entropy (read logits, write "
    "probs, read probs, write dlogits)")
SAME_RUN_TRIAD = ("; *of triad* divides it by the STREAM triad's GB/s at the same thread count, "
             "measured in the same run by the BatchNorm1d suite.")


def ops_lead(entries):
    """The README line over the ops table: which ops ran on which shape."""
    shapes = {}
    for (op, *_), e in entries.items():
        shape = tuple(e["extra_info"]["shape"])
        if op not in shapes.setdefault(shape, []):
            shapes[shape].append(op)
    where = "; ".join(f"{', '.join(ops)} on {shape}" for shape, ops in shapes.items())
    return f"Activations, softmax and cross-entropy forward+backward, float32, 2 threads ({where}"


OPTIM_PHASES = ("adam", "sgd")
OPTIM_INTRO = (
    "One optimizer step over one float32 Parameter of n elements, its gradient fixed and "
    "all state allocated beforehand: adam is Adam (lr 1e-3, betas (0.9, 0.999)), sgd is SGD "
    "with momentum 0.9; reference is the same fastnn optimizer under the NumPy backend, "
    "torch is torch.optim with {variant}. Best round time per step (the minimum over "
    "rounds). *native vs X* is X's best time over native's (above 1: native is faster). "
    "GB/s counts one fused pass: Adam reads p, g, m, v and writes p, m, v (28 bytes per "
    "parameter), SGD reads p, g, buf and writes p, buf (20 bytes)")


def torch_variants(entries):
    """How torch's optimizers ran, from extra_info["torch_variant"]: "fused=True" etc."""
    found = sorted({e["extra_info"].get("torch_variant") for (*_, i), e in entries.items()
                    if i == "torch"} - {None})
    return " or ".join(f"{v}=True" for v in found) or "its default implementation"


def kernel_line(entries):
    """The sentence comparing the bare kernel call (impl "kernel") with native's step."""
    found = [(k, e, entries.get((*k[:3], "native"))) for k, e in entries.items()
             if k[3] == "kernel"]
    if not found:
        return ""
    times = "; ".join(f"{w} {p}, {t} thread{'s' if t > 1 else ''}: {fmt_time(best(e))}"
                      + (f" (native {fmt_time(best(n))})" if n is not None else "")
                      for (w, p, t, _), e, n in found)
    return ("\nBare kernel call (`fastnn._native`, no argument checks or Python optimizer "
            f"logic; the gap to native is the step's Python layer): {times}.\n")


def optim_lead(entries):
    """The README line over the optimizer table: the parameter count of each workload."""
    sizes = {w: e["extra_info"]["n"] for (w, *_), e in entries.items()}
    where = ", ".join(f"{w} {n:,}" for w, n in sizes.items())
    return ("Optimizer steps, Adam and SGD with momentum, float32, 2 threads (parameters: "
            f"{where}")


# ---- matrix products (S1, S2, 2048^3) against the FMA peak ----

PRODUCT_IMPLS = ("native", "torch", "numpy")
PRODUCTS_INTRO = (
    "Every matrix product of the S1 and S2 steps, per Linear layer (batch × in × out), and a "
    "2048-wide layer at batch 2048: *forward* is x @ W.T (+ b), *backward* dx = dy @ W and "
    "dW += dy.T @ x (+ db; no dx for S2's first layer, whose input is data, as in the step). "
    "native runs them through a `fastnn.Linear` on fastnn's own matrix-product core "
    "(csrc/gemm.c, the path in the heading), torch as `torch.mm`/`addmm` (MKL/oneDNN) and "
    "numpy as `numpy.matmul(out=)` (OpenBLAS), into preallocated outputs. Best round time; "
    "*vs X* is X's best time over native's; *vs best* over the faster of the two. *% of peak* "
    "is the GFLOP/s (2·B·in·out per product) over the FMA peak at the same thread count "
    "(`fastnn._native.fma_peak`: independent chains of the widest FMAs the path has, as many "
    "as its micro-kernel's accumulators, on the path named with it).")


def fma_peaks(suites):
    """{threads: FMA peak entry} of the products suite."""
    return {t: e for (w, p, t, i), e in suites.get("products", {}).items()
            if (w, p, i) == ("fma-peak", "peak", "native")}


def product_rows(entries, peaks):
    keys = sorted({(w, p, t) for (w, p, t, i) in entries if w != "fma-peak"},
                  key=lambda k: (k[0], k[1] != "forward", k[2]))
    out = []
    for w, p, t in keys:
        row = {"workload": w, "phase": p, "threads": t}
        for impl in PRODUCT_IMPLS:
            row[impl] = entries.get((w, p, t, impl))
        native = row["native"]
        for impl in ("torch", "numpy"):
            row[f"vs_{impl}"] = ratio(lambda e: 1 / best(e), native, row[impl])
        others = [row[i] for i in ("torch", "numpy") if row[i] is not None]
        row["vs_best"] = (min(best(e) for e in others) / best(native)
                          if native is not None and others else None)
        for impl in PRODUCT_IMPLS:
            row[f"peak_{impl}"] = ratio(gflops, row[impl], peaks.get(t))
        out.append(row)
    return out


def products_tables(entries, peaks):
    if peaks:
        peak_isa = next(iter(peaks.values()))["extra_info"].get("isa", "?")
        peak_line = f"FMA peak (`{peak_isa}` path): " + ", ".join(
            f"{gflops(e):.1f} GFLOP/s on {t} thread{'s' if t > 1 else ''}"
            for t, e in sorted(peaks.items()))
    else:
        peak_line = ("No FMA peak in this run (not selected, or fastnn ran on a path without "
                     "FMA micro-kernels)")
    isa = next(iter(entries.values()))["extra_info"].get("isa", "?")
    lines = []
    for r in product_rows(entries, peaks):
        B, C, OC = next(r[i] for i in PRODUCT_IMPLS if r[i])["extra_info"]["shape"]
        lines.append([r["workload"], f"{B}×{C}×{OC}", r["phase"], str(r["threads"]),
                      *[fmt_time(best(r[i])) if r[i] else "–" for i in PRODUCT_IMPLS],
                      *[cell(r[k], "{:.2f}x") for k in ("vs_torch", "vs_numpy", "vs_best")],
                      *[cell(r[f"peak_{i}"], "{:.0%}") for i in PRODUCT_IMPLS]])
    header = ["layer", "shape", "phase", "threads", *PRODUCT_IMPLS, "vs torch", "vs numpy",
              "vs best", "native % of peak", "torch % of peak", "numpy % of peak"]
    return f"{peak_line}. fastnn's path: `{isa}`.\n\n" + table(header, lines) + "\n"


def products_charts(entries, peaks):
    all_rows = product_rows(entries, peaks)
    labels = [f"{r['workload']} {'fwd' if r['phase'] == 'forward' else 'bwd'} t{r['threads']}"
              for r in all_rows]
    charts = {"products_speedup.png": ([("vs torch", "vs_torch"), ("vs numpy", "vs_numpy")],
                                       "native speed-up (best time of other / native)", 1.0,
                                       "{:.2f}x")}
    if peaks:
        charts["products_peak_fraction.png"] = (
            [(i, f"peak_{i}") for i in PRODUCT_IMPLS], "GFLOP/s / FMA peak (same threads)",
            None, "{:.0%}")
    return bar_charts(all_rows, labels, charts, "matrix products of S1, S2 and 2048^3, float32")


def products_summary(entries, peaks):
    lines = [[r["workload"], r["phase"], cell(r["vs_best"], "{:.2f}x"),
              cell(r["peak_native"], "{:.0%}"), cell(r["peak_torch"], "{:.0%}"),
              cell(r["peak_numpy"], "{:.0%}")]
             for r in product_rows(entries, peaks) if r["threads"] == 2]
    if not lines:
        return None
    return ("Matrix products through `fastnn.Linear`, float32, 2 threads, against the faster of "
            "PyTorch (`torch.mm`) and NumPy at the same shape, and as a fraction of the FMA "
            "peak:\n\n" + table(["layer", "phase", "vs faster of torch, numpy",
                                   "fastnn % of peak", "torch % of peak", "numpy % of peak"],
                                  lines))


# ---- whole training steps (S1, S2) ----

STEPS_INTRO = (
    "One training step: zero_grad, forward, cross-entropy, backward, optimizer step, on a "
    "fixed batch, every buffer reused; S1 is the character-level MLP (Embedding(27, 10), "
    "Linear(30, 200), BatchNorm1d + tanh, Linear(200, 27), batch 32, SGD), S2 the "
    "784-512-512-10 MLP (Linear, BatchNorm1d + ReLU twice, Linear, batch 128, Adam), "
    "M3 the makemore part-3 model of `fastnn experiment charlm` (Embedding(27, 10), "
    "[Linear(no bias, 100), BatchNorm1d + tanh] x 2, Linear(100, 27), batch 32, SGD), all float32. native "
    "replays forward, loss and backward in one C call (`FusedStep`, as "
    "`Trainer` does); layers makes the plain layer calls of a hand-written loop; reference is "
    "the same fastnn model on the NumPy backend; torch the same "
    "torch.nn model in eager mode from the same weights. Best round time per step (the "
    "minimum over rounds). *native vs X* is X's best time over native's. *matmul GFLOP/s* "
    "counts only the step's matrix products (forward, weight gradients, input gradients but "
    "the first layer's) over the whole step's time; *of peak* divides it by the FMA peak "
    "at the same thread count (the products suite's); *layers / native* is the plain layer "
    "calls' best time over the replay's; *1→2 threads* is native's 1-thread time "
    "over its 2-thread time. *held / minimum*: bytes held by model, optimizer and loss after "
    "a step over parameters + gradients + optimizer state + saved activations "
    "(`fastnn.diagnostics.memory_footprint`); a steady step allocates no array (asserted).")


def step_rows(entries, peaks):
    """One dict per (workload, threads): best times, speed-ups, the plain layer calls' speed-up
    over torch, matmul rate, its fraction of the FMA peak, native's 1->2 thread speed-up and
    its memory ratio."""
    keys = sorted({(w, t) for (w, p, t, i) in entries})
    out = []
    for w, t in keys:
        row = compare(entries, w, "step", t)
        native = row["native"]
        row["name"] = w
        row["layers"] = entries.get((w, "step", t, "layers"))
        row["layers_vs_torch"] = ratio(lambda e: 1 / best(e), row["layers"], row["torch"])
        row["layers_vs_native"] = ratio(best, row["layers"], native)
        row["gflops"] = gflops(native) if native is not None else None
        row["peak_fraction"] = ratio(gflops, native, peaks.get(t))
        one = entries.get((w, "step", 1, "native"))
        row["scaling"] = (best(one) / best(native)
                          if t > 1 and one is not None and native is not None else None)
        row["mem_ratio"] = native["extra_info"].get("mem_ratio") if native else None
        out.append(row)
    return out


def steps_tables(entries, peaks):
    lines = []
    for r in step_rows(entries, peaks):
        info = r["native"]["extra_info"] if r["native"] else {}
        mem = (f"{info['mem_held'] / 1e6:.3g} / {info['mem_minimum'] / 1e6:.3g} MB = "
               f"{info['mem_ratio']:.2f}x" if "mem_ratio" in info else "–")
        lines.append([r["name"], str(r["threads"]), *impl_cells(r),
                      fmt_time(best(r["layers"])) if r["layers"] else "–",
                      cell(r["layers_vs_torch"], "{:.2f}x"), cell(r["layers_vs_native"], "{:.2f}x"),
                      cell(r["gflops"], "{:.1f}"), cell(r["peak_fraction"], "{:.0%}"),
                      cell(r["scaling"], "{:.2f}x"), mem])
    header = ["workload", "threads", *IMPL_HEADER, "layers", "layers vs torch",
              "layers / native",
              "matmul GFLOP/s", "of peak", "1→2 threads", "held / minimum"]
    note = "" if peaks else "No FMA peak in this run (see the products section).\n\n"
    return note + table(header, lines) + "\n"


def steps_charts(entries, peaks):
    all_rows = step_rows(entries, peaks)
    labels = [f"{r['name']} t{r['threads']}" for r in all_rows]
    charts = {"steps_speedup.png": ([("vs reference", "vs_reference"), ("vs torch", "vs_torch"),
                                     ("layers vs torch", "layers_vs_torch")],
                                    "speed-up (best time of other / fastnn's)", 1.0, "{:.2f}x")}
    if peaks:
        charts["steps_peak_fraction.png"] = (
            [("native", "peak_fraction")],
            "step's matmul GFLOP/s / FMA peak (same threads)", None, "{:.0%}")
    return bar_charts(all_rows, labels, charts, "fastnn whole training steps, float32 (S1, S2, M3)")


def steps_summary(entries, peaks):
    lines = [[r["name"], cell(r["vs_reference"], "{:.2f}x"), cell(r["vs_torch"], "{:.2f}x"),
              cell(r["layers_vs_torch"], "{:.2f}x"), cell(r["layers_vs_native"], "{:.2f}x"),
              cell(r["peak_fraction"], "{:.0%}"),
              cell(r["scaling"], "{:.2f}x"), cell(r["mem_ratio"], "{:.2f}x")]
             for r in step_rows(entries, peaks) if r["threads"] == 2]
    if not lines:
        return None
    return ("Whole training steps, float32, 2 threads (S1: char-level MLP, batch 32, SGD; "
            "S2: 784-512-512-10 MLP, batch 128, Adam; M3: makemore part 3, batch 32, SGD; "
            "*replayed*: `FusedStep`, *plain layer calls*: a hand-written loop):\n\n"
            + table(["workload", "vs NumPy twin", "replayed vs PyTorch",
                     "plain layer calls vs PyTorch", "plain / replayed",
                     "matmul % of FMA peak", "1→2 threads",
                     "memory held / minimum"], lines))


# ---- the S2 step on a busy machine ----

BUSY_INTRO = (
    "The S2 step (784-512-512-10 MLP, batch 128, Adam, float32) quiet and beside one busy-loop "
    "process that the benchmark starts before and stops after each measurement. *layers* is "
    "the plain layer calls of a hand-written loop, *native* the same step replayed by "
    "`FusedStep`, *torch* the torch.nn model in eager mode. fastnn's 2 threads run at its "
    "default (a cap of 2 that adapts to the load, README: Threads) and *pinned* "
    "(`set_num_threads(2, adaptive=False)`). Under load the rounds' times spread widely, so "
    "this section reports the **median** round; *busy / quiet* is the same case's median "
    "beside the busy process over its quiet median.")
BUSY_CASES = [("layers", 1, "1"), ("layers", 2, "2 (default)"), ("layers-pinned", 2, "2 pinned"),
              ("native", 1, "1"), ("native", 2, "2 (default)"), ("native-pinned", 2, "2 pinned"),
              ("torch", 1, "1"), ("torch", 2, "2")]


def median(entry):
    return entry["stats"]["median"]


def busy_entries(entries, load):
    return {(i, t): e for (w, p, t, i), e in entries.items() if e["extra_info"]["load"] == load}


def busy_goals(busy):
    """{step: (default over 1-thread, default over torch 2-thread)} under load."""
    goals = {}
    for step in ("layers", "native"):
        default, one, torch2 = busy.get((step, 2)), busy.get((step, 1)), busy.get(("torch", 2))
        goals[step] = (ratio(median, default, one), ratio(median, default, torch2))
    return goals


def busy_tables(entries):
    quiet, busy = busy_entries(entries, 0), busy_entries(entries, 1)
    lines = []
    for impl, t, label in BUSY_CASES:
        q, b = quiet.get((impl, t)), busy.get((impl, t))
        if q is None and b is None:
            continue
        lines.append([impl.split("-")[0], label, fmt_time(median(q)) if q else "–",
                      fmt_time(median(b)) if b else "–", cell(ratio(median, b, q), "{:.2f}x")])
    text = table(["step", "threads", "quiet", "one busy process", "busy / quiet"], lines)
    goals = busy_goals(busy)
    said = [f"{step}: {cell(one, '{:.2f}x')} its 1-thread time and {cell(torch2, '{:.2f}x')} "
            "PyTorch's 2-thread time" for step, (one, torch2) in goals.items() if one]
    if not said:
        return text + "\n"
    return (text + "\n\nBeside the busy process, fastnn's default (2 threads, adaptive) took "
            + "; ".join(said) + ".\n")


def busy_summary(entries):
    busy = busy_entries(entries, 1)
    goals = busy_goals(busy)
    lines = [[step, cell(one, "{:.2f}x"), cell(torch2, "{:.2f}x")]
             for step, (one, torch2) in goals.items() if one or torch2]
    if not lines:
        return None
    return ("The S2 step beside one busy-loop process, fastnn at its default 2 threads "
            "(adaptive), median times:\n\n"
            + table(["S2 step", "over fastnn's 1-thread time", "over PyTorch's 2-thread time"],
                    [[("plain layer calls" if s == "layers" else "replayed"), a, b]
                     for s, a, b in lines]))


def replace_section(path, start, end, text, header=""):
    """Replace the text between the markers start..end in `path` (appended, after `header`
    for a new file, when the markers are missing)."""
    current = path.read_text() if path.exists() else header
    if start in current and end in current:
        head, rest = current.split(start, 1)
        _, tail = rest.split(end, 1)
        new = head + text + tail
    else:
        new = current.rstrip("\n") + "\n\n" + text + "\n"
    atomic_write(path, new)


def between(text, start, end):
    """The text from marker `start` to marker `end`, both included, or None."""
    if start not in text or end not in text.split(start, 1)[1]:
        return None
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def update_readme_summary(tables):
    """Rewrite README.md's summary block: each suite's table ({suite: markdown, or None for
    nothing to show}) between its own markers, in SUITES order; a suite absent from `tables`
    keeps the table the block has for it."""
    start, end = markers("summary")
    old = between(README_MD.read_text() if README_MD.exists() else "", start, end) or ""
    inner = old[len(start):-len(end)]
    kept = {suite: between(inner, *markers(f"summary:{suite}")) for suite in SUITES}
    # text outside the per-suite markers is a block written before them, holding the Linear
    # and BatchNorm1d tables: it stays, first, while neither suite is measured
    legacy = inner
    for block in filter(None, kept.values()):
        legacy = legacy.replace(block, "")
    blocks = []
    if legacy.strip() and not tables.keys() & {"linear", "batchnorm"}:
        blocks.append(legacy.strip("\n"))
    for suite in SUITES:
        s_start, s_end = markers(f"summary:{suite}")
        if suite in tables:
            block = tables[suite] and f"{s_start}\n{tables[suite]}\n{s_end}"
        else:
            block = kept[suite]
        if block:
            blocks.append(block)
    replace_section(README_MD, start, end, "\n".join([start, "\n\n".join(blocks), end]))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(DEFAULT_JSON),
                        help="pytest-benchmark JSON to read (and, with --run, to write)")
    parser.add_argument("--run", action="store_true",
                        help="run `pytest bench/ --benchmark-only` first")
    args = parser.parse_args(argv)
    if args.run:
        run_benchmarks(args.json)
    if not Path(args.json).exists():
        sys.exit(f"{args.json}: no such file (use --run to measure)")
    suites, doc = load(args.json)
    if not any(suites.values()):
        sys.exit(f"{args.json}: no benchmarks in it")
    written, summary = [], {}
    peaks = fma_peaks(suites)
    product_entries = suites.get("products")
    if product_entries:
        written += publish("products", "Matrix products (S1, S2, 2048³) and the FMA peak", doc,
                           PRODUCTS_INTRO, products_tables(product_entries, peaks),
                           products_charts(product_entries, peaks))
        summary["products"] = products_summary(product_entries, peaks)
    entries = suites.get("linear")
    if entries:
        written += publish("linear", "Linear + bias + ReLU (L1..L4)", doc, LINEAR_INTRO,
                           markdown_tables(entries), write_charts(entries))
        summary["linear"] = linear_summary(entries)
    bn_entries = suites.get("batchnorm", {})
    triad = triads(bn_entries)
    if bn_entries:
        charts = {"batchnorm_speedup.png": SPEEDUP_CHART}
        if triad:
            charts["batchnorm_triad_fraction.png"] = (
                [("native", "triad_fraction")],
                "native GB/s / STREAM triad GB/s (same threads)", None, "{:.0%}")
        written += publish(
            "batchnorm", "BatchNorm1d training forward+backward (N1..N3)", doc, BN_INTRO,
            bandwidth_tables(bn_entries, triad, ["workload", "batch × C"]),
            bandwidth_charts(bn_entries, triad, charts,
                             "fastnn BatchNorm1d training fwd+bwd, float32 (N1..N3)"))
        summary["batchnorm"] = bandwidth_summary(
            bn_entries, triad, "workload",
            "BatchNorm1d training forward+backward, float32, 2 threads (N1..N3 of the README: "
            "(batch, C) = (128, 256), (512, 1024), (4096, 4096)")
    ops_entries = suites.get("ops")
    if ops_entries:
        written += publish(
            "ops", "Activations, softmax and cross-entropy forward+backward", doc,
            OPS_INTRO + (SAME_RUN_TRIAD if triad else "."),
            bandwidth_tables(ops_entries, triad, ["op", "shape"]),
            bandwidth_charts(ops_entries, triad, {"ops_speedup.png": SPEEDUP_CHART},
                             "fastnn activations, softmax, cross-entropy fwd+bwd, float32"))
        summary["ops"] = bandwidth_summary(ops_entries, triad, "op", ops_lead(ops_entries))
    optim_entries = suites.get("optim")
    if optim_entries:
        written += publish(
            "optim", "Optimizer steps (O1..O3)", doc,
            OPTIM_INTRO.format(variant=torch_variants(optim_entries))
            + (SAME_RUN_TRIAD if triad else "."),
            bandwidth_tables(optim_entries, triad, ["workload", "parameters"], OPTIM_PHASES)
            + kernel_line(optim_entries),
            bandwidth_charts(optim_entries, triad, {"optim_speedup.png": SPEEDUP_CHART},
                             "fastnn Adam and SGD-momentum steps, float32 (O1..O3)",
                             OPTIM_PHASES))
        summary["optim"] = bandwidth_summary(optim_entries, triad, "workload",
                                             optim_lead(optim_entries), OPTIM_PHASES)
    step_entries = suites.get("steps")
    if step_entries:
        written += publish("steps", "Whole training steps (S1, S2)", doc, STEPS_INTRO,
                           steps_tables(step_entries, peaks), steps_charts(step_entries, peaks))
        summary["steps"] = steps_summary(step_entries, peaks)
    busy = suites.get("busy")
    if busy:
        written += publish("busy", "The S2 step on a busy machine", doc, BUSY_INTRO,
                           busy_tables(busy), [])
        summary["busy"] = busy_summary(busy)
    if summary:
        update_readme_summary(summary)
    for path in [*written, BENCHMARKS_MD, *([README_MD] if summary else [])]:
        print("wrote", path.relative_to(ROOT))
    others = [suite_of(b) for b in doc["benchmarks"] if suite_of(b) not in SUITES]
    for suite in sorted(set(others)):
        print(f"not reported here: suite {suite!r} ({others.count(suite)} benchmarks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
