"""Does pruning pay? TPE + early stopping against random search without pruning.

Both arms run the same number of trials over the same space (benchmarks/
nas-benchmark-space.yaml: 9-epoch trials, constant learning rate, wide ranges — the setting
the Hyperband/ASHA papers measure in; see the file), on the same texts, with the same sampler
seed (so the first, random, trials of both arms are the same draws), through
`sutazai.learning.nas.run_study` (real studies: SQLite storage, MLflow runs). The pruned arm
uses the space's pruner (asha; --pruner hyperband|median to compare). Compute is counted in
trial-epochs (one epoch of one trial), which is what the nightly budget pays for,
independent of how busy the machine is.

For each seed: the threshold is the worse of the two arms' final best validation losses
(so both reach it), and each arm's cost is the trial-epochs it had spent when its best
completed trial first reached the threshold. The ratio random / pruned is the saving.

A second figure, labelled apart, is the total trial-epochs of each arm at equal trials
(the budget the whole study took), which is not the target's metric.

    .venv/bin/python benchmarks/nas_pruning.py --trials 16 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sutazai.config import Settings  # noqa: E402
from sutazai.learning.nas import load_space, run_study  # noqa: E402
from sutazai.learning.nas_report import StudyReport  # noqa: E402
from sutazai.learning.search_space import SearchSpace  # noqa: E402

WORDS_TEXT = ("the a of to in on for with by from at as is was be have do will can model data "
         "pipeline server request token batch stream latency memory cache layer attention head "
         "vector prompt train test metric registry version bundle catalog source local network "
         "quick brown fox jumps over lazy dog river mountain forest ocean city village garden "
         "window door table chair paper letter morning evening night summer winter red green "
         "blue bright dark quiet slow fast small large simple careful clever engineer teacher "
         "doctor farmer writer runs walks reads writes builds measures checks loads saves")
WORDS = WORDS_TEXT.split()


def corpus(lines: int, seed: int = 7) -> list[str]:
    """Pseudo-English with some structure (numbers that follow the line number)."""
    rng = random.Random(seed)
    return [f"{' '.join(rng.choices(WORDS, k=rng.randint(6, 16))).capitalize()} "
            f"{i * 37 % 1009}, line {i}." for i in range(lines)]


def arm_space(base: SearchSpace, *, sampler: str, pruner: str, seed: int, epochs: int | None
              ) -> SearchSpace:
    data: dict[str, Any] = base.model_dump(mode="json")
    if epochs is not None:
        data["training"] |= {"epochs": epochs}
    data["search"] |= {"sampler": sampler, "pruner": pruner, "seed": seed}
    return SearchSpace.model_validate(data)


def cost_to_reach(report: StudyReport, threshold: float) -> int:
    """Trial-epochs spent (in trial order) when a completed trial first reached threshold."""
    spent = 0
    for row in sorted(report.trials, key=lambda r: r.number):
        spent += row.epochs
        if row.state == "COMPLETE" and row.val_loss is not None and row.val_loss <= threshold:
            return spent
    raise AssertionError("threshold never reached")


def print_trials(result: dict[str, Any], threshold: float) -> None:
    """Each arm's trials in order: what was spent, and where the threshold was reached."""
    for arm in ("pruned", "random"):
        report: StudyReport = result[arm]
        print(f"  seed {result['seed']} {arm}:", file=sys.stderr)
        for row in sorted(report.trials, key=lambda r: r.number):
            p = row.params
            hit = (" <= threshold" if row.state == "COMPLETE" and row.val_loss is not None
                   and row.val_loss <= threshold else "")
            print(f"    #{row.number:<2} {row.state:<8} {row.epochs:>2} ep  "
                  f"loss {row.val_loss or float('nan'):.4f}  lr {p['learning_rate']:.2e} "
                  f"L{p['num_hidden_layers']} h{p['hidden_size']} "
                  f"ffn{p['intermediate_size']}{hit}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of a full trial (default: the space file's)")
    parser.add_argument("--space", type=Path,
                        default=ROOT / "benchmarks" / "nas-benchmark-space.yaml")
    parser.add_argument("--pruner", choices=["asha", "hyperband", "median"], default=None,
                        help="pruner of the pruned arm (default: the space file's)")
    parser.add_argument("--verbose", action="store_true", help="print every trial")
    args = parser.parse_args()

    texts = corpus(480)
    train, held = texts[:432], texts[432:]
    base = load_space(args.space)
    epochs = args.epochs or base.training.epochs
    pruner_name = args.pruner or base.search.pruner
    label = f"TPE+{pruner_name}"
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(home=Path(folder) / ".sutazai",
                            mlflow_tracking_uri=f"sqlite:///{folder}/mlflow.db")
        for seed in args.seeds:
            result: dict[str, Any] = {"seed": seed}
            for arm, sampler, pruner in (("pruned", "tpe", pruner_name),
                                         ("random", "random", "none")):
                space = arm_space(base, sampler=sampler, pruner=pruner, seed=seed,
                                  epochs=args.epochs)
                started = time.monotonic()
                report = run_study(settings, space, train, held, study_name=f"{arm}-{seed}",
                                   n_trials=args.trials)
                result[arm] = report
                result[f"{arm}_s"] = time.monotonic() - started
            threshold = max(result["pruned"].best_value, result["random"].best_value)
            result["threshold"] = threshold
            for arm in ("pruned", "random"):
                result[f"{arm}_cost"] = cost_to_reach(result[arm], threshold)
            result["ratio"] = result["random_cost"] / result["pruned_cost"]
            rows.append(result)
            print(f"seed {seed}: done", file=sys.stderr)
            if args.verbose:
                print_trials(result, threshold)

    print(f"\nNAS pruning benchmark: {args.trials} trials per arm, {epochs} epochs per "
          f"full trial, space {args.space.name}, {len(train)} training texts")
    header = (f"{'seed':>4} | {'best ' + label:>15} {'best random':>11} {'threshold':>9} | "
              f"{label + ' ep. to thr':>21} {'random ep. to thr':>17} {'ratio':>6} | "
              f"{label + ' total ep.':>20} {'random total ep.':>16} {'pruned':>6} | "
              f"{label + ' s':>12} {'random s':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        p, q = r["pruned"], r["random"]
        print(f"{r['seed']:>4} | {p.best_value:>15.4f} {q.best_value:>11.4f} "
              f"{r['threshold']:>9.4f} | {r['pruned_cost']:>21} {r['random_cost']:>17} "
              f"{r['ratio']:>5.2f}x | {p.trial_epochs:>20} {q.trial_epochs:>16} "
              f"{p.trials_pruned:>6} | {r['pruned_s']:>12.1f} {r['random_s']:>8.1f}")
    ratios = [r["ratio"] for r in rows]
    totals = [r["random"].trial_epochs / r["pruned"].trial_epochs for r in rows]
    print(f"\nTARGET METRIC - trial-epochs to reach the same best loss, random / {label}: "
          f"median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, "
          f"max {max(ratios):.2f}x)")
    print(f"second figure (not the target) - total trial-epochs at equal trials, random / "
          f"{label}: median {statistics.median(totals):.2f}x (min {min(totals):.2f}x, "
          f"max {max(totals):.2f}x)")
    print("target: >= 2x " + ("MET" if statistics.median(ratios) >= 2 else "NOT MET"))


if __name__ == "__main__":
    main()
