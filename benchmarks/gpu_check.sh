#!/usr/bin/env bash
# The GPU check (issue 21): proves on one NVIDIA GPU, in at most 8 minutes, that pneumo trains
# with CUDA + bf16, that N processes can share the one GPU under the fold plan, and measures
# throughput. `--dry-run` runs the same commands on the CPU at tiny sizes. See `--help`.
set -uo pipefail

usage() {
    cat <<'EOF'
Usage: benchmarks/gpu_check.sh [--dry-run] [--only PARTS] [--check-env] [--work-dir DIR]
                               [--budget SECONDS] [OUTPUT_DIR]

The GPU check: three parts on one NVIDIA GPU, each under its own `timeout`, the whole check
(set-up included) within --budget seconds (default 450: under 8 minutes even when a part has
to be killed). A failing part is reported and the next one runs; the exit status is 0 only
when every part passed (1: a part failed; 2: bad arguments or the environment is not ready).

  a  one process trains a small real run on the built-in synthetic data (resnet18, 96 px,
     2 epochs, folds 0 1 of 5, --mixed-precision bf16; pneumo is always channels-last), then
     checks in the run directory that it ran on cuda (run_info.json `device`) with bf16
     (config.yaml `mixed_precision`) and wrote results.json.
  b  5 processes on the one GPU: `python3 -m accelerate.commands.launch --multi_gpu
     --num_processes 5 --mixed_precision bf16 ... train.py --folds 5 --train-folds 0 1 2 3`.
     4 folds on 5 processes: the fold plan trains one fold data-parallel on a group of two.
     Prints plan.json ("no plan.json" when pneumo writes none) and checks results.json,
     the device, bf16 and the process count.
  c  benchmarks/throughput.py --device cuda --sizes 96 224 (resnet18, bf16, 40 timed steps):
     the training step's ceiling, pneumo's path, the reference recipe's pipeline, the
     ensemble, 1 vs 2 processes, the cache build; its JSON is OUTPUT_DIR/throughput.json.

Then a summary: GPU, torch/CUDA/cuDNN/NCCL versions, each part's result and wall seconds,
img/s per measurement, the files written. Before any part, the set-up installs carried
wheels and checks that every module pneumo needs imports (and, on the GPU path, that CUDA
and bf16 work); if not, it stops there (exit 2) instead of spending the budget.

Options:
  --dry-run         the same three parts on the CPU at tiny sizes: timm's test_resnet, 32 px,
                    1 epoch, --mixed-precision no; 3 processes training folds 0 1 (the plan
                    still groups them); throughput at 32 px, 4 steps, 1 warm-up.
  --only PARTS      run only these parts, comma-separated (default a,b,c)
  --check-env       the set-up and environment report only
  --work-dir DIR    run directories and caches (default OUTPUT_DIR/work; they hold model
                    checkpoints, so on a machine whose OUTPUT_DIR is shipped back, put them
                    elsewhere, e.g. --work-dir /tmp/gpu_check)
  --budget SECONDS  wall-clock budget from the start (default 450); a part's timeout is its
                    own limit (a 120 s, b 150 s, c 270 s) or what is left of the budget,
                    whichever is smaller; a part with under 20 s left fails unrun
  -h, --help        this help
  OUTPUT_DIR        default: $OUT if set, else runs/gpu_check (relative to the repo)

Environment:
  PYTHON     the interpreter (default python3; here: PYTHON=.venv/bin/python)
  WHEEL_DIR  wheels to install first (default .whl/ in the repo): kornia and kornia_rs
             (kornia 0.9 imports it; a binary wheel: it must match the machine's python).
             They go to SITE_DIR with `pip install --no-index --no-deps --target`, which
             is put first on PYTHONPATH. torch, torchvision, torchaudio, triton and nvidia-*
             wheels are never installed.
  SITE_DIR   default /tmp/site
  PNEUMO_CACHE  where the synthetic data set is generated (default: WORK_DIR/cache);
             decode caches always go to WORK_DIR/cache.

Files in OUTPUT_DIR: summary.txt, summary.json, env.json, a_train.log, b_launch.log,
b_plan.json (when written), c_throughput.log, throughput.json.

Examples:
  benchmarks/gpu_check.sh --work-dir /tmp/gpu_check "$OUT"       # on the GPU machine
  PYTHON=.venv/bin/python benchmarks/gpu_check.sh --dry-run /tmp/gpu_dry   # here: 2-3 min
EOF
}

die() {
    echo "gpu_check: $*" >&2
    exit 2
}

# ----------------------------------------------------------------------------- arguments

DRY_RUN=0
ONLY="a,b,c"
CHECK_ENV=0
WORK_DIR=""
BUDGET=450
OUTPUT_DIR=""
while (($#)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --dry-run) DRY_RUN=1 ;;
        --check-env) CHECK_ENV=1 ;;
        --only)
            (($# >= 2)) || die "--only needs a value (e.g. a,c)"
            ONLY="$2"
            shift
            ;;
        --work-dir)
            (($# >= 2)) || die "--work-dir needs a directory"
            WORK_DIR="$2"
            shift
            ;;
        --budget)
            (($# >= 2)) || die "--budget needs a number of seconds"
            BUDGET="$2"
            shift
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            [[ -z "$OUTPUT_DIR" ]] || die "one output directory only (got $OUTPUT_DIR and $1)"
            OUTPUT_DIR="$1"
            ;;
    esac
    shift
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "--budget: expected whole seconds, got '$BUDGET'"
IFS=, read -r -a PARTS <<<"$ONLY"
for part in "${PARTS[@]}"; do
    [[ "$part" =~ ^[abc]$ ]] || die "--only: unknown part '$part' (parts: a, b, c)"
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
absolute() { # a path made absolute against the caller's directory, created
    mkdir -p "$1" && (cd "$1" && pwd)
}
OUTPUT_DIR=$(absolute "${OUTPUT_DIR:-${OUT:-$ROOT/runs/gpu_check}}") || die "cannot create the output directory"
WORK_DIR=$(absolute "${WORK_DIR:-$OUTPUT_DIR/work}") || die "cannot create the work directory"
cd "$ROOT" || die "cannot enter $ROOT"

PYTHON=${PYTHON:-python3}
WHEEL_DIR=${WHEEL_DIR:-$ROOT/.whl}
SITE_DIR=${SITE_DIR:-/tmp/site}
CACHE_DIR="$WORK_DIR/cache"
export PNEUMO_CACHE="${PNEUMO_CACHE:-$CACHE_DIR}" PYTHONUNBUFFERED=1
STATUS_FILE="$WORK_DIR/parts.tsv"

# What differs between the GPU check and its dry run: device and sizes, nothing else.
if ((DRY_RUN)); then
    MODE="dry run (CPU, tiny sizes)"
    DEVICE=cpu MODEL=test_resnet IMAGE_SIZE=32 EPOCHS=1 PRECISION=no PROCESSES=3
    BENCH_SIZES=(32) BENCH_STEPS=4 BENCH_WARMUP=1
else
    MODE="GPU check"
    DEVICE=cuda MODEL=resnet18 IMAGE_SIZE=96 EPOCHS=2 PRECISION=bf16 PROCESSES=5
    BENCH_SIZES=(96 224) BENCH_STEPS=40 BENCH_WARMUP=10
fi
LIMIT_A=120 LIMIT_B=150 LIMIT_C=270 # seconds; each part also stops when the budget is spent
# One fold fewer than processes: the fold plan has to train a fold on a group of processes.
mapfile -t B_FOLDS < <(seq 0 $((PROCESSES - 2)))
TRAIN_ARGS=(
    --model "$MODEL" --image-size "$IMAGE_SIZE" --epochs "$EPOCHS" --folds 5
    --saliency-images 0 --no-report --cache-dir "$CACHE_DIR" --overwrite
)

START=$(date +%s)
DEADLINE=$((START + BUDGET))
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[gpu_check %5ss] %s\n' "$(($(date +%s) - START))" "$*"; }

# ----------------------------------------------------------------------------- set-up

install_wheels() {
    local wheels=() skipped=() whl name
    [[ -d "$WHEEL_DIR" ]] || return 0
    for whl in "$WHEEL_DIR"/*.whl; do
        [[ -e "$whl" ]] || continue
        name=$(basename "$whl")
        case "$name" in
            torch-* | torchvision-* | torchaudio-* | triton-* | nvidia_* | nvidia-*) skipped+=("$name") ;;
            *) wheels+=("$whl") ;;
        esac
    done
    ((${#skipped[@]} == 0)) || say "carried wheels NOT installed (the machine's own torch stack stays): ${skipped[*]}"
    ((${#wheels[@]})) || return 0
    say "installing ${#wheels[@]} carried wheel(s) from $WHEEL_DIR into $SITE_DIR"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE_DIR" "${wheels[@]}"; then
        say "pip could not install the carried wheels (the module check below says what is missing)"
    fi
    export PYTHONPATH="$SITE_DIR${PYTHONPATH:+:$PYTHONPATH}"
}

# The environment: versions, the GPU, every module pneumo imports (the carried ones: from where).
check_env() {
    "$PYTHON" - "$DEVICE" "$PRECISION" "$SITE_DIR" "$OUTPUT_DIR/env.json" <<'PY'
import importlib, json, platform, sys, time
from pathlib import Path

device, precision, site, out = sys.argv[1:5]
started = time.monotonic()
env = {"python": platform.python_version(), "executable": sys.executable, "host": platform.node()}
problems, notes = [], []
try:
    import torch

    env["torch"] = torch.__version__
    env["cuda_runtime"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    env["gpus"] = torch.cuda.device_count() if env["cuda_available"] else 0
    if env["cuda_available"]:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as exc:  # a torch built without NCCL
            env["nccl"] = f"unavailable ({exc})"
except Exception as exc:
    problems.append(f"torch does not import: {exc}")
# Every third-party module pneumo, train.py and throughput.py import (captum only draws Grad-CAM,
# which the check turns off; psutil only sharpens the benchmark's memory numbers).
required = ["numpy", "PIL", "yaml", "timm", "accelerate", "torchvision", "kornia.filters", "kornia.enhance",
            "sklearn", "scipy", "rich", "matplotlib", "safetensors", "tensorboard"]
modules = {}
for name in [*required, "captum", "psutil"]:
    try:
        mod = importlib.import_module(name)
        top = sys.modules[name.split(".")[0]]
        where = str(Path(getattr(top, "__file__", "") or "?").resolve())
        modules[name] = {"version": getattr(top, "__version__", None), "from": where}
    except Exception as exc:
        modules[name] = {"error": f"{type(exc).__name__}: {exc}"}
        (problems if name in required else notes).append(f"{name} does not import ({type(exc).__name__}: {exc})")
env["modules"] = modules
carried = []
for dist in sorted(Path(site).glob("*.dist-info")):
    record = dist / "RECORD"
    tops = set()
    if record.is_file():
        for line in record.read_text().splitlines():
            first = line.split(",")[0].split("/")[0]
            if first and not first.endswith((".dist-info", ".data")) and not first.startswith(".."):
                tops.add(first[:-3] if first.endswith(".py") else first)
    found = {}
    for top in sorted(t for t in tops if t.isidentifier()):
        try:
            found[top] = str(Path(importlib.import_module(top).__file__).resolve())
        except Exception as exc:
            found[top] = f"does not import ({type(exc).__name__}: {exc})"
    carried.append({"wheel": dist.name[: -len(".dist-info")], "modules": found})
env["carried_wheels"] = carried
if device == "cuda" and "torch" in env:
    if not env["cuda_available"]:
        problems.append("torch sees no CUDA GPU")
    elif precision == "bf16" and not env.get("bf16_supported"):
        problems.append(f"{env['gpu']} does not support bf16")
    else:  # one bf16 channels-last convolution on the GPU: the kernels the parts rely on
        try:
            x = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
            conv = torch.nn.Conv2d(3, 8, 3).cuda().to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = conv(x)
            torch.cuda.synchronize()
            env["bf16_conv"] = str(y.dtype)
        except Exception as exc:
            problems.append(f"a bf16 convolution on the GPU failed: {exc}")
env["problems"], env["notes"] = problems, notes
env["check_seconds"] = round(time.monotonic() - started, 1)
Path(out).write_text(json.dumps(env, indent=2) + "\n")
gpu = env.get("gpu", "no GPU")
print(f"environment: {gpu}; python {env['python']}, torch {env.get('torch')}, CUDA {env.get('cuda_runtime')}, "
      f"cuDNN {env.get('cudnn')}, NCCL {env.get('nccl')}")
for c in carried:
    print(f"carried wheel {c['wheel']}: " + ", ".join(f"{m} from {p}" for m, p in c["modules"].items()))
for line in notes:
    print(f"note: {line}")
for line in problems:
    print(f"PROBLEM: {line}")
sys.exit(1 if problems else 0)
PY
}

# ----------------------------------------------------------------------------- parts

# record PART STATUS SECONDS NOTE: one line of the parts table the summary reads.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STATUS_FILE"; }

# run_limited PART LIMIT LOG CMD...: CMD under `timeout`, output to LOG; sets RC and WALL.
run_limited() {
    local part=$1 cap=$2 log=$3 left limit t0
    shift 3
    left=$((DEADLINE - $(date +%s) - 5))
    limit=$((cap < left ? cap : left))
    if ((left < 20)); then
        RC=-1 WALL=0
        say "part $part: skipped, only ${left}s of the ${BUDGET}s budget left"
        return
    fi
    say "part $part: timeout ${limit}s, log $log"
    printf '$ %s\n' "$*" >"$log"
    t0=$(now)
    # SIGTERM first (pneumo saves its state; torchrun stops its workers), SIGKILL 20 s later.
    timeout --kill-after=20 "$limit" "$@" >>"$log" 2>&1
    RC=$?
    WALL=$(since "$t0")
    LIMIT=$limit
}

# outcome PART: turn RC into a status; on failure show the log's tail.
outcome() {
    local part=$1 log=$2
    case "$RC" in
        0) STATUS=pass ;;
        -1) STATUS="FAIL (no time left in the budget)" ;;
        124 | 137) STATUS="FAIL (timed out after ${LIMIT}s)" ;;
        *) STATUS="FAIL (exit $RC)" ;;
    esac
    if [[ "$STATUS" != pass && -s "$log" ]]; then
        say "part $part failed; the end of $log:"
        tail -n 25 "$log" | sed 's/^/    | /'
    fi
}

# verify_run RUN_DIR PROCESSES FOLDS...: the run finished on the expected device and precision.
verify_run() {
    "$PYTHON" - "$DEVICE" "$PRECISION" "$@" <<'PY'
import json, sys
from pathlib import Path

import yaml

device, precision, run, processes, *folds = sys.argv[1:]
run, failures = Path(run), []
def load(name, reader=json.loads):
    try:
        return reader((run / name).read_text())
    except (OSError, ValueError) as exc:
        failures.append(f"{name}: {exc}")
        return {}
info, config, results = load("run_info.json"), load("config.yaml", yaml.safe_load) or {}, load("results.json")
got = str(info.get("device", "?"))
if info and not got.startswith(device):
    failures.append(f"run_info.json device is {got!r}, not {device}")
if config and str(config.get("mixed_precision")) != precision:
    failures.append(f"config.yaml mixed_precision is {config.get('mixed_precision')!r}, not {precision}")
if results and results.get("processes") != int(processes):
    failures.append(f"results.json: {results.get('processes')} process(es), not {processes}")
if results and sorted(results.get("folds_done", [])) != sorted(map(int, folds)):
    failures.append(f"results.json: folds done {results.get('folds_done')}, not {folds}")
print(f"verified: device {got}, mixed precision {config.get('mixed_precision')}, "
      f"{results.get('processes')} process(es), folds done {results.get('folds_done')}")
for line in failures:
    print(f"CHECK FAILED: {line}")
sys.exit(1 if failures else 0)
PY
}

finish_part() { # finish_part PART LOG RUN_DIR PROCESSES FOLDS...: status, verification, record
    local part=$1 log=$2 check
    shift 2
    outcome "$part" "$log"
    if [[ "$STATUS" == pass || -f "$1/results.json" ]]; then
        if check=$(verify_run "$@" 2>&1); then
            say "part $part: ${check}"
        else
            say "part $part: ${check//$'\n'/; }"
            [[ "$STATUS" != pass ]] || STATUS="FAIL (run directory check)"
        fi
    fi
    say "part $part: $STATUS in ${WALL}s"
    record "$part" "$STATUS" "$WALL" "$1"
}

part_a() {
    local run="$WORK_DIR/a_run" log="$OUTPUT_DIR/a_train.log"
    say "part a: 1 process, $MODEL, ${IMAGE_SIZE} px, $EPOCHS epoch(s), folds 0 1, $DEVICE, $PRECISION"
    run_limited a "$LIMIT_A" "$log" \
        "$PYTHON" train.py "${TRAIN_ARGS[@]}" --train-folds 0 1 --mixed-precision "$PRECISION" --output-dir "$run"
    finish_part a "$log" "$run" 1 0 1
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((29500 + $$ % 1000))
}

part_b() {
    local run="$WORK_DIR/b_run" log="$OUTPUT_DIR/b_launch.log" port
    port=$(free_port)
    say "part b: $PROCESSES processes on one $DEVICE device, folds ${B_FOLDS[*]} of 5, $PRECISION, port $port"
    run_limited b "$LIMIT_B" "$log" \
        "$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes "$PROCESSES" --num_machines 1 \
        --mixed_precision "$PRECISION" --dynamo_backend no --main_process_port "$port" \
        train.py "${TRAIN_ARGS[@]}" --train-folds "${B_FOLDS[@]}" --output-dir "$run"
    if [[ -f "$run/plan.json" ]]; then
        cp "$run/plan.json" "$OUTPUT_DIR/b_plan.json"
        say "part b: plan.json: $("$PYTHON" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$run/plan.json")"
    else
        rm -f "$OUTPUT_DIR/b_plan.json"
        say "part b: no plan.json (this pneumo trains fold i on process i mod $PROCESSES)"
    fi
    finish_part b "$log" "$run" "$PROCESSES" "${B_FOLDS[@]}"
}

part_c() {
    local log="$OUTPUT_DIR/c_throughput.log" json="$OUTPUT_DIR/throughput.json"
    rm -f "$json"
    say "part c: throughput.py --device $DEVICE --sizes ${BENCH_SIZES[*]}, $MODEL, $PRECISION"
    run_limited c "$LIMIT_C" "$log" \
        "$PYTHON" benchmarks/throughput.py --device "$DEVICE" --sizes "${BENCH_SIZES[@]}" --model "$MODEL" \
        --mixed-precision "$PRECISION" --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" --json "$json"
    outcome c "$log"
    if [[ "$STATUS" == pass && ! -s "$json" ]]; then
        STATUS="FAIL (no $json)"
    fi
    say "part c: $STATUS in ${WALL}s"
    record c "$STATUS" "$WALL" "$json"
}

# ----------------------------------------------------------------------------- summary

summary() {
    "$PYTHON" - "$OUTPUT_DIR" "$STATUS_FILE" "$MODE" "$(($(date +%s) - START))" <<'PY'
import json, sys
from pathlib import Path

out, status_file, mode, total = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
lines = []
say = lines.append
env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
say(f"=== pneumo {mode}: summary ===")
say(f"GPU: {env.get('gpu', 'none')}" + (f" ({env['gpu_memory_gib']} GiB, sm {env['capability']})" if env.get("gpu") else ""))
say(f"python {env.get('python')}, torch {env.get('torch')}, CUDA {env.get('cuda_runtime')}, "
    f"cuDNN {env.get('cudnn')}, NCCL {env.get('nccl')}")
parts = []
if status_file.is_file():
    for row in status_file.read_text().splitlines():
        part, status, seconds, where = row.split("\t")
        parts.append({"part": part, "status": status, "seconds": float(seconds), "path": where})
names = {"a": "1 process: device and precision", "b": "processes sharing one device: fold plan",
         "c": "throughput benchmark"}
say("")
for p in parts:
    say(f"part {p['part']} ({names[p['part']]}): {p['status']}, {p['seconds']:.1f} s")
    if p["part"] in "ab":
        run = Path(p["path"])
        rates = []
        for fold in sorted(run.glob("fold*/metrics.jsonl")):
            records = [json.loads(r) for r in fold.read_text().splitlines() if r.strip()]
            if records:
                rates.append(f"{fold.parent.name} {records[-1]['images_per_second']:.0f}")
        if rates:
            say(f"    training img/s (last epoch, per fold): {', '.join(rates)}")
        results = run / "results.json"
        if results.is_file():
            r = json.loads(results.read_text())
            p["oof_roc_auc"], p["run_wall_seconds"] = r["oof"].get("roc_auc"), r.get("wall_seconds")
            say(f"    run wall {r.get('wall_seconds')} s; OOF ROC-AUC {r['oof'].get('roc_auc'):.3f} (synthetic data)")
        plan = run / "plan.json"
        if p["part"] == "b":
            if plan.is_file():
                rounds = json.loads(plan.read_text()).get("rounds", [])
                p["plan"] = rounds
                grouped = [g["fold"] for r in rounds for g in r if len(g.get("ranks", [])) > 1]
                text = " | ".join(", ".join(f"fold {g['fold']} on {g['ranks']}" for g in r) for r in rounds)
                say(f"    plan: {text}")
                say(f"    folds trained data-parallel: {grouped}" if grouped
                    else "    plan groups NO fold: the data-parallel path was not exercised")
            else:
                say("    no plan.json")
bench = out / "throughput.json"
if any(p["part"] == "c" for p in parts) and bench.is_file():
    b = json.loads(bench.read_text())
    kinds = ["ceiling", "pneumo", "baseline", "ensemble", "1proc", "2proc", "build"]
    say(f"    img/s ({b['meta'].get('device')}, {b['meta']['args'].get('model')}, "
        f"{b['meta']['args'].get('mixed_precision')}, batch {b['meta']['args'].get('batch_size')}, "
        f"{b['meta'].get('image_source')}):")
    say("    " + f"{'size':>6}" + "".join(f"{k:>10}" for k in kinds) + f"{'pn/ceil':>9}{'pn/base':>9}")
    for size, r in b["results"].items():
        row = "".join(f"{r[k]['img_per_s']:>10.1f}" if k in r else f"{'-':>10}" for k in kinds)
        ratio = lambda a, c: f"{r[a]['img_per_s'] / r[c]['img_per_s']:>9.3f}" if a in r and c in r else f"{'-':>9}"
        say(f"    {size:>6}{row}{ratio('pneumo', 'ceiling')}{ratio('pneumo', 'baseline')}")
failed = [p["part"] for p in parts if p["status"] != "pass"]
say("")
say(f"total wall {total} s; " + ("every part passed" if parts and not failed else f"FAILED: {', '.join(failed) or 'no part ran'}"))
files = ["summary.txt", "summary.json", "env.json", "a_train.log", "b_launch.log", "b_plan.json",
         "c_throughput.log", "throughput.json"]
say("files: " + "  ".join(str(out / f) for f in files if (out / f).is_file() or f.startswith("summary")))
text = "\n".join(lines) + "\n"
(out / "summary.txt").write_text(text)
summary = {"mode": mode, "total_seconds": total, "passed": bool(parts) and not failed, "parts": parts, "env": env}
if bench.is_file():
    summary["throughput"] = {s: {k: round(v["img_per_s"], 2) for k, v in r.items() if "img_per_s" in v}
                             for s, r in json.loads(bench.read_text())["results"].items()}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(text, end="")
PY
}

# ----------------------------------------------------------------------------- main

say "$MODE: output $OUTPUT_DIR, work $WORK_DIR, python $PYTHON, budget ${BUDGET}s, parts ${PARTS[*]}"
: >"$STATUS_FILE"
install_wheels
if ! check_env; then
    say "the environment is not ready (above; details in $OUTPUT_DIR/env.json): no part runs"
    exit 2
fi
((CHECK_ENV)) && exit 0
for part in "${PARTS[@]}"; do
    case "$part" in
        a) part_a ;;
        b) part_b ;;
        c) part_c ;;
    esac
done
summary || say "the summary could not be written"
if grep -qv $'\tpass\t' "$STATUS_FILE"; then
    exit 1
fi
exit 0
