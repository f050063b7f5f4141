#!/usr/bin/env python3
"""summarize_tb.py RAW.txt TRAINBUS.txt [COMMAND] - the tables of run_brokers.sh.

RAW.txt holds psbench key=value lines (tag, mode, k, ...); medians are taken
over runs per (tag, mode, k). TRAINBUS.txt holds tb_ctl's lines (train,
stall, setlr). Prints markdown: the issue-13 targets as trainbus / Redis ratios (with
COMMAND, the line that reproduces them), then throughput and latency with
ratios of trainbus to each broker, memory, set_lr round trip and training
slowdown.
"""
import statistics
import sys
from collections import OrderedDict

BROKERS = ["redis", "nats", "mosquitto"]
ORDER = ["direct"] + BROKERS + ["trainbus", "trainbus-w"]
# Memory per idle subscriber before issue 13 (tests/bench/brokers/RESULTS.md
# at f346f50), the bound the issue sets.
IDLE_BYTES_BEFORE = 5324


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

    targets(groups, tb, sys.argv[3] if len(sys.argv) > 3 else "bash tests/bench/brokers/run_brokers.sh")

    def rows(mode):
        return sorted((g for g in groups if g[1] == mode),
                      key=lambda g: (g[2], ORDER.index(g[0]) if g[0] in ORDER else 99))

    print("### Fan-out throughput (1 publisher, blast; delivered = n x K)\n")
    print("trainbus: the publisher is a trainer thread embedding the server (tb_pub); "
          "`trainbus-w` is closed-loop (the trainer stays at most WIN events ahead of the "
          "slowest subscriber): its lossless capacity. Blast trainbus drops batch events "
          "for subscribers more than 256 KiB behind, by design (`lost`).\n")
    print("| server | K | runs | delivered/s (median) | min..max | lost (max) | server CPU us/delivery | trainbus loop thread us/delivery |")
    print("|---|---|---|---|---|---|---|---|")
    tput = {}
    for g in rows("tput"):
        rs = groups[g]
        dps = [float(r["deliv_per_s"]) for r in rs]
        tput[(g[0], g[2])] = med(dps)
        print(f"| {g[0]} | {g[2]} | {len(rs)} | {fmt(med(dps))} | {fmt(min(dps))}..{fmt(max(dps))} | "
              f"{max(int(r['lost']) for r in rs)} of {rs[0]['expected']} | "
              f"{fmt(med([r.get('broker_cpu_us_per_deliv') for r in rs]), 2)} | "
              f"{fmt(med([r.get('loop_cpu_us_per_deliv') for r in rs]), 2)} |")
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
    print("\n`trainbus` runs with the daemon's default settings (adaptive coalescing: a client "
          "with nothing in flight is written at once, output gathers while a write is in flight).")
    print("\nRatios of latency (trainbus / broker; < 1 means trainbus is faster), p50 and p99:\n")
    print("| K | " + " | ".join(f"vs {b} p50 | vs {b} p99" for b in BROKERS) + " |")
    print("|---|" + "---|" * (2 * len(BROKERS)))
    for tag in ("trainbus",):
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
    print("| job | runs each | wall, no subscriber | wall, 8 subscribers | slowdown | fastest runs: no subscriber / 8 / slowdown | trainer thread CPU: no subscriber / 8 / slowdown | events per subscriber |")
    print("|---|---|---|---|---|---|---|---|")
    for r in tb:
        if r["_kind"] == "train_summary":
            evs = [float(x["events_per_sub"]) for x in tb if x["_kind"] == "train" and x.get("job") == r.get("job")
                   and x.get("k") != "0"]
            m0, mk = float(r["min0_s"]), float(r["minK_s"])
            print(f"| {r.get('job')} | {r['runs']} | {float(r['wall0_s']):.3f} s | {float(r['wallK_s']):.3f} s | "
                  f"{float(r['slowdown_pct']):+.2f} % | {m0:.3f} / {mk:.3f} s / {100 * (mk - m0) / m0:+.2f} % | "
                  f"{float(r.get('cpu0_s', 'nan')):.3f} / {float(r.get('cpuK_s', 'nan')):.3f} s / "
                  f"{float(r.get('cpu_slowdown_pct', 'nan')):+.2f} % | {fmt(med(evs))} |")

    print("\n### set_lr round trip (reply once applied at the next batch boundary)\n")
    print("| job | calls | set_lr p50 | p90 | p99 | batch time p50 (mean) | ping p50 / p99 |")
    print("|---|---|---|---|---|---|---|")
    for r in tb:
        if r["_kind"] == "setlr":
            print(f"| {r.get('job')} | {r['calls']} | {r['setlr_p50_us']} us | {r['setlr_p90_us']} us | "
                  f"{r['setlr_p99_us']} us | {r['batch_p50_us']} us ({r['batch_mean_us']} us) | "
                  f"{r['ping_p50_us']} / {r['ping_p99_us']} us |")


