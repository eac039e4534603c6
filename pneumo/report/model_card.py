"""MODEL_CARD.md: a run's model card, generated from the files the run wrote and nothing else.

config.yaml (the recipe), folds.json (counts, patient grouping), results.json (the decision,
out-of-fold and split metrics with their patient-bootstrap CIs, calibration, the score-shift
test, overlap), run_info.json (provenance), audit.json (the data audit) and evaluate.py's
evaluation/*/results.json. Sections that a file does not support say so instead of guessing.
"""

from __future__ import annotations

from pathlib import Path

from pneumo.evaluation.clinical import ci_text
from pneumo.evaluation.results import number
from pneumo.utils.fsutil import atomic_write_text, read_json
from pneumo.utils.markdown import markdown_table
from pneumo.utils.run_files import AUDIT, CONFIG, FOLDS, RESULTS, RUN_INFO, read_config

MODEL_CARD = "MODEL_CARD.md"
CI_KEYS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "roc_auc", "pr_auc")
RECIPE_KEYS = (
    "model", "pretrained", "pretrained_file", "image_size", "equalize", "crop", "jpeg_quality", "epochs",
    "batch_size", "opt", "lr", "min_lr", "weight_decay", "warmup_epochs", "backbone_lr_scale", "balance",
    "label_smoothing", "dropout", "drop_path", "mixup", "cutmix", "mixstyle", "ema_decay", "select",
    "tta", "seed", "mixed_precision",
)  # fmt: skip
# TRIPOD+AI (Collins et al., BMJ 2024;385:e078378) items this card answers, and where.
TRIPOD = (
    ("3b", "target population, intended users", "Intended use"),
    ("5a", "data sources", "Data"),
    ("7", "data preparation", "Model; Data"),
    ("8a", "outcome definition", "Data"),
    ("9a", "predictors (the image pixels)", "Model"),
    ("10", "sample size", "Data"),
    ("11", "missing data (unusable images)", "Data"),
    ("12a", "how data were used for development and evaluation", "Data; Recipe"),
    ("12c", "model type, building, hyperparameters, internal validation", "Model; Recipe"),
    ("12e", "performance measures", "Performance"),
    ("12f", "recalibration", "Calibration"),
    ("13", "class imbalance", "Recipe"),
    ("15", "model output and decision threshold", "Model; Operating point"),
    ("16", "differences between development and evaluation data", "What the data audit found"),
    ("18f", "code availability (commit)", "Provenance"),
    ("20b", "characteristics (counts per class) of each data set", "Data"),
    ("21", "participants and outcome events in each analysis", "Data; Performance"),
    ("23a", "performance with confidence intervals", "Performance"),
    ("26", "limitations", "Limitations"),
    ("27", "usability in current care", "Intended use; Out-of-scope use"),
)
NOT_ANSWERED = "5b dates, 6a-c setting/eligibility/treatments, 14 fairness (no demographics), 17-19, 22-24"


