"""Turn the benchmark suites' pytest-benchmark JSON into tables and charts.

    python -m bench.report [--json FILE] [--run]

--run first measures the whole bench/ directory: `python -m pytest bench/ --benchmark-only
--benchmark-json=FILE`, from the repository root. Then, from FILE (default
bench/results/bench.json), it prints the markdown tables of each suite (Linear L1..L4 from
bench/test_bench_linear.py, BatchNorm1d N1..N3 and the STREAM triad from
bench/test_bench_batchnorm.py), writes bench/results/<suite>.md and the PNG charts in
bench/results/, and regenerates each suite's section of BENCHMARKS.md and the summary in
README.md between the markers below. Every number comes from the JSON; every file is replaced
atomically.
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
START, END = "<!-- bench:linear:start -->", "<!-- bench:linear:end -->"
BN_START, BN_END = "<!-- bench:batchnorm:start -->", "<!-- bench:batchnorm:end -->"
README_MD = ROOT / "README.md"
README_START, README_END = "<!-- bench:summary:start -->", "<!-- bench:summary:end -->"
HEADER = """# Benchmarks

Measured by the pytest-benchmark suites in bench/ and written by the scripts there
(`python -m bench.report --run`); no number in this file is typed by hand. Ratios measured
side by side in one run are what to quote; absolute times depend on the machine.
"""
IMPLS = ("native", "reference", "torch")
PHASES = ("forward", "forward+backward")
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
    command = [sys.executable, "-m", "pytest", "bench/", "--benchmark-only",
               f"--benchmark-json={tmp}"]
    print("running:", " ".join(command), flush=True)
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


SUITES = ("linear", "batchnorm")


def suite_of(bench):
    """The suite a benchmark belongs to: its file's name, bench/test_bench_<suite>.py."""
    module = bench.get("fullname", "").split("::", 1)[0]
    stem = Path(module).stem
    if stem.startswith("test_bench_"):
        return stem[len("test_bench_"):]
    return "linear" if "flops" in bench["extra_info"] else "batchnorm"


def load(json_path):
    """{suite: {(workload, phase, threads, impl): benchmark entry}} and the whole JSON
    document."""
    with open(json_path) as f:
        doc = json.load(f)
    suites = {}
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        # suites this report does not cover may label their benchmarks differently
        key = tuple(info.get(k) for k in ("workload", "phase", "threads", "impl"))
        suites.setdefault(suite_of(bench), {})[key] = bench
    return suites, doc


def best(entry):
    """The fastest round: on a shared machine noise only ever adds time, so the minimum is the
    steadiest estimate of a kernel's cost (as timeit's documentation advises)."""
    return entry["stats"]["min"]


def gflops(entry):
    return entry["extra_info"]["flops"] / best(entry) / 1e9


