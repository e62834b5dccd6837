"""Shared plumbing of the benchmark scripts (run as ``python -m benchmarks.<script>`` from the
repository root): a recipe as a module, run a stock
fairseq CLI in a child Python that reports its own peak memory, and read throughput out of
fairseq's logs."""

import re
import statistics
import subprocess
import sys
from importlib import import_module
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "fairseq_distilled_emb"


def load_recipe(name: str = "multi30k"):
    """The recipe module ``examples.<name>.run`` (its stages, profiles and rows)."""
    return import_module(f"examples.{name}.run")

_CHILD = """
import resource, sys
from importlib import import_module
module, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["fairseq-" + module.rsplit(".", 1)[-1].replace("_", "-")] + argv
try:
    import_module(module).cli_main()
finally:
    print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def run_cli(module: str, args: List[str]) -> Dict:
    """Run ``fairseq_cli.<module>`` (same code as the console script); return output and peak RSS."""
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, f"fairseq_cli.{module}"] + [str(a) for a in args],
        capture_output=True, text=True,
    )
    output = completed.stdout + "\n" + completed.stderr
    if completed.returncode != 0:
        raise SystemExit(f"fairseq_cli.{module} failed:\n{output[-3000:]}")
    peak = re.search(r"PEAK_RSS_KB (\d+)", output)
    return {"output": output, "peak_rss_mb": int(peak.group(1)) / 1024 if peak else None}


def steady_wps(output: str) -> float:
    """Median words/s of the train_inner log lines, the first (warm-up) interval left out."""
    values = [float(v) for v in re.findall(r"train_inner .*?wps=([\d.]+)", output)]
    steady = values[1:] or values
    if not steady:
        raise SystemExit("no train_inner wps in the log: use --log-interval < --max-update")
    return statistics.median(steady)