def _read(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def _split_sections(run_dir: Path, results: dict) -> list[tuple[str, dict, dict]]:
    """(name, ensemble metrics, clinical split section) of the run's evaluation splits and evaluate.py's."""
    clinical = results.get("clinical", {})
    out = [(s, m, clinical.get("splits", {}).get(s, {})) for s, m in results.get("ensemble", {}).items()]
    for path in sorted((run_dir / "evaluation").glob("*/results.json")):
        section = read_json(path)
        if section["split"] in results.get("ensemble", {}) and section["data_dir"] == results.get("data_dir"):
            continue  # the run's own split, evaluated again
        name = f"{path.parent.name} of {section['data_dir']}"
        split_clinical = section.get("clinical", {}).get("splits", {}).get(section["split"], {})
        out.append((name, section["ensemble"], split_clinical))
    return out


def _intended(synthetic: bool, positive: str, classes: list[str]) -> list[str]:
    lines = ["## Intended use", ""]
    if synthetic:
        lines += ["**None clinical.** This run was trained on pneumo's generated synthetic images: it shows that the "
                  "pipeline works and nothing about X-rays.", ""]  # fmt: skip
    lines += [
        f"Research and engineering: estimate P({positive}) for a frontal chest radiograph of the kind the model "
        f"was trained on (classes {', '.join(classes)}), and call {positive} where it reaches the run's threshold. "
        "For method comparison, teaching and as a starting point for a locally validated study; any clinical use "
        "needs prospective validation at the site, on its own equipment and population, under its regulations.",
        "",
        "## Out-of-scope use",
        "",
        "- Diagnosis or triage without a clinician reading the image; the model is not a medical device.",
        "- Populations, views or modalities absent from the training data (e.g. adults if it was paediatric, "
        "lateral views, CT), other findings than the two classes, follow-up or severity grading.",
        "- A new site or scanner without checking the score shift (evaluate.py --data-dir SITE) and, if needed, "
        "adapting (evaluate.py --adapt-on).",
        "",
    ]
    return lines


def _data(run_dir: Path, config: dict, results: dict, info: dict, folds: dict) -> list[str]:
    classes = list(results["classes"])
    val_counts, val_groups = folds.get("val_counts", []), folds.get("val_groups", [])
    pool = [sum(row[c] for row in val_counts) for c in range(len(classes))]
    groups = [sum(row[c] for row in val_groups) for c in range(len(classes))]
    grouping = folds.get("grouping", "patient")
    source = "pneumo's generated synthetic set" if info.get("synthetic") else f"`{results.get('data_dir', '')}`"
    labels = f"the CSV `{config['labels']}`" if config.get("labels") else "the class folders"
    rows = [("cross-validation pool", *pool, sum(pool), f"{sum(groups)} {grouping} groups")]
    for split, metrics, _ in _split_sections(run_dir, results):
        per_class = metrics.get("per_class", {})
        counts = [per_class.get(c, {}).get("support", "-") for c in classes]
        rows.append((split, *counts, metrics.get("n", "-"), "held out"))
    lines = [
        "## Data",
        "",
        f"Source: {source}. Labels are {labels}; the outcome is {results['positive_class']} "
        f"(positive) vs {', '.join(c for c in classes if c != results['positive_class'])}.",
        "",
        *markdown_table(("set", *classes, "images", "grouping"), rows),
        "",
        f"{results['n_folds']} folds, stratified and grouped by {grouping} (images of one {grouping} never span "
        f"folds); images per fold and class: {val_counts}. Evaluation splits are never used for training, "
        "model selection or the threshold.",
    ]
    if "skipped_images" in info:
        lines.append(
            f"Unusable image files left out: {info['skipped_images']} (pneumo stops on them unless told to skip)."
        )
    overlap = results.get("overlap", {}).get("counts", {})
    for split, c in overlap.items():
        lines.append(
            f"Overlap of {split} with the pool (policy {results['overlap'].get('policy')}): "
            f"{c['identical']['images']} identical, {c['near']['images']} near-duplicate, "
            f"{c['same_patient']['images']} same-patient images."
        )
    return [*lines, ""]


def _model(results: dict, config: dict) -> list[str]:
    d = results["decision"]
    return [
        "## Model",
        "",
        f"An ensemble of {len(results['folds_done'])} timm `{config.get('model')}` models (one per fold, "
        f"{'EMA weights' if config.get('ema_decay') else 'trained weights'} of the kept epoch), input a grayscale "
        f"image letterboxed to {config.get('image_size')} px, each fold normalising with its own training mean/SD; "
        f"output P({results['positive_class']}), the mean of the fold models' softmax"
        f"{', over test-time views ' + config['tta'] if config.get('tta') not in (None, 'none') else ''}. "
        f"Decision: {results['positive_class']} where P >= {d['threshold']:.4g} (policy `{d['policy']}`).",
        "",
        "## Recipe",
        "",
        *markdown_table(
            ("setting", "value"), [(k, f"`{config[k]}`") for k in RECIPE_KEYS if config.get(k) is not None]
        ),
        "",
        "Augmentation: " + ", ".join(f"{k} {config[k]}" for k in sorted(config) if k.startswith("aug_")) + ".",
        "",
    ]


def _performance(run_dir: Path, results: dict) -> list[str]:
    clinical, d = results.get("clinical", {}), results["decision"]
    boot = clinical.get("bootstrap", {})
    header = ("set", "n", *CI_KEYS)
    rows = []
    pooled = clinical.get("oof", {}).get("pooled", {}).get("at_threshold", {})
    rows.append(("out-of-fold", results["oof"]["n"], *(ci_text(pooled.get(k)) for k in CI_KEYS)))
    for split, metrics, section in _split_sections(run_dir, results):
        at = section.get("ensemble", {}).get("at_threshold", {})
        rows.append((split, metrics.get("n", "-"), *(ci_text(at.get(k)) for k in CI_KEYS)))
    cv = results.get("cross_validation", {}).get("val", {})
    cv_text = ", ".join(f"{k} {number(v['mean'])} ± {number(v['std'])}" for k, v in cv.items() if k != "loss")
    alternatives = clinical.get("alternatives", {})
    alt_rows = [
        (
            name,
            f"{a['threshold']:.4g}",
            *(number(a.get("out-of-fold", {}).get(k)) for k in ("sensitivity", "specificity")),
        )
        for name, a in alternatives.items()
    ]
    return [
        "## Operating point",
        "",
        f"Policy `{d['policy']}`, threshold {d['threshold']:.4g}, chosen on {d.get('chosen_on', 'out-of-fold')}; "
        f"out-of-fold sensitivity {number(d.get('oof_sensitivity'))}, specificity {number(d.get('oof_specificity'))}.",
        "",
        *(
            markdown_table(("alternative policy", "threshold", "OOF sensitivity", "OOF specificity"), alt_rows)
            if alt_rows
            else []
        ),
        "",
        "## Performance",
        "",
        f"The ensemble at the operating point, with 95% confidence intervals ({boot.get('method', 'bootstrap')}, "
        f"{boot.get('resamples', '?')} resamples, unit: {boot.get('unit', '?')}):",
        "",
        *markdown_table(header, rows),
        "",
        f"Per fold on its own validation images (mean ± SD over folds): {cv_text}.",
        "",
    ]


def _calibration(results: dict) -> list[str]:
    cal = results.get("clinical", {}).get("calibration", {})
    splits = cal.get("splits", {})
    if not splits:
        return ["## Calibration", "", "Not recorded by this run.", ""]
    methods = list(next(iter(splits.values())))
    rows = [(s, *(f"{number(m[k]['ece'])} / {number(m[k]['brier'])}" for k in methods)) for s, m in splits.items()]
    return [
        "## Calibration",
        "",
        f"ECE / Brier score of P({results['positive_class']}) per set, as output and after each recalibration "
        f"fitted on {cal.get('fitted_on', 'out-of-fold predictions')} ({cal.get('ece_bins', '')}):",
        "",
        *markdown_table(("set", *methods), rows),
        "",
    ]


def _audit(run_dir: Path, results: dict) -> list[str]:
    lines = ["## What the data audit found", ""]
    audit = _read(run_dir / AUDIT)
    if audit:
        sharp = audit.get("statistics", {}).get("sharpness", {})
        if sharp.get("label_auc"):
            aucs = ", ".join(f"{s} {number(a)}" for s, a in sharp["label_auc"].items())
            lines.append(f"- Sharpness alone predicts the label with ROC-AUC {aucs} (0.5: no shortcut).")
        lines += [f"- {w}" for w in audit.get("warnings", [])] or ["- No low-level statistic crossed the audit's "
                                                                  "warning level."]  # fmt: skip
    else:
        lines.append(f"- No {AUDIT} in the run (the audit runs on the main process at the start of training).")
    for split, shift in results.get("clinical", {}).get("shift", {}).items():
        lines.append(f"- Score shift of the model on {shift.get('summary', split)}")
    return [*lines, ""]


def _limitations(results: dict, info: dict) -> list[str]:
    lines = ["## Limitations", ""]
    if info.get("synthetic"):
        lines.append("- Trained and evaluated on synthetic images: its numbers say nothing about patients.")
    if results.get("folds_failed"):
        lines.append(f"- Fold(s) {results['folds_failed']} failed; the ensemble has {len(results['folds_done'])}.")
    shifted = [s for s, v in results.get("clinical", {}).get("shift", {}).items() if v.get("shifted")]
    if shifted:
        lines.append(f"- The scores on {', '.join(shifted)} differ from out-of-fold: the threshold chosen "
                     "out-of-fold may not hold there (see the operating point on each set).")  # fmt: skip
    lines += [
        "- One data source, labelled from folder names; no demographics, so performance across subgroups "
        "(TRIPOD+AI item 14) is not measured.",
        "- Retrospective; confidence intervals reflect the sample sizes above.",
        "- The threshold is one policy chosen on out-of-fold predictions; a site's prevalence or costs may call "
        "for another (evaluate.py --threshold-policy).",
        "",
    ]
    return lines


def _provenance(info: dict) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items())
    return [
        "## Provenance",
        "",
        f"pneumo commit `{info.get('git_commit', '?')}`; {packages}; trained on {info.get('device', '?')} with "
        f"{info.get('processes', '?')} process(es). Command: `{' '.join(info.get('command', []))}`.",
        "",
    ]


