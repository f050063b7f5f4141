#!/usr/bin/env python3
"""perstat.py STAT.csv PSBENCH.txt - perf stat -x, output of tb_pub
as counts per event sent and per delivery (profile_tb.sh)."""
import collections
import sys

kv = dict(t.split("=", 1) for t in open(sys.argv[2]).read().split() if "=" in t)
sent, deliv = float(kv["sent"]), max(float(kv["delivered"]), 1.0)
print(f"-- perf stat of tb_pub: sent {sent:.0f}, delivered {deliv:.0f}, lost {kv['lost']}, "
      f"{kv.get('deliv_per_s', kv.get('p50_us', '?'))} "
      f"{'deliveries/s' if 'deliv_per_s' in kv else 'us p50'}")
tot = collections.OrderedDict()
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) < 3:  # value,unit,event,...
        continue
    try:
        v = float(f[0])
    except ValueError:
        continue
    tot.setdefault(f[2], collections.OrderedDict())["all"] = v
for ev, per in tot.items():
    scale, unit = (1e3, "us") if ev == "task-clock" else (1, "")
    v = sum(per.values()) * scale
    print(f"   {ev:30s} /event {v / sent:8.3f}{unit:2s} /delivery {v / deliv:8.3f}{unit:2s}")
