#!/usr/bin/env python3
"""abstats.py - paired A/B statistics for bench/run.

usage: abstats.py RUNS.TSV PAIRS [--syscall-ns NS] [--md OUT.md] [--tsv OUT.tsv]

RUNS.TSV has bench/run's rows "kind case server round metric value" (no
header).  PAIRS is a comma-separated list of A/B server pairs, e.g.
"io_uring/epoll,io_uring/raw_uring".  For every kind, case, metric and pair
with both servers measured in the same round, the ratio A/B is taken round
by round; the report gives the median of those ratios and a distribution-free
95% interval for it from the sign test (order statistics of the ratios: for
n = 9 the 2nd and 8th smallest, 96.1% coverage).  A difference is called real
only where that interval excludes 1.0.  Fewer than 6 pairs cannot give a 95%
interval: the widest one (min..max) is shown with its lower coverage and no
verdict.  The interquartile range of the ratios (IQR / median) is the
spread, the figure the 2-connection investigation compares.

With --syscall-ns, every case that has epoll and io_uring rows also gets
"worth" = (epoll - io_uring syscalls/req) x NS, next to
"saved" = epoll - io_uring CPU us/req (medians of the round-by-round
differences, with their sign-test intervals).
"""
import argparse
import math
import statistics
import sys
from collections import defaultdict

METRIC_LABEL = {
    "cpu_us_per_req": "CPU us/req",
    "syscalls_per_req": "syscalls/req (goev stats)",
    "perf_syscalls_per_req": "syscalls/req (perf)",
    "rps": "requests/s",
    "p99_us": "p99 us",
    "cpu_us_per_msg": "CPU us/msg",
    "syscalls_per_msg": "syscalls/msg (goev stats)",
    "perf_syscalls_per_msg": "syscalls/msg (perf)",
    "msgs_per_sec": "messages/s",
}
# Lower is better for these; requests/s and messages/s higher is better.
SKIP = {"errors"}


def binom_cdf(k, n):
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(0, min(k, n) + 1)) / 2.0 ** n


