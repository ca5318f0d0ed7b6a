"""Reads `perf script` output of a server profiled at saturation (bench/profile.sh with
SATURATION=1) and prints wall-clock microseconds per request: in each callee of the
request handler, and in the hottest functions (own time).

    perf script -i perf.data | python3 bench/stacks.py REQUESTS SAMPLE_HZ

REQUESTS: how many requests the server answered while perf recorded.
"""
import collections
import re
import sys

HANDLERS = ("server::validate::{{closure}}", "server::mutate::{{closure}}", "lean::answer")
# The connection's I/O, outside the handler: the answer's send (with the loopback's
# delivery to the client) and the request's receive and decryption.
IO = {"writing the answer (writev)": "__GI___writev", "reading the request (TLS)": "read_io"}


def samples(lines):
    """Each sample's stack, innermost frame first."""
    stack = None
    for line in lines:
        if not line.strip():
            if stack:
                yield stack
            stack = None
        elif not line[0].isspace():
            stack = []
        elif stack is not None:
            frame = re.match(r"\s*[0-9a-f]+ (.*?)(\+0x[0-9a-f]+)? \(", line)
            stack.append(frame.group(1) if frame else "?")
    if stack:
        yield stack


def main():
    requests, hz = float(sys.argv[1]), float(sys.argv[2])
    stacks = list(samples(sys.stdin))
    if not stacks or requests <= 0:
        sys.exit("no samples or no requests")
    # A cpu-clock sample stands for 1/hz s of the server's core.
    per_sample = 1e6 / hz / requests
    total = len(stacks) * per_sample
    print(f"{total:.1f} µs of the server's core per request ({len(stacks)} samples)")
    callees, own, io = collections.Counter(), collections.Counter(), collections.Counter()
    for stack in stacks:
        own[stack[0]] += 1
        for name, frame in IO.items():
            if any(frame in f for f in stack):
                io[name] += 1
        at = [i for i, frame in enumerate(stack) if any(h in frame for h in HANDLERS)]
        if at:
            i = at[-1]
            callees["the handler: " + stack[i]] += 1
            callees["  " + (stack[i - 1] if i > 0 else "(its own code)")] += 1
    print("the handler and its callees, µs per request:")
    for name, n in sorted(callees.items(), key=lambda kv: (not kv[0].startswith("the"), -kv[1]))[:25]:
        print(f"{n * per_sample:8.2f}  {name[:140]}")
    for name, n in io.most_common():
        print(f"{n * per_sample:8.2f}  {name}")
    print("hottest functions (own time), µs per request:")
    for name, n in own.most_common(20):
        print(f"{n * per_sample:8.2f}  {name[:140]}")


main()
