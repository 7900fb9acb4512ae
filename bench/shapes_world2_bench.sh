#!/usr/bin/env bash
# Every method with its shapes preset on the bundled shapes world (world 2), one protocol: veil bench's prompt sets
# at seed 0 (canonical, synonyms, paraphrases, short, implicit objects seen and held out, styles), DDIM 20,
# guidance 3. One folder per method under $OUT; the base model is drawn once (in sld/) and its rates are copied into every
# other folder, whose bench then keeps them (--resume: the same rows, by digest). Jobs run $JOBS at a time, each on one
# thread, in the order below (the longest first); a job that was killed continues where it stopped when this
# script is run again. Afterwards:  python bench/headline_assemble.py --from "$OUT"
#
#   bash bench/shapes_world2_bench.sh [rows|attacks]   # JOBS=5 OUT=bench/results/shapes_world2/methods LOGS=/tmp/...
set -euo pipefail
OUT=${OUT:-bench/results/shapes_world2/methods}
JOBS=${JOBS:-5}
LOGS=${LOGS:-/tmp/veil-shapes-world2-bench}
PHASE=${1:-rows}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
THREE=circle+square+triangle
SIX=circle+square+triangle+star+cross+oval

if [ ! -f "$OUT/sld/bench.json" ]; then
    # SLD fits nothing: its first bench draws the base model (two threads), with SLD's circle row.
    mkdir -p "$OUT/sld"
    echo "OMP_NUM_THREADS=2 veil bench --seeds 0 --resume --methods sld --concepts circle --out $OUT/sld" > "$OUT/sld/command.txt"
    OMP_NUM_THREADS=2 python -m veil.cli.main bench --seeds 0 --resume --methods sld --concepts circle --out "$OUT/sld"
fi

# name | veil bench arguments
if [ "$PHASE" = rows ]; then
    JOBLIST="esd-x|--methods esd --concepts circle
esd-u|--methods esd --set esd.train_method=noxattn --concepts circle
esd-u-lr5e-5|--methods esd --set esd.train_method=noxattn --set esd.learning_rate=5e-5 --concepts circle
dumo|--methods dumo --concepts circle
kpop|--methods kpop --concepts circle,hatched,$THREE
uce|--methods uce --concepts circle,square,hatched,$THREE,$SIX
sld|--methods sld --concepts circle,hatched,$THREE
mace|--methods mace --concepts circle,hatched,$THREE,$SIX
rece|--methods rece --concepts circle,hatched
safree|--methods safree --concepts circle
advunlearn|--methods advunlearn --concepts circle"
else
    # Attacks on the saved circle artifacts (rendered concept images, the attacks' default budgets).
    A="--attacks prompt_search,ring_a_bell,concept_inversion"
    JOBLIST="uce|--methods uce --concepts circle $A
esd-x|--methods esd --concepts circle $A
esd-u-lr5e-5|--methods esd --set esd.train_method=noxattn --set esd.learning_rate=5e-5 --concepts circle $A
kpop|--methods kpop --concepts circle $A
dumo|--methods dumo --concepts circle $A"
fi

run_job() {
    local name=${1%%|*} args=${1#*|}
    mkdir -p "$OUT/$name"
    if [ ! -f "$OUT/$name/bench.json" ]; then
        # The base rates only: this folder's bench keeps them.
        python - "$OUT/sld/bench.json" "$OUT/$name/bench.json" <<'EOF'
import json, os, sys
report = json.load(open(sys.argv[1]))
report["rows"] = []
with open(sys.argv[2] + ".tmp", "w") as f:
    json.dump(report, f, indent=2)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
EOF
    fi
    local line="OMP_NUM_THREADS=1 veil bench --seeds 0 --resume $args --out $OUT/$name"
    grep -qxF "$line" "$OUT/$name/command.txt" 2>/dev/null || echo "$line" >> "$OUT/$name/command.txt"
    mkdir -p "$LOGS"
    # shellcheck disable=SC2086
    python -m veil.cli.main bench --seeds 0 --resume $args --out "$OUT/$name" > "$LOGS/$name.log" 2>&1 \
        && echo "done: $name" || echo "FAILED: $name (see $LOGS/$name.log)"
}
export -f run_job
export OUT LOGS
printf '%s\n' "$JOBLIST" | xargs -P "$JOBS" -I{} bash -c 'run_job "$@"' _ {}
