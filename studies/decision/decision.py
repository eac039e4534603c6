#!/usr/bin/env python
"""Score every operating-point candidate of a finished run on out-of-fold and on the development half.

    python studies/decision/decision.py RUN [--json studies/decision/results.json]

Candidates: each policy's threshold chosen on the run's out-of-fold predictions (fixed:0.5,
youden, balanced, prior, sensitivity:0.95), applied to the ensemble's scores on the run's test
split (predictions_test.csv); the same thresholds on the scores of AdaBN-adapted fold models
(`evaluate.py RUN --adapt-on test --adapt adabn`); and the prior-dependent ones moved to the
site prior estimated by EM (Saerens et al. 2002) from the unlabelled scores, with and without
AdaBN. Adaptation reads no labels; the labels here only score the candidates. The rule that picks
the default is in this folder's README, written before the first run of this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pneumo.data.predictions import read_predictions  # noqa: E402
from pneumo.evaluation.clinical import rates  # noqa: E402
from pneumo.metrics.calibration import balance_prior  # noqa: E402
from pneumo.metrics.prior import em_prior, prior_threshold  # noqa: E402
from pneumo.metrics.threshold import choose_threshold, parse_policy  # noqa: E402
from pneumo.utils.fsutil import read_json  # noqa: E402
from pneumo.utils.run_files import read_config  # noqa: E402

ELIGIBLE = ("fixed:0.5", "youden", "balanced", "prior")
REPORTED = (*ELIGIBLE, "sensitivity:0.95")
PRIOR_DEPENDENT = ("fixed:0.5", "prior")


def score(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    r = rates(positive, scores, threshold)
    r["balanced_accuracy"] = (r["sensitivity"] + r["specificity"]) / 2
    return {"threshold": threshold, **r}


def adapted_scores(run: Path, adapt: str, classes: list[str], positive: int) -> tuple[list[str], np.ndarray]:
    """The ensemble's P(positive) on test/ after `evaluate.py --adapt-on test --adapt ADAPT`."""
    cmd = [sys.executable, "evaluate.py", str(run), "--adapt-on", "test", "--adapt", adapt, "--saliency-images", "0"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    table = read_predictions(run / "evaluation" / "test-adapted" / "predictions.csv", classes)
    return table.files, table.probs[:, positive]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a finished run (train.py) whose data dir has test/")
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    p.add_argument("--no-adapt", action="store_true", help="skip the adapted candidates")
    a = p.parse_args()
    results, config = read_json(a.run / "results.json"), read_config(a.run)
    classes = results["classes"]
    positive = classes.index(results["positive_class"])
    oof = read_predictions(a.run / "oof.csv", classes)
    oof_pos, oof_scores = oof.labels == positive, oof.probs[:, positive]
    test = read_predictions(a.run / "predictions_test.csv", classes)
    test_pos, test_scores = test.labels == positive, test.probs[:, positive]
    train_prior = balance_prior(config.get("balance", "sampler"), float(oof_pos.mean()))
    thresholds = {
        name: choose_threshold(oof_pos, oof_scores, parse_policy(name), train_prior)["threshold"] for name in REPORTED
    }
    rows = []

    def add(name: str, adaptation: str, t: float, scores: np.ndarray) -> None:
        rows.append(
            {
                "candidate": name,
                "adaptation": adaptation,
                "eligible_default": adaptation == "none" and name in ELIGIBLE,
                "oof": score(oof_pos, oof_scores, thresholds[name]),
                "dev_half": score(test_pos, scores, t),
            }
        )

    for name in REPORTED:
        add(name, "none", thresholds[name], test_scores)
    site = {"none": em_prior(test_scores, train_prior)}
    for name in PRIOR_DEPENDENT:
        add(name, "EM prior", prior_threshold(thresholds[name], train_prior, site["none"]["prior"]), test_scores)
    if not a.no_adapt:
        files, adabn = adapted_scores(a.run, "adabn", classes, positive)
        if files != test.files:
            sys.exit("error: the adapted predictions list other files than predictions_test.csv")
        for name in REPORTED:
            add(name, "AdaBN", thresholds[name], adabn)
        site["AdaBN"] = em_prior(adabn, train_prior)
        for name in PRIOR_DEPENDENT:
            add(name, "AdaBN + EM prior", prior_threshold(thresholds[name], train_prior, site["AdaBN"]["prior"]), adabn)
    eligible = [r for r in rows if r["eligible_default"]]
    base = next(r for r in eligible if r["candidate"] == "fixed:0.5")["dev_half"]
    n_pos, n_neg = int(test_pos.sum()), int((~test_pos).sum())

    def guarded(r: dict) -> bool:
        d = r["dev_half"]
        return (
            d["accuracy"] >= base["accuracy"] - 1 / len(test_pos) - 1e-9
            and d["specificity"] >= base["specificity"] - 1 / n_neg - 1e-9
            and d["sensitivity"] >= base["sensitivity"] - 1 / n_pos - 1e-9
        )

    passing = [r for r in eligible if guarded(r)]
    best = max(r["dev_half"]["balanced_accuracy"] for r in passing)
    tied = [r for r in passing if r["dev_half"]["balanced_accuracy"] >= best - 0.005]
    chosen = next((r for r in tied if r["candidate"] == "fixed:0.5"), tied[0])["candidate"]
    out = {
        "run": str(a.run),
        "folds": results["folds_done"],
        "oof_images": len(oof_pos),
        "dev_half_images": len(test_pos),
        "train_prior": train_prior,
        "site_prior_em": {k: v["prior"] for k, v in site.items()},
        "dev_half_prevalence": float(test_pos.mean()),
        "rule": "studies/decision/README.md (written before scoring)",
        "chosen_default": chosen,
        "candidates": rows,
    }
    a.json.write_text(json.dumps(out, indent=2) + "\n")
    head = f"{'candidate':<18} {'adaptation':<17} {'t':>6} | {'OOF acc':>7} {'sens':>6} {'spec':>6} |"
    print(head + f" {'dev acc':>7} {'PNEU rec':>8} {'NORM rec':>8} {'bal acc':>7}")
    for r in rows:
        o, d = r["oof"], r["dev_half"]
        print(
            f"{r['candidate'] + (' *' if r['eligible_default'] else ''):<18} {r['adaptation']:<17} "
            f"{d['threshold']:>6.3f} | {o['accuracy']:>7.3f} {o['sensitivity']:>6.3f} {o['specificity']:>6.3f} | "
            f"{d['accuracy']:>7.3f} {d['sensitivity']:>8.3f} {d['specificity']:>8.3f} {d['balanced_accuracy']:>7.3f}"
        )
    print(f"\n* eligible as the default; chosen by the README's rule: {chosen}")
    print(f"EM site prior: {out['site_prior_em']} (true dev-half prevalence {out['dev_half_prevalence']:.3f})")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