def model_card(run_dir: Path) -> str:
    """The model card of the finished run in `run_dir`, as Markdown."""
    results, config = read_json(run_dir / RESULTS), read_config(run_dir)
    info, folds = _read(run_dir / RUN_INFO), _read(run_dir / FOLDS)
    classes, positive = list(results["classes"]), results["positive_class"]
    sources = [n for n in (CONFIG, FOLDS, RESULTS, RUN_INFO, AUDIT) if (run_dir / n).exists()]
    lines = [
        f"# Model card: {run_dir.name}",
        "",
        f"Generated by pneumo from the run's files ({', '.join(sources)}); rebuilt at the end of every "
        "training or `evaluate.py RUN`. Do not edit: regenerate.",
        "",
        *_intended(bool(info.get("synthetic")), positive, classes),
        *_data(run_dir, config, results, info, folds),
        *_model(results, config),
        *_performance(run_dir, results),
        *_calibration(results),
        *_audit(run_dir, results),
        *_limitations(results, info),
        *_provenance(info),
        "## TRIPOD+AI items answered",
        "",
        *markdown_table(("item", "topic", "section"), list(TRIPOD)),
        "",
        f"Not answered by a run's files: {NOT_ANSWERED}.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(run_dir: Path) -> Path:
    """Write `run_dir`/MODEL_CARD.md from the run's files; returns its path."""
    path = run_dir / MODEL_CARD
    atomic_write_text(path, model_card(run_dir))
    return path