def targets(groups, tb, cmd):
    """The issue-13 targets: trainbus / Redis in this run, medians."""
    def g(tag, mode, k, key):
        rs = groups.get((tag, mode, k), [])
        return med([r.get(key) for r in rs]) if rs else float("nan")

    def okr(x, lim, le=True):
        if x != x:
            return "n/a"
        return "met" if (x <= lim if le else x >= lim) else "NOT met"

    rows = []
    for k in (1, 8, 64):
        t, r = g("trainbus-w", "tput", k, "deliv_per_s"), g("redis", "tput", k, "deliv_per_s")
        rows.append((f"lossless deliveries/s, K={k} (closed loop)", fmt(t), fmt(r),
                     ratio(t, r), ">= 1", okr(t / r if r == r and r else float("nan"), 1, False)))
    for k in (1, 8, 64):
        t, r = g("trainbus-w", "tput", k, "broker_cpu_us_per_deliv"), g("redis", "tput", k, "broker_cpu_us_per_deliv")
        lt = g("trainbus-w", "tput", k, "loop_cpu_us_per_deliv")
        rows.append((f"CPU per delivery, K={k}: whole tb_pub (trainer + loop) / loop thread",
                     f"{fmt(t, 2)} / {fmt(lt, 2)} us", f"{fmt(r, 2)} us",
                     f"{ratio(t, r)} / {ratio(lt, r)}", "<= 1", okr(lt / r if r == r and r else float("nan"), 1)))
    lost = [int(x["lost"]) for x in groups.get(("trainbus", "tput", 1), [])]
    rl = [int(x["lost"]) for x in groups.get(("redis", "tput", 1), [])]
    if lost:
        n = groups[("trainbus", "tput", 1)][0]["expected"]
        rows.append(("blast, K=1: events lost (median of runs)", f"{statistics.median(lost):,.0f} of {n}",
                     f"{statistics.median(rl) if rl else 'n/a'}", "", "0",
                     "met" if statistics.median(lost) == 0 else "NOT met"))
    for k in (1, 8):
        for q in ("p50_us", "p99_us"):
            t, r = g("trainbus", "lat", k, q), g("redis", "lat", k, q)
            rows.append((f"latency {q[:3]} at {groups.get(('redis', 'lat', k), [{}])[0].get('rate', '?')}/s, K={k}, default settings",
                         f"{fmt(t, 1)} us", f"{fmt(r, 1)} us", ratio(t, r), "<= 1", okr(t / r if r == r and r else float("nan"), 1)))
    for r in tb:
        if r["_kind"] == "setlr" and r.get("job") == "demo":
            s50, b50 = float(r["setlr_p50_us"]), float(r["batch_p50_us"])
            rows.append(("set_lr round trip p50, demo job", f"{s50:,.0f} us = {s50 / b50:.2f} batches",
                         "", "", "<= 2 batches", okr(s50 / b50, 2)))
    for r in tb:
        if r["_kind"] == "train_summary" and r.get("job") in ("demo", "demo-flush1ms"):
            sd = float(r["slowdown_pct"])
            m0, mk = float(r["min0_s"]), float(r["minK_s"])
            smin = 100.0 * (mk - m0) / m0
            scpu = float(r.get("cpu_slowdown_pct", "nan"))
            rows.append((f"training slowdown, 8 subscribers to every event, job {r.get('job')}: "
                         "wall medians / fastest walls / trainer thread CPU medians",
                         f"{sd:+.2f} % / {smin:+.2f} % / {scpu:+.2f} %", "", "", "< 2 %",
                         f"wall: {okr(sd, 2)}, fastest: {okr(smin, 2)}, CPU: {okr(scpu, 2)}"
                         if r.get("job") == "demo" else ""))
    idle = [x for x in groups.get(("trainbus", "idle", 10000), [])] or \
        [x for g2, xs in groups.items() if g2[0] == "trainbus" and g2[1] == "idle" for x in xs]
    ridle = [x for g2, xs in groups.items() if g2[0] == "redis" and g2[1] == "idle" for x in xs]
    if idle:
        b = float(idle[0]["per_sub_bytes"])
        rb = float(ridle[0]["per_sub_bytes"]) if ridle else float("nan")
        rows.append(("memory per idle subscriber", f"{b:,.0f} B", f"{fmt(rb)} B", ratio(b, rb),
                     f"<= {IDLE_BYTES_BEFORE:,} B", okr(b, IDLE_BYTES_BEFORE)))
    print("### Issue 13 targets: trainbus / Redis 7, this run (medians)\n")
    print(f"Reproduce: `{cmd}` (all servers side by side, rounds interleaved; the machine is "
          "shared, so compare ratios within one run).\n")
    print("| measure | trainbus | Redis | trainbus / Redis | target | |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


if __name__ == "__main__":
    main()
