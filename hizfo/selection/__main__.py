"""``python -m hizfo.selection model=facebook/opt-2.7b rho=0.6 batch_size=4 seq_len=512 resolution=10000``

Profile-only selection from a config (no weights, no data): prints what GreenTrainer / Hi-ZFO's
Theta_FO would be at rho. ``model`` takes a config.json path, a folder holding one, a cached hub
id, or tiny:<family>. Other keys: importance=uniform|numel|random, seed=0, by=tensor|layer,
refine=true|false, json=PATH (also write the full selection as JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hizfo.selection.partition import profile_only_selection

DEFAULTS = {"model": None, "rho": "0.6", "batch_size": "4", "seq_len": "512", "resolution": "10000",
            "importance": "uniform", "seed": "0", "by": "tensor", "refine": "true", "json": None}


def parse(argv: list[str]) -> dict[str, str | None]:
    opts = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"bad argument {arg!r}: use key=value with keys {', '.join(DEFAULTS)}")
        opts[key] = value
    if not opts["model"]:
        raise SystemExit("model=<config.json | folder | hub id | tiny:family> is required")
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    o = parse(argv)
    result = profile_only_selection(o["model"], rho=float(o["rho"]), batch_size=int(o["batch_size"]),
                                    seq_len=int(o["seq_len"]), resolution=int(o["resolution"]),
                                    importance=o["importance"], seed=int(o["seed"]),
                                    refine=o["refine"].lower() in ("1", "true", "yes"))
    print(result.summary(by=o["by"]))
    if o["json"]:
        Path(o["json"]).write_text(json.dumps(result.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
