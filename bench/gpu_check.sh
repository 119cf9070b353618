#!/usr/bin/env bash
# gand on a GPU in one device call (issues 16 and 17). Prepare here, after `make test` made .venv:
#   bash ../shared/gpu/prepare.sh          (the wheels the GPU machine lacks, in .gpu/whl)
#   DRY=1 bash bench/gpu_check.sh          (rehearsal on this CPU, tiny sizes, a few minutes)
# then one device call: command `bash bench/gpu_check.sh`, carry [".gpu"], timeout_s 600.
# Parts run in order of what they decide, each with its own limit and within BUDGET_S seconds in all (a part that
# no longer fits is skipped and says so; ONLY="1 3" runs just those, MEM_SETTINGS="fp32,bf16" just those rows of
# the memory table); everything printed is also in $OUT/check.txt, with each bench's JSON:
#   1 memory and speed per setting at batch 64, with gand plan's predictions (bench/memory.py)  -> issue 17
#   2 the GPU tests: the planner within 15%, no host-device sync per step (tests/gpu)            -> issues 16, 17
#   3 the kernels of fp32, bf16 and bf16 + checkpointing steps: wall vs kernel time, syncs, layouts, BatchNorm
#   4 CAN-256 step functions fp32 / bf16 / bf16 + torch.compile, and a bare PyTorch loop (bench/trainstep.py)
#   5 the memory table at batch 128 (the config's own)
#   6 the full command on PNG shards, `accelerate launch -m gand.train configs/can256.yaml`, and its resume
set -u
root=$(pwd)
started=$(date +%s)
if [ "${DRY:-0}" = 1 ]; then
  export PATH="$root/.venv/bin:$PATH"; OUT=${OUT:-/tmp/gpu-dry}; N=64; BS=4; STEPS=24; TINY="model.width=0.125"
  MEM64="--smoke"; MEM128="--smoke"; KERNELS="--smoke"; PRECISION="--configs dcgan32 --repeats 1 --images 64"
  ROWS="bare,steps"
else
  [ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$root; N=640; BS=64; STEPS=200; TINY=""
  MEM64="--batches 64 --steps 20"; MEM128="--batches 128 --steps 5"; KERNELS=""
  PRECISION="--configs can256 --repeats 1 --full --images 64"; ROWS="bare,steps,steps_bf16,steps_bf16_compile"
fi
BUDGET_S=${BUDGET_S:-540}
export PYTHONUNBUFFERED=1 GAND_LOG_FORMAT=json
mkdir -p "$OUT"; W=/tmp/gpu-work; rm -rf "$W"; mkdir -p "$W"
exec > >(tee -a "$OUT/check.txt") 2>&1
say() { echo "== $(date +%T) (+$(( $(date +%s) - started )) s) $*"; }
gand() { python3 -m gand.cli "$@"; }
# limit PART_SECONDS: the part's own limit, cut to what is left of the budget; 0 when too little is left.
limit() { local left=$(( BUDGET_S - ($(date +%s) - started) )); (( left < $1 )) && echo $(( left > 20 ? left : 0 )) || echo "$1"; }
part() {  # part SECONDS TITLE -- COMMAND...
  local seconds; seconds=$(limit "$1"); local title=$2; shift 3
  if [ "$seconds" = 0 ]; then say "SKIPPED (budget spent): $title"; return; fi
  say "$title (limit ${seconds} s)"; timeout "$seconds" "$@"; local rc=$?
  [ $rc = 124 ] && say "TIMED OUT: $title"; return 0
}
want() { [[ " ${ONLY:-1 2 3 4 5 6} " == *" $1 "* ]]; }  # ONLY="2 3": just those parts, in the order above
say machine; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; nproc
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'accelerate', accelerate.__version__)"
which ninja nvcc g++ 2>&1 | head -3

want 1 && part 200 "1/6 memory and speed per setting, CAN-256 batch 64 (bench/memory.py $MEM64)" -- \
  python3 bench/memory.py $MEM64 --row-timeout 110 --out "$OUT/memory64.json" ${MEM_SETTINGS:+--settings "$MEM_SETTINGS"}
want 2 && part 110 "2/6 GPU tests (tests/gpu)" -- python3 -m pytest tests/gpu -q -p no:cacheprovider --no-header -rfE
want 3 && part 60 "3/6 kernels, wall time and syncs of fp32, bf16, bf16 + checkpointing steps (bench/kernels.py)" -- \
  python3 bench/kernels.py $KERNELS --out "$OUT/kernels.json"
want 4 && part 170 "4/6 CAN-256 step functions: fp32, bf16, bf16 + compile, bare loop (bench/trainstep.py)" -- \
  python3 bench/trainstep.py $PRECISION --rows $ROWS --work "$W/precision" --out "$OUT/precision.json"
want 5 && part 150 "5/6 memory and speed per setting, CAN-256 batch 128 (bench/memory.py $MEM128)" -- \
  python3 bench/memory.py $MEM128 --row-timeout 90 --out "$OUT/memory128.json"

full() {
  gand demo-data "$W/raw" --n $N >/dev/null 2>&1
  gand pack "$W/raw" "$W/packed" --resolutions 256 --min-side 256 2>&1 | tail -1
  local C="configs/can256.yaml data.path=$W/packed train.batch_size=$BS train.log_every_steps=25
     samples.every_steps=100 checkpoint.every_steps=100 run.dir=$W/run $TINY"
  accelerate launch -m gand.train $C train.max_steps=$STEPS > "$OUT/can256.log" 2>&1; echo "exit $?"
  accelerate launch -m gand.train $C train.max_steps=$((STEPS + 25)) > "$OUT/can256-resume.log" 2>&1
  echo "resume exit $?"
  python3 - "$OUT/can256.log" "$OUT/can256-resume.log" <<'PY'
import datetime, json, sys
for path in sys.argv[1:]:
    events = [json.loads(line) for line in open(path) if line.startswith("{")]
    steps = [(e["step"], datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")), e)
             for e in events if e.get("event") == "train_step"]
    start = next((e for e in events if e.get("event") == "train_start"), {})
    print(path.split("/")[-1], {k: start.get(k) for k in ("device", "precision", "channels_last", "world_size")})
    if len(steps) > 2:
        (a, ta, _), (b, tb, last) = steps[1], steps[-1]
        ms = (tb - ta).total_seconds() / (b - a) * 1000
        print(f"  {ms:.1f} ms/step over steps {a}-{b}: {last.get('images_per_second')} img/s at the last log")
    print("  stall per save (s):", [round(e["stall_seconds"], 3) for e in events if "stall_seconds" in e])
    print("  resumed:", [e.get("step") for e in events if e.get("event") == "resumed"])
    print("  errors:", [e.get("event") for e in events if e.get("level") == "error"][:5])
PY
}
export -f full gand; export W N BS STEPS TINY OUT
want 6 && part 130 "6/6 the full command on PNG shards: accelerate launch -m gand.train configs/can256.yaml, batch $BS" -- \
  bash -c full
say done
