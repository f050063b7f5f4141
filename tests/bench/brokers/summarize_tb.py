#!/usr/bin/env python3
"""summarize_tb.py RAW.txt TRAINBUS.txt - the tables of run_brokers.sh.

RAW.txt holds psbench key=value lines (tag, mode, k, ...); medians are taken
over runs per (tag, mode, k). TRAINBUS.txt holds tb_ctl's lines (train,
stall, setlr). Prints markdown: throughput and latency with ratios of
trainbus to each broker, memory, set_lr round trip and training slowdown.
"""
import statistics
import sys
from collections import OrderedDict

BROKERS = ["redis", "nats", "mosquitto"]
ORDER = ["direct"] + BROKERS + ["trainbus", "trainbus-f0", "trainbus-w"]


def kv(line):
    d = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            d[k] = v
    return d


def med(vals):
    vals = [float(v) for v in vals if v not in (None, "", "-1", "-1.0", "-1.00", "nan")]
    return statistics.median(vals) if vals else float("nan")


def fmt(x, nd=0):
    return "n/a" if x != x else f"{x:,.{nd}f}"


def ratio(a, b):
    return "n/a" if a != a or b != b or b == 0 else f"{a / b:.2f}"


def main():
    groups = OrderedDict()
    with open(sys.argv[1]) as f:
        for line in f:
            if "proto=" in line:
                d = kv(line)
                groups.setdefault((d["tag"], d["mode"], int(d["k"])), []).append(d)
    tb = [kv(l) | {"_kind": l.split()[0] if "=" not in l.split()[0] else l.split()[1]}
          for l in open(sys.argv[2]) if l.strip()] if len(sys.argv) > 2 else []

    def rows(mode):
        return sorted((g for g in groups if g[1] == mode),
                      key=lambda g: (g[2], ORDER.index(g[0]) if g[0] in ORDER else 99))

    print("### Fan-out throughput (1 publisher, blast; delivered = n x K)\n")
    print("trainbus: the publisher is a trainer thread embedding the server (tb_pub); "
          "`trainbus-w` is closed-loop (the trainer stays at most WIN events ahead of the "
          "slowest subscriber): its lossless capacity. Blast trainbus drops batch events "
          "for subscribers more than 256 KiB behind, by design (`lost`).\n")
    print("| server | K | runs | delivered/s (median) | min..max | lost (max) | server CPU us/delivery |")
    print("|---|---|---|---|---|---|---|")
    tput = {}
    for g in rows("tput"):
        rs = groups[g]
        dps = [float(r["deliv_per_s"]) for r in rs]
        tput[(g[0], g[2])] = med(dps)
        print(f"| {g[0]} | {g[2]} | {len(rs)} | {fmt(med(dps))} | {fmt(min(dps))}..{fmt(max(dps))} | "
              f"{max(int(r['lost']) for r in rs)} of {rs[0]['expected']} | "
              f"{fmt(med([r.get('broker_cpu_us_per_deliv') for r in rs]), 2)} |")
    ks = sorted({g[2] for g in groups if g[1] == "tput"})
    print("\nRatios of delivered/s (trainbus / broker; > 1 means trainbus delivers more):\n")
    print("| K | " + " | ".join(f"trainbus/{b}" for b in BROKERS) + " | " +
          " | ".join(f"trainbus-w/{b}" for b in BROKERS) + " |")
    print("|---|" + "---|" * (2 * len(BROKERS)))
    for k in ks:
        cells = [ratio(tput.get(("trainbus", k), float("nan")), tput.get((b, k), float("nan"))) for b in BROKERS]
        cells += [ratio(tput.get(("trainbus-w", k), float("nan")), tput.get((b, k), float("nan"))) for b in BROKERS]
        print(f"| {k} | " + " | ".join(cells) + " |")

    print("\n### Publish-to-receive latency (fixed rate, CLOCK_MONOTONIC in the payload)\n")
    print("| server | K | rate/s | runs | p50 us | p90 us | p99 us | p99.9 us | lost (max) | server CPU % of a core |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    lat = {}
    for g in rows("lat"):
        rs = groups[g]
        cpu = []
        for r in rs:
            b, ar = float(r["broker_cpu_s"]), float(r["actual_rate"])
            if b >= 0 and ar > 0:
                cpu.append(100.0 * b / (float(r["sent"]) / ar))
        p50, p99 = med([r["p50_us"] for r in rs]), med([r["p99_us"] for r in rs])
        lat[(g[0], g[2])] = (p50, p99)
        print(f"| {g[0]} | {g[2]} | {rs[0]['rate']} | {len(rs)} | {fmt(p50, 1)} | "
              f"{fmt(med([r['p90_us'] for r in rs]), 1)} | {fmt(p99, 1)} | "
              f"{fmt(med([r['p999_us'] for r in rs]), 1)} | {max(int(r['lost']) for r in rs)} | "
              f"{fmt(med(cpu), 0) if cpu else 'n/a'} |")
    print("\n`trainbus` runs with the daemon's default --flush-interval-ms 1 (writes coalesced "
          "while events stream in: less CPU and no training slowdown, about 1 ms more "
          "latency); `trainbus-f0` with --flush-interval-ms 0 (every event written at once).")
    print("\nRatios of latency (trainbus / broker; < 1 means trainbus is faster), p50 and p99:\n")
    print("| K | " + " | ".join(f"vs {b} p50 | vs {b} p99" for b in BROKERS) + " |")
    print("|---|" + "---|" * (2 * len(BROKERS)))
    for tag in ("trainbus", "trainbus-f0"):
        for k in sorted({g[2] for g in groups if g[1] == "lat"}):
            t = lat.get((tag, k), (float("nan"),) * 2)
            cells = []
            for b in BROKERS:
                o = lat.get((b, k), (float("nan"),) * 2)
                cells += [ratio(t[0], o[0]), ratio(t[1], o[1])]
            print(f"| {k} ({tag}) | " + " | ".join(cells) + " |")

    print("\n### Memory (VmRSS of the server process)\n")
    print("| server | idle subscribers | RSS before | RSS with them | per subscriber | connect time |")
    print("|---|---|---|---|---|---|")
    per = {}
    for g in sorted((g for g in groups if g[1] == "idle"), key=lambda g: ORDER.index(g[0]) if g[0] in ORDER else 99):
        r = groups[g][0]
        per[g[0]] = float(r["per_sub_bytes"])
        print(f"| {g[0]} | {g[2]:,} | {int(r['rss0_kb']):,} KiB | {int(r['rss_kb']):,} KiB | "
              f"{fmt(float(r['per_sub_bytes']))} B | {r['connect_s']} s |")
    if "trainbus" in per:
        print("\nRatio of bytes per idle subscriber: " + ", ".join(
            f"trainbus/{b} {ratio(per['trainbus'], per[b])}" for b in BROKERS if b in per))
    for r in tb:
        if r["_kind"] == "stall":
            print(f"\n- {r.get('client')} client during a {r.get('wall_s')} s job: RSS {r.get('rss_before_kb')} -> max "
                  f"{r.get('rss_max_kb')} KiB (growth {r.get('growth_kb')} KiB)"
                  + (f"; it was sent {r.get('received_bytes')} bytes, {r.get('events')} events, "
                     f"{r.get('dropped_notices')} dropped notices, slow_consumer bye: {r.get('slow_consumer_bye')}"
                     if r.get("client") == "stalled" else ""))

    print("\n### Training slowdown with 8 subscribers to every event (medians of alternating runs)\n")
    print("| job | runs each | wall, no subscriber | wall, 8 subscribers | slowdown | events per subscriber |")
    print("|---|---|---|---|---|---|")
    for r in tb:
        if r["_kind"] == "train_summary":
            evs = [float(x["events_per_sub"]) for x in tb if x["_kind"] == "train" and x.get("job") == r.get("job")
                   and x.get("k") != "0"]
            print(f"| {r.get('job')} | {r['runs']} | {float(r['wall0_s']):.3f} s | {float(r['wallK_s']):.3f} s | "
                  f"{float(r['slowdown_pct']):+.2f} % | {fmt(med(evs))} |")

    print("\n### set_lr round trip (reply once applied at the next batch boundary)\n")
    print("| job | calls | set_lr p50 | p90 | p99 | batch time p50 (mean) | ping p50 / p99 |")
    print("|---|---|---|---|---|---|---|")
    for r in tb:
        if r["_kind"] == "setlr":
            print(f"| {r.get('job')} | {r['calls']} | {r['setlr_p50_us']} us | {r['setlr_p90_us']} us | "
                  f"{r['setlr_p99_us']} us | {r['batch_p50_us']} us ({r['batch_mean_us']} us) | "
                  f"{r['ping_p50_us']} / {r['ping_p99_us']} us |")


if __name__ == "__main__":
    main()