def fmt_time(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


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
        row = {"workload": w, "phase": p, "threads": t}
        for impl in IMPLS:
            row[impl] = entries.get((w, p, t, impl))
        native = row["native"]
        sgemm = best_sgemm(entries, w)
        for impl in ("reference", "torch"):
            other = row[impl]
            row[f"vs_{impl}"] = (best(other) / best(native)
                                 if native is not None and other is not None else None)
        row["gflops"] = gflops(native) if native is not None else None
        row["sgemm_fraction"] = (row["gflops"] / gflops(sgemm)
                                 if native is not None and sgemm is not None else None)
        out.append(row)
    return out


def markdown_tables(entries):
    """One markdown table per workload, with a line on its raw sgemm rate."""
    parts = []
    all_rows = rows(entries)
    for workload in sorted({r["workload"] for r in all_rows}):
        sample = next(e for (w, *_), e in entries.items() if w == workload)
        B, C, OC = sample["extra_info"]["shape"]
        dtype = sample["extra_info"]["dtype"]
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
        parts.append("| phase | threads | native | reference | torch | native vs reference "
                     "| native vs torch | native GFLOP/s | of sgemm rate |")
        parts.append("|---|---|---|---|---|---|---|---|---|")
        for r in all_rows:
            if r["workload"] != workload:
                continue
            cells = [r["phase"], str(r["threads"])]
            cells += [fmt_time(best(r[i])) if r[i] is not None else "–" for i in IMPLS]
            cells += [f"{r[k]:.2f}x" if r[k] is not None else "–"
                      for k in ("vs_reference", "vs_torch")]
            cells.append(f"{r['gflops']:.1f}" if r["gflops"] is not None else "–")
            cells.append(f"{r['sgemm_fraction']:.0%}" if r["sgemm_fraction"] is not None
                         else "–")
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def write_charts(entries):
    """Speed-up bars (native over reference and over torch) and the fraction of the sgemm
    rate, as PNGs in bench/results/. Returns the paths written (none without matplotlib)."""
    all_rows = rows(entries)
    labels = [f"{r['workload']} {'fwd' if r['phase'] == 'forward' else 'fwd+bwd'} "
              f"t{r['threads']}" for r in all_rows]
    charts = {
        "linear_speedup.png": (
            [("vs reference", "vs_reference"), ("vs torch", "vs_torch")],
            "native speed-up (best time of other / native)", 1.0, "{:.2f}x"),
        "linear_sgemm_fraction.png": (
            [("native", "sgemm_fraction")],
            "native rate / raw 2-thread sgemm rate", None, "{:.0%}"),
    }
    return bar_charts(all_rows, labels, charts, "fastnn Linear+bias+ReLU, float32 (L1..L4)")


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
        f"- BLAS: {info.get('blas', '?')}",
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


def section(entries, doc, charts):
    """The BENCHMARKS.md section between the markers."""
    parts = [
        START,
        "## Linear + bias + ReLU (L1..L4)",
        "",
        measured_line(doc),
        "",
        build_summary(doc),
        "",
        "Best round time per step (the minimum over rounds: on this shared machine noise only "
        "adds time). *native vs X* is X's best time over native's (above 1: native is "
        "faster). GFLOP/s counts 2·B·in·out for the forward and 6·B·in·out for forward+"
        "backward (bias and ReLU not counted); *of sgemm rate* divides it by the faster raw "
        "2-thread sgemm of the forward's shape. forward+backward is one forward and one "
        "backward accumulating dweight and dbias, every buffer reused; torch's forward runs "
        "under no_grad, its backward through autograd.",
        "",
        markdown_tables(entries),
    ]
    for chart in charts:
        parts.append(f"![{chart.stem}]({chart.relative_to(ROOT).as_posix()})")
    parts += ["", END]
    return "\n".join(parts)


# ---- BatchNorm1d (N1..N3) and the STREAM triad ----

BN_PHASE = "forward+backward"


def gbps(entry):
    """Achieved bandwidth: the bytes of the minimal passes over the best time, in GB/s."""
    return entry["extra_info"]["bytes"] / best(entry) / 1e9


def triad(entries, threads):
    """The STREAM triad entry at `threads`, or None."""
    return entries.get(("triad", "triad", threads, "native"))


def bn_rows(entries):
    """One dict per (workload, threads) with the best times, the speed-ups of native, its
    bandwidth and that as a fraction of the triad's at the same thread count."""
    keys = sorted({(w, t) for (w, p, t, i) in entries if p == BN_PHASE})
    out = []
    for w, t in keys:
        row = {"workload": w, "threads": t}
        for impl in IMPLS:
            row[impl] = entries.get((w, BN_PHASE, t, impl))
        native = row["native"]
        for impl in ("reference", "torch"):
            other = row[impl]
            row[f"vs_{impl}"] = (best(other) / best(native)
                                 if native is not None and other is not None else None)
        row["gbps"] = gbps(native) if native is not None else None
        stream = triad(entries, t)
        row["triad_fraction"] = (row["gbps"] / gbps(stream)
                                 if native is not None and stream is not None else None)
        out.append(row)
    return out


def triad_line(entries):
    """The sentence giving the machine's measured memory bandwidth."""
    found = {t: triad(entries, t) for t in (1, 2)}
    found = {t: e for t, e in found.items() if e is not None}
    if not found:
        return "No STREAM triad measurement in this run.\n"
    n = next(iter(found.values()))["extra_info"]["shape"][0]
    rates = "; ".join(f"{gbps(e):.1f} GB/s on {t} thread{'s' if t > 1 else ''} "
                      f"({fmt_time(best(e))})" for t, e in sorted(found.items()))
    return (f"Machine limit, STREAM triad (`fastnn._native.stream_triad`, a = b + s·c over "
            f"{n / 1e6:.0f}M float64, 24 bytes per element): {rates}.\n")


def bn_markdown_tables(entries):
    """The triad line and one table over N1..N3, 1 and 2 threads."""
    parts = [triad_line(entries),
             "| workload | batch × C | threads | native | reference | torch "
             "| native vs reference | native vs torch | native GB/s | of triad |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in bn_rows(entries):
        sample = next(e for e in (r[i] for i in IMPLS) if e is not None)
        B, C = sample["extra_info"]["shape"]
        cells = [r["workload"], f"{B} × {C}", str(r["threads"])]
        cells += [fmt_time(best(r[i])) if r[i] is not None else "–" for i in IMPLS]
        cells += [f"{r[k]:.2f}x" if r[k] is not None else "–"
                  for k in ("vs_reference", "vs_torch")]
        cells.append(f"{r['gbps']:.1f}" if r["gbps"] is not None else "–")
        cells.append(f"{r['triad_fraction']:.0%}" if r["triad_fraction"] is not None else "–")
        parts.append("| " + " | ".join(cells) + " |")
    parts.append("")
    return "\n".join(parts)


def bn_write_charts(entries):
    """Speed-up bars and the fraction of the triad bandwidth, as PNGs in bench/results/."""
    all_rows = bn_rows(entries)
    labels = [f"{r['workload']} t{r['threads']}" for r in all_rows]
    charts = {
        "batchnorm_speedup.png": (
            [("vs reference", "vs_reference"), ("vs torch", "vs_torch")],
            "native speed-up (best time of other / native)", 1.0, "{:.2f}x"),
        "batchnorm_triad_fraction.png": (
            [("native", "triad_fraction")],
            "native GB/s / STREAM triad GB/s (same threads)", None, "{:.0%}"),
    }
    return bar_charts(all_rows, labels, charts,
                      "fastnn BatchNorm1d training fwd+bwd, float32 (N1..N3)")


def bn_section(entries, doc, charts):
    """The BENCHMARKS.md section between BN_START and BN_END."""
    parts = [
        BN_START,
        "## BatchNorm1d training forward+backward (N1..N3)",
        "",
        measured_line(doc),
        "",
        build_summary(doc),
        "",
        "One training step: a forward normalising with the batch statistics and updating the "
        "running statistics, then a backward accumulating dweight and dbias, every buffer "
        "reused; torch is `torch.nn.functional.batch_norm` with autograd. Best round time per "
        "step (the minimum over rounds). *native vs X* is X's best time over native's (above "
        "1: native is faster). GB/s counts the minimal traffic, 8·B·C·4 bytes (forward: read "
        "x for the statistics, read x and write y; backward: read dy and x for the sums, read "
        "dy and x and write dx); *of triad* divides it by the STREAM triad's GB/s at the same "
        "thread count. N1 and N2 (0.5 and 8 MB of arrays) stay largely in cache between "
        "passes, so they can exceed the triad's rate; N3 (256 MB) cannot.",
        "",
        bn_markdown_tables(entries),
    ]
    for chart in charts:
        parts.append(f"![{chart.stem}]({chart.relative_to(ROOT).as_posix()})")
    parts += ["", BN_END]
    return "\n".join(parts)


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


def readme_summary(entries, bn_entries=None):
    """The 2-thread ratios, for README.md, between README_START and README_END: Linear, then
    BatchNorm1d when measured."""
    lines = [README_START,
             "| workload | forward vs NumPy twin | forward vs PyTorch | forward, % of sgemm "
             "| fwd+bwd vs NumPy twin | fwd+bwd vs PyTorch |",
             "|---|---|---|---|---|---|"]
    by_key = {(r["workload"], r["phase"], r["threads"]): r for r in rows(entries)}
    for workload in sorted({w for w, _, _ in by_key}):
        fwd, both = by_key.get((workload, "forward", 2)), by_key.get((workload, PHASES[1], 2))
        if fwd is None or both is None:
            continue

        def ratio(v):
            return "–" if v is None else f"{v:.2f}x"

        frac = "–" if fwd["sgemm_fraction"] is None else f"{fwd['sgemm_fraction']:.0%}"
        lines.append(f"| {workload} | {ratio(fwd['vs_reference'])} | {ratio(fwd['vs_torch'])} "
                     f"| {frac} | {ratio(both['vs_reference'])} | {ratio(both['vs_torch'])} |")
    bn = [r for r in bn_rows(bn_entries or {}) if r["threads"] == 2]
    if bn:
        stream = triad(bn_entries, 2)
        limit = f", STREAM triad {gbps(stream):.1f} GB/s" if stream is not None else ""
        lines += ["",
                  "BatchNorm1d training forward+backward, float32, 2 threads (N1..N3 of "
                  "DESIGN.md: (batch, C) = (128, 256), (512, 1024), (4096, 4096)"
                  f"{limit}):",
                  "",
                  "| workload | vs NumPy twin | vs PyTorch | native GB/s | % of triad |",
                  "|---|---|---|---|---|"]
        for r in bn:
            ref = "–" if r["vs_reference"] is None else f"{r['vs_reference']:.2f}x"
            tor = "–" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}x"
            rate = "–" if r["gbps"] is None else f"{r['gbps']:.1f}"
            frac = "–" if r["triad_fraction"] is None else f"{r['triad_fraction']:.0%}"
            lines.append(f"| {r['workload']} | {ref} | {tor} | {rate} | {frac} |")
    lines.append(README_END)
    return "\n".join(lines)


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
    written = []
    entries = suites.get("linear", {})
    if entries:
        print(markdown_tables(entries))
        charts = write_charts(entries)
        text = section(entries, doc, charts)
        atomic_write(RESULTS / "linear.md",
                     text.replace(START, "").replace(END, "").strip() + "\n")
        replace_section(BENCHMARKS_MD, START, END, text, HEADER)
        written += [RESULTS / "linear.md", *charts]
    bn_entries = suites.get("batchnorm", {})
    if bn_entries:
        print(bn_markdown_tables(bn_entries))
        charts = bn_write_charts(bn_entries)
        text = bn_section(bn_entries, doc, charts)
        atomic_write(RESULTS / "batchnorm.md",
                     text.replace(BN_START, "").replace(BN_END, "").strip() + "\n")
        replace_section(BENCHMARKS_MD, BN_START, BN_END, text, HEADER)
        written += [RESULTS / "batchnorm.md", *charts]
    if entries:
        replace_section(README_MD, README_START, README_END,
                        readme_summary(entries, bn_entries))
    for path in [*written, BENCHMARKS_MD, *([README_MD] if entries else [])]:
        print("wrote", path.relative_to(ROOT))
    others = [suite_of(b) for b in doc["benchmarks"] if suite_of(b) not in SUITES]
    for suite in sorted(set(others)):
        print(f"not reported here: suite {suite!r} ({others.count(suite)} benchmarks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
