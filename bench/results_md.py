#!/usr/bin/python3
"""bench/RESULTS.md holds one section per benchmark: the latest run of it.

    /usr/bin/python3 bench/results_md.py RESULTS NAME "ORDER" < SECTION

replaces the section of benchmark NAME in the file RESULTS (from its "## NAME" line up to the
next "## " line) with SECTION, read from stdin, which must start with "## NAME". A benchmark with
no section yet goes before the first section of a benchmark that follows it in ORDER (the names
separated by spaces, as run_bench.sh's ALL_BENCHES), else at the end. A missing or empty RESULTS
starts with HEADER. The file is replaced whole (written beside it, then renamed), so a failure
leaves the old one. bench/run_bench.sh calls this after each benchmark;
tests/python/test_bench_results.py tests it.
"""
import os
import re
import sys

HEADER = """# Benchmark results

The latest run of each benchmark: moe.cpp against PyTorch on the same model, batch and optimizer
(`infer`: against llama.cpp on the same GGUF file), with the machine and the commit it was
measured on. `bash bench/run_bench.sh NAME` (or
`make bench`, every benchmark) replaces the section `## NAME`, notes included; earlier runs stay
in git (`git log -p bench/RESULTS.md`). "moe / PyTorch" ("moe / llama.cpp") is the ratio of
the two sides' speeds (above 1 = moe.cpp is faster). "model FLOP/s ÷ sgemm FLOP/s" is tokens/s × training FLOPs per
token (from `moe params`) divided by the sgemm 2048³ rate measured in the same run (best of its
runs): the share of this machine's BLAS ceiling that a whole training step reaches. Each side's
figure is the fastest of a few alternating runs, all listed in the notes, because these VMs'
speed drifts. A note added by hand below a section explains its numbers and goes when the
section is replaced. See bench/README.md.
"""

_HEADING = re.compile(r"^## (\S+)\s*$")


def split_sections(text):
    """Returns (preamble, [(name, section text)]) of a RESULTS.md, each text without trailing
    blank lines."""
    preamble, sections = [], []
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            sections.append((m.group(1), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    def join(lines):
        return "\n".join(lines).rstrip()
    return join(preamble), [(name, join(lines)) for name, lines in sections]


def replace_section(text, name, section, order):
    """text with the section of benchmark `name` replaced by `section` (or inserted by `order`,
    a list of benchmark names); a text without a preamble gets HEADER."""
    section = section.strip()
    first = section.splitlines()[0] if section else ""
    m = _HEADING.match(first)
    if not m or m.group(1) != name:
        raise ValueError(f"the new section must start with '## {name}', not {first!r}")
    preamble, sections = split_sections(text)
    if not preamble:
        preamble = HEADER.rstrip()
    names = [n for n, _ in sections]
    if name in names:
        sections[names.index(name)] = (name, section)
    else:
        later = order[order.index(name) + 1:] if name in order else []
        at = next((i for i, n in enumerate(names) if n in later), len(sections))
        sections.insert(at, (name, section))
    return "\n\n".join([preamble] + [s for _, s in sections]) + "\n"


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    path, name, order = argv[1], argv[2], argv[3].split()
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    new = replace_section(text, name, sys.stdin.read(), order)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv)
