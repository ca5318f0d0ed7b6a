"""Portcullis's throughput against lean's, run by run, for bench/run.sh and bench/scale.sh.

The two took turns, so each pair of runs fell on the same spell of the shared machine:
the spread of the paired shares is the noise, their median the share.
"""
import statistics


def paired(ours, lean):
    """The paired shares of two servers' runs, each a (requests/s, text) in turn order:
    every share and their median for a few runs, the median and quartiles for rounds."""
    pairs = [a[0] / b[0] for a, b in zip(ours, lean)]
    median = statistics.median(pairs)
    if len(pairs) > 5:
        q1, _, q3 = statistics.quantiles(pairs, n=4)
        return f"paired over {len(pairs)} rounds: median {median:.0%}, quartiles {q1:.0%}-{q3:.0%}"
    shown = ", ".join(f"{p:.0%}" for p in pairs)
    return f"run by run {shown}, median {median:.0%}"