def sign_interval(xs, level=0.95):
    """(lo, hi, coverage) for the median of xs from the sign test."""
    s = sorted(xs)
    n = len(s)
    best = None
    for k in range(1, n // 2 + 1):          # interval [s[k-1], s[n-k]]
        cov = 1.0 - 2.0 * binom_cdf(k - 1, n)
        if cov >= level:
            best = (s[k - 1], s[n - k], cov)
        else:
            break
    if best is None:                          # too few: the widest one
        best = (s[0], s[-1], 1.0 - 2.0 * binom_cdf(0, n))
    return best


def iqr(xs):
    if len(xs) < 4:
        return float("nan")
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("pairs")
    ap.add_argument("--syscall-ns", type=float)
    ap.add_argument("--md")
    ap.add_argument("--tsv")
    a = ap.parse_args()

    val = {}                                   # (kind, case, server, metric, round) -> v
    order = []                                 # (kind, case, metric) in first-seen order
    seen = set()
    with open(a.runs) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) != 6 or p[4] in SKIP:
                continue
            kind, case, server, rnd, metric, v = p
            try:
                v = float(v)
            except ValueError:
                continue
            val[(kind, case, server, metric, rnd)] = v
            k = (kind, case, metric)
            if k not in seen:
                seen.add(k)
                order.append(k)
    rounds = defaultdict(set)
    for (kind, case, server, metric, rnd) in val:
        rounds[(kind, case, server, metric)].add(rnd)

    pairs = [tuple(x.split("/", 1)) for x in a.pairs.split(",") if "/" in x]
    rows = []
    for kind, case, metric in order:
        for A, B in pairs:
            common = sorted(rounds.get((kind, case, A, metric), set()) &
                            rounds.get((kind, case, B, metric), set()))
            rs = []
            for r in common:
                x, y = val[(kind, case, A, metric, r)], val[(kind, case, B, metric, r)]
                if y > 0:
                    rs.append(x / y)
            if not rs:
                continue
            med = statistics.median(rs)
            lo, hi, cov = sign_interval(rs)
            real = ""
            if cov >= 0.95:
                real = "yes" if (hi < 1.0 or lo > 1.0) else "no"
            medA = statistics.median(val[(kind, case, A, metric, r)] for r in common)
            medB = statistics.median(val[(kind, case, B, metric, r)] for r in common)
            rows.append(dict(kind=kind, case=case, metric=metric, a=A, b=B, n=len(rs), med=med,
                             lo=lo, hi=hi, cov=cov, real=real, spread=iqr(rs) / med if med else float("nan"),
                             medA=medA, medB=medB, halfw=max(hi - med, med - lo) / med if med else float("nan")))

    worth = []
    if a.syscall_ns:
        for kind, case, metric in order:
            if metric != "cpu_us_per_req" and metric != "cpu_us_per_msg":
                continue
            scm = metric.replace("cpu_us", "syscalls")
            perf_scm = "perf_" + scm
            for sm in (scm, perf_scm):
                common = sorted(rounds.get((kind, case, "epoll", metric), set()) &
                                rounds.get((kind, case, "io_uring", metric), set()) &
                                rounds.get((kind, case, "epoll", sm), set()) &
                                rounds.get((kind, case, "io_uring", sm), set()))
                if common:
                    break
            if not common:
                continue
            dsc = [val[(kind, case, "epoll", sm, r)] - val[(kind, case, "io_uring", sm, r)] for r in common]
            dcpu = [val[(kind, case, "epoll", metric, r)] - val[(kind, case, "io_uring", metric, r)] for r in common]
            wl, wh, _ = sign_interval([d * a.syscall_ns / 1000.0 for d in dsc])
            sl, sh, cov = sign_interval(dcpu)
            worth.append(dict(kind=kind, case=case, n=len(common), dsc=statistics.median(dsc),
                              worth=statistics.median(dsc) * a.syscall_ns / 1000.0, wlo=wl, whi=wh,
                              saved=statistics.median(dcpu), slo=sl, shi=sh, cov=cov,
                              src="goev stats" if sm == scm else "perf"))

    # One row per case and pair; a cell is "median [lo, hi]", starred where
    # the interval excludes 1.0 (a real difference).  The TSV has every metric.
    cols = [("CPU/req", ("cpu_us_per_req", "cpu_us_per_msg")),
            ("syscalls/req (perf)", ("perf_syscalls_per_req", "perf_syscalls_per_msg")),
            ("requests/s", ("rps", "msgs_per_sec")),
            ("p99", ("p99_us",))]
    by = {}
    keys = []
    for r in rows:
        k = (r["kind"], r["case"], r["a"], r["b"])
        if k not in by:
            by[k] = {}
            keys.append(k)
        by[k][r["metric"]] = r

    def cell(r):
        if r is None:
            return "-"
        star = " **real**" if r["real"] == "yes" else ""
        cov = "" if r["cov"] >= 0.95 else f" ({100 * r['cov']:.0f}%)"
        return f"{r['med']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]{cov}{star}"

    out = []
    out.append("| case | A / B | n | " + " | ".join(c for c, _ in cols) + " | CPU ratio IQR/median |")
    out.append("|---|---|---:|" + "---|" * len(cols) + "---:|")
    for k in keys:
        m = by[k]
        cells, n, spread = [], 0, "-"
        for _, names in cols:
            r = next((m[x] for x in names if x in m), None)
            cells.append(cell(r))
            if r is not None:
                n = max(n, r["n"])
        cpu = next((m[x] for x in cols[0][1] if x in m), None)
        if cpu is not None and not math.isnan(cpu["spread"]):
            spread = f"{100 * cpu['spread']:.1f}%"
        out.append(f"| {k[0]} {k[1]} | {k[2]} / {k[3]} | {n} | " + " | ".join(cells) + f" | {spread} |")
    if worth:
        out.append("")
        out.append(f"What io_uring's saved system calls are worth at {a.syscall_ns:.0f} ns per syscall "
                   "(bench/syscall_cost), against the CPU time it actually saves; medians of the "
                   "round-by-round epoll - io_uring differences, sign-test intervals:")
        out.append("")
        out.append("| case | syscalls/req saved | worth us/req | saved us/req | n |")
        out.append("|---|---:|---|---|---:|")
        for w in worth:
            out.append(f"| {w['kind']} {w['case']} | {w['dsc']:.3f} ({w['src']}) | {w['worth']:.3f} "
                       f"({w['wlo']:.3f} - {w['whi']:.3f}) | {w['saved']:.3f} ({w['slo']:.3f} - {w['shi']:.3f}) | {w['n']} |")
    text = "\n".join(out) + "\n"
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if a.tsv:
        with open(a.tsv, "w") as f:
            for r in rows:
                f.write(f"ratio\t{r['kind']}:{r['case']}\t{r['a']}/{r['b']}\t{r['metric']}\t{r['med']:.6g}\t{r['n']}\t"
                        f"{r['lo']:.6g}\t{r['hi']:.6g}\t{r['cov']:.4f}\t{r['real'] or '-'}\t{r['spread']:.4g}\n")
            for w in worth:
                f.write(f"worth\t{w['kind']}:{w['case']}\tepoll-io_uring\tworth_us_per_req\t{w['worth']:.6g}\t{w['n']}\t"
                        f"{w['wlo']:.6g}\t{w['whi']:.6g}\t-\t-\t-\n")
                f.write(f"worth\t{w['kind']}:{w['case']}\tepoll-io_uring\tsaved_us_per_req\t{w['saved']:.6g}\t{w['n']}\t"
                        f"{w['slo']:.6g}\t{w['shi']:.6g}\t{w['cov']:.4f}\t-\t-\n")


if __name__ == "__main__":
    main()
