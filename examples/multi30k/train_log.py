"""What fairseq-train's own log lines say about a training: the summary a stage writes
(``train.json``), read from fairseq's lines rather than measured around the process, so that a
training resumed over several runs (the recipe appends each run to one log) is counted whole."""

import re
from datetime import datetime
from typing import Dict

from examples.multi30k.commands import RUN_AGAIN

TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) \|", re.MULTILINE)
#: a run that went on from where an earlier one stopped (``--finetune-from-model`` and a
#: reconstruction-init student start at 0 updates)
RESUMED = re.compile(r"\| Loaded checkpoint \S+ \(epoch \d+ @ [1-9]\d* updates\)")


def parse_train_log(output: str) -> Dict:
    """Parameter count, best valid loss, final train wps and updates from fairseq's own lines."""
    summary = {}
    dense = re.search(r"num\. shared model params: ([\d,]+)", output)
    if dense:
        summary["total_params"] = int(dense.group(1).replace(",", ""))
    # fairseq's own best_loss (restored from the checkpoint on a resume, so a run resumed after
    # its best keeps that best); the lowest loss printed by this run where it is absent
    best = re.findall(r"valid on 'valid' subset \|.*?\| best_loss ([\d.]+)", output)
    valid_losses = re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", output)
    if best:
        summary["best_valid_loss"] = float(best[-1])
    elif valid_losses:
        summary["best_valid_loss"] = min(float(loss) for loss in valid_losses)
    wps = re.findall(r"\| train \| epoch .*?\| wps ([\d.]+)", output)
    if wps:
        summary["train_wps"] = float(wps[-1])
    updates = re.findall(r"num_updates[ =](\d+)", output)
    if updates:
        summary["updates"] = int(updates[-1])
    return summary


def training_wall_seconds(log_text: str) -> float:
    """Wall seconds of the training a stage's log ends with: from each run's first timestamped
    fairseq line to its last, summed over the runs since the last one that did not resume (the
    runs before it were another training, moved away or restarted from scratch).
    A run that was stopped counts up to its last line (at most one log interval short)."""
    runs = log_text.split(f"\n{RUN_AGAIN} ")
    fresh = [index for index, text in enumerate(runs) if not RESUMED.search(text)]
    total = 0.0
    for text in runs[fresh[-1] if fresh else 0:]:
        stamps = TIMESTAMP.findall(text)
        if stamps:
            first, last = (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
                           for stamp in (stamps[0], stamps[-1]))
            total += (last - first).total_seconds()
    return round(total, 1)
