#!/usr/bin/env bash
# The data path and loop on a GPU, in one device call (issue 16). Prepare here, after `make test` made .venv:
#   bash ../shared/gpu/prepare.sh          (the wheels the GPU machine lacks, in .gpu/whl)
#   DRY=1 bash bench/gpu_check.sh          (rehearsal on this CPU, tiny sizes, a few minutes)
# then one device call: command `bash bench/gpu_check.sh`, carry [".gpu"], timeout_s 540.
# Prints, and leaves in $OUT: the sync count of ordinary steps (tests/gpu), bench/trainstep.py's four numbers for
# CAN-256 and dcgan32 at batch 64 (its bf16 rows too), CAN-256's step functions with torch.compile (issue 17), and the full `accelerate launch -m gand.train configs/can256.yaml` on PNG shards
# with its ms/step, then the resume.
set -u
root=$(pwd)
if [ "${DRY:-0}" = 1 ]; then
  export PATH="$root/.venv/bin:$PATH"; OUT=${OUT:-/tmp/gpu-dry}; N=64; BS=4; STEPS=24; TINY="model.width=0.125"
  TRAINSTEP="--configs dcgan32 --repeats 1 --images 64"; PRECISION="--configs dcgan32 --repeats 1 --images 64"
else
  [ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$root; N=640; BS=64; STEPS=200; TINY=""
  TRAINSTEP="--configs can256,dcgan32 --repeats 1 --full --images $N --rows bare,steps,memory,loader,steps_bf16"
  PRECISION="--configs can256 --repeats 1 --full --images 64"
fi
export PYTHONUNBUFFERED=1 GAND_LOG_FORMAT=json
mkdir -p "$OUT"; W=/tmp/gpu-work; rm -rf "$W"; mkdir -p "$W"
say() { echo "== $(date +%T) $*"; }
gand() { python3 -m gand.cli "$@"; }
say machine; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; nproc
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

say "1/3 host-device syncs per ordinary step (tests/gpu/test_syncs_on_gpu.py)"
timeout 150 python3 -m pytest tests/gpu/test_syncs_on_gpu.py -q -p no:cacheprovider 2>&1 | tail -4

say "2/3 bare loop, step functions, loop from memory, loop with loader (bench/trainstep.py $TRAINSTEP)"
timeout 260 python3 bench/trainstep.py $TRAINSTEP --work "$W/trainstep" --out "$OUT/trainstep.json" 2>&1 | tail -12
say "2b/3 issue 17: can256 step functions in fp32, bf16 and bf16 + torch.compile"
timeout 150 python3 bench/trainstep.py $PRECISION --rows steps,steps_bf16,steps_bf16_compile \
  --work "$W/precision" --out "$OUT/precision.json" 2>&1 | tail -6

say "3/3 the full command on PNG shards: accelerate launch -m gand.train configs/can256.yaml, batch $BS, $STEPS steps"
gand demo-data "$W/raw" --n $N >/dev/null 2>&1
gand pack "$W/raw" "$W/packed" --resolutions 256 --min-side 256 2>&1 | tail -1
C="configs/can256.yaml data.path=$W/packed train.batch_size=$BS train.log_every_steps=25 samples.every_steps=100
   checkpoint.every_steps=100 run.dir=$W/run $TINY"
timeout 120 accelerate launch -m gand.train $C train.max_steps=$STEPS > "$OUT/can256.log" 2>&1; echo "exit $?"
timeout 60 accelerate launch -m gand.train $C train.max_steps=$((STEPS + 25)) > "$OUT/can256-resume.log" 2>&1
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
say done
