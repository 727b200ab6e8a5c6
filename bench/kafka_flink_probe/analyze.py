"""Summarise a probe output dir: counts, latency produce->seen, produce->timer fire, windows closed."""
import glob
import json
import statistics
import sys


def load(d, prefix):
    rows = []
    for f in glob.glob(f"{d}/{prefix}-*.jsonl"):
        with open(f) as fh:
            rows += [json.loads(x) for x in fh if x.strip()]
    return rows


def stats(xs):
    if not xs:
        return "n=0"
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    return f"n={len(xs)} median={statistics.median(xs):.0f}ms p90={q(0.9):.0f}ms max={xs[-1]:.0f}ms min={xs[0]:.0f}ms"


def main(d, since_ms=0):
    seen = [r for r in load(d, "seen") if r.get("seen_ms", 0) >= since_ms]
    fired = [r for r in load(d, "fired") if r.get("fired_ms", 0) >= since_ms]
    wins = load(d, "windows")
    ids = [r["event_id"] for r in seen if r.get("event_id")]
    print(f"seen: {len(seen)} rows, {len(set(ids))} distinct event ids, duplicates {len(ids) - len(set(ids))}")
    print("  produce->seen  :", stats([r["seen_ms"] - r["prod_ms"] for r in seen if r.get("prod_ms")]))
    fids = [r["event_id"] for r in fired if r.get("event_id")]
    print(f"fired: {len(fired)} rows, {len(set(fids))} distinct")
    print("  produce->fired :", stats([r["fired_ms"] - r["prod_ms"] for r in fired if r.get("prod_ms")]))
    print("  timer_ts->fired:", stats([r["fired_ms"] - r["timer_ts_ms"] for r in fired]))
    print(f"windows closed: {len(wins)} (sum counts {sum(w['count'] for w in wins)})")
    if wins:
        print("  win_end->closed:", stats([w["closed_ms"] - w["win_end_ms"] for w in wins]))
    parts = {}
    for r in seen:
        parts[r["partition"]] = parts.get(r["partition"], 0) + 1
    print("seen per partition:", dict(sorted(parts.items())))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
