#!/usr/bin/env python3
"""Turns the harness's JSON files into PNG plots (gnuplot) and the README's benchmark section.

Reads every *.json that base/bench/report.cc wrote in RESULTS_DIR, draws Mpkt/s (and GB/s where
the parameter is a payload size) by parameter, one line per row, with the placement in the
title, and writes RESULTS_DIR/section.md: per program the rows and what each does, the medians
with their ranges, and every comparison against its goal; a file of runs (kvm_vmbus_bench's:
no rows by size) becomes a table of its runs and their medians. With --readme FILE, replaces
the text between the markers '<!-- harness:begin -->' and '<!-- harness:end -->' in FILE by the
section.

    tools/harness_report.py RESULTS_DIR [--readme README.md] [--extra NAME=FILE ...]

--extra adds a program's plain-text output (one that writes no JSON) as a fenced block.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

BEGIN = "<!-- harness:begin -->"
END = "<!-- harness:end -->"


def fail(message):
    print(f"harness_report: {message}", file=sys.stderr)
    sys.exit(1)


def placement(rtt_ns):
    # The classes of base/bench/placement.h.
    return "smt" if rtt_ns < 45 else "near" if rtt_ns < 150 else "far"


def load(path):
    try:
        with open(path) as file:
            data = json.load(file)
    except (OSError, ValueError) as error:
        fail(f"{path}: {error}")
    keys = (("program", "title", "runs", "iterations", "payload_bytes", "reps") if "runs" in data
            else ("program", "rows", "samples", "medians", "comparisons", "param"))
    for key in keys:
        if key not in data:
            fail(f"{path}: no '{key}' (not a harness JSON file?)")
    return data


def median_rtt(data):
    rtts = [sample["rtt_ns"] for sample in data["samples"]]
    return statistics.median(rtts) if rtts else 0.0


def plot(data, stem, out_dir):
    """Draws Mpkt/s (and GB/s) by parameter; returns the PNG file names."""
    rows = [row["name"] for row in data["rows"]]
    params = [point["param"] for point in data["medians"]]
    table = os.path.join(out_dir, f"{stem}.dat")
    with open(table, "w") as file:
        file.write("# param " + " ".join(rows) + "\n")
        for point in data["medians"]:
            values = [point["rows"].get(row, {}).get("packets_per_second", float("nan")) / 1e6
                      for row in rows]
            file.write(f"{point['param']} " + " ".join(f"{value:.6g}" for value in values) + "\n")
    rtt = median_rtt(data)
    # The program's title wrapped to lines that fit the picture (gnuplot centres and clips them).
    heading = textwrap.wrap(f"{data['program']}: {data['title']}", width=100)
    title = "\\n".join(heading + [
        f"{data['date']}, placement {placement(rtt)} (cache-line round trip {rtt:.0f} ns, "
        f"median), medians of {data['reps']}"])
    pictures = []
    measures = [("mpps", "Mpkt/s", "")]
    if data.get("param_is_payload_bytes") and any(param > 0 for param in params):
        measures.append(("gbps", "GB/s of payload", "*$1/1000"))
    for suffix, label, scale in measures:
        png = f"{stem}.{suffix}.png"
        lines = []
        for index, row in enumerate(rows):
            column = index + 2
            lines.append(f"'{table}' using 0:(${column}{scale}):xtic(1) with linespoints "
                         f"title '{row}'")
        script = "\n".join([
            "set terminal pngcairo size 1000,560 font ',10' noenhanced",
            f"set output '{os.path.join(out_dir, png)}'",
            f"set title \"{title}\"",
            f"set xlabel '{data['param']}" + (" (payload bytes)'" if data.get("param_is_payload_bytes") else "'"),
            f"set ylabel '{label}'",
            "set logscale y",
            "set grid",
            "set key outside right",
            "plot " + ", ".join(lines),
        ])
        result = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
        if result.returncode != 0:
            fail(f"gnuplot for {png}: {result.stderr.strip()}")
        pictures.append(png)
    os.remove(table)
    return pictures


def fmt_rate(point, row):
    entry = point["rows"].get(row)
    if entry is None:
        return "-"
    return (f"{entry['packets_per_second'] / 1e6:.3g} "
            f"({entry['min'] / 1e6:.3g}-{entry['max'] / 1e6:.3g})")


def section(data, pictures, link_dir):
    rows = [row["name"] for row in data["rows"]]
    rtt = median_rtt(data)
    out = [f"#### {data['program']}: {data['title']}", ""]
    out.append(f"`{data['command']}` on {data['date']} ({data['cpu']}, {data['kernel']}); "
               f"{data['reps']} repetitions x {data['millis']} ms per row, rows interleaved, "
               f"placement {placement(rtt)} (median cache-line round trip {rtt:.0f} ns).")
    out.append("")
    for row in data["rows"]:
        out.append(f"- `{row['name']}`: {row['policy']}")
    out.append("")
    out.append(f"Mpkt/s, median (min-max) of {data['reps']}:")
    out.append("")
    out.append(f"| {data['param']} | rtt ns | " + " | ".join(rows) + " |")
    out.append("|---" * (len(rows) + 2) + "|")
    for point in data["medians"]:
        out.append(f"| {point['param']} | {point['rtt_ns']:.0f} | " +
                   " | ".join(fmt_rate(point, row) for row in rows) + " |")
    out.append("")
    if data["comparisons"]:
        params = [point["param"] for point in data["medians"]]
        out.append("Ratios, each taken within one repetition whose rows all ran at one placement: "
                   "median [min-max], n (discarded); goals are on the median.")
        out.append("")
        out.append("| comparison | goal | " + " | ".join(str(param) for param in params) + " |")
        out.append("|---" * (len(params) + 2) + "|")
        for comparison in data["comparisons"]:
            goal = "-"
            if comparison["goal"] > 0:
                upto = comparison["goal_to"]
                goal = (f">= {comparison['goal']:.2f}x ({comparison['goal_from']}.."
                        f"{'any' if upto is None else upto})")
            cells = []
            for point in comparison["by_param"]:
                if "median" not in point:
                    cells.append(f"none ({point['discarded']} discarded)")
                    continue
                cell = f"{point['median']:.2f} [{point['min']:.2f}-{point['max']:.2f}] n={point['n']}"
                if point["discarded"]:
                    cell += f" ({point['discarded']})"
                if "met" in point:
                    cell += " met" if point["met"] else " **missed**"
                cells.append(cell)
            out.append(f"| {comparison['name']} | {goal} | " + " | ".join(cells) + " |")
        out.append("")
    for png in pictures:
        out.append(f"![{data['program']} {png}]({link_dir}/{png})")
    out.append("")
    return out


def run_section(data):
    """A program that records runs rather than rows by size (kvm_vmbus_bench): its runs as a
    table, then per mode the median of each figure."""
    out = [f"#### {data['program']}: {data['title']}", ""]
    out.append(f"`{data['command']}` on {data['date']} ({data['cpu']}, {data['kernel']}); "
               f"{data['iterations']} timed round trips per run, {data['payload_bytes']}-byte "
               f"requests, {data['reps']} runs of each mode, interleaved. {data.get('columns', '')}")
    out.append("")
    columns = [("us/rt", "us_per_round_trip", ".1f"), ("turn us", "turn_us", ".1f"),
               ("turn/raw", "turn_over_raw", ".2f"), ("exits/rt", "exits_per_round_trip", ".4f"),
               ("irqs/rt", "irqs_per_round_trip", ".4f")]
    out.append("| mode | rep | rtt ns | placement | " + " | ".join(c[0] for c in columns) + " |")
    out.append("|---" * (len(columns) + 4) + "|")
    for run in data["runs"]:
        out.append(f"| {run['mode']} | {run['rep']} | {run['rtt_ns']:.0f} | {run['placement']} | "
                   + " | ".join(format(run[key], spec) for _, key, spec in columns) + " |")
    out.append("")
    modes = list(dict.fromkeys(run["mode"] for run in data["runs"]))
    out.append("Medians per mode:")
    out.append("")
    out.append("| mode | " + " | ".join(c[0] for c in columns) + " |")
    out.append("|---" * (len(columns) + 1) + "|")
    for mode in modes:
        runs = [run for run in data["runs"] if run["mode"] == mode]
        out.append(f"| {mode} | " + " | ".join(
            format(statistics.median(run[key] for run in runs), spec)
            for _, key, spec in columns) + " |")
    out.append("")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir")
    parser.add_argument("--readme")
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    names = sorted(name for name in os.listdir(args.results_dir) if name.endswith(".json"))
    if not names:
        fail(f"no .json files in {args.results_dir}")
    link_dir = os.path.relpath(args.results_dir,
                               os.path.dirname(os.path.abspath(args.readme)) if args.readme
                               else args.results_dir)
    lines = [BEGIN, "", "<!-- Written by tools/harness_report.py from the JSON files in "
             f"{link_dir}/; edit the programs or the script, not this text. -->", ""]
    for name in names:
        data = load(os.path.join(args.results_dir, name))
        if "runs" in data:
            lines += run_section(data)
            continue
        stem = name[:-len(".json")]
        lines += section(data, plot(data, stem, args.results_dir), link_dir)
    for extra in args.extra:
        title, _, path = extra.partition("=")
        try:
            with open(path) as file:
                text = file.read().rstrip()
        except OSError as error:
            fail(f"--extra {extra}: {error}")
        lines += [f"#### {title}", "", "```", text, "```", ""]
    lines.append(END)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.results_dir, "section.md"), "w") as file:
        file.write(text)
    if args.readme:
        with open(args.readme) as file:
            readme = file.read()
        begin, end = readme.find(BEGIN), readme.find(END)
        if begin < 0 or end < begin:
            fail(f"{args.readme}: no '{BEGIN}' ... '{END}' markers")
        with open(args.readme, "w") as file:
            file.write(readme[:begin] + text.rstrip("\n") + readme[end + len(END):])
    print(f"harness_report: {len(names)} result files -> {args.results_dir}/section.md"
          + (f" and {args.readme}" if args.readme else ""))


if __name__ == "__main__":
    main()
