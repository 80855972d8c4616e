#!/usr/bin/env bash
# The GPU measurements, for a machine with one CUDA GPU (docs/benchmarks.md, "On a GPU"). Stages:
#   layer    benchmarks/lorad_layer.py: one adapted Linear's step in bf16 (LoRaD against full, hook, LoRA, DoRA);
#   memory   benchmarks/distill_memory.py --batch16 --offload: an SD1.5 distillation step, shared backbone against
#            three copies, the paper's batch of 16 on one GPU, and both layouts with AdamW's state in host memory;
#   probe    the embedded world's distillation step on the GPU (20 steps, LoRaD and every weight trained), and
#            how long --steps 8000 would take;
#   onestep  benchmarks/onestep_speed.py --teacher: an SD1.5-size one-step image in fp32, fp16 and bf16, and the
#            teacher's 25 steps with CFG;
#   tasks    the downstream commands with --device cuda on the embedded world (a 5-step student): highres and
#            controlnet against the same commands on the CPU (largest pixel difference), reversion and dreambooth
#            for 20 steps;
#   demos    `wadi demo --steps 8000` with a LoRaD student and with every weight trained, side by side on the one
#            GPU, each stopped after SECONDS (default 420) if it has not finished.
#
#   bash benchmarks/gpu_checks.sh OUT                      # layer, memory, probe, onestep and tasks
#   bash benchmarks/gpu_checks.sh OUT demos=480            # the stages named
#
# OUT gets gpu_checks.log (everything printed, appended), lorad_layer.json, distill_memory.json, onestep_speed.json
# and, from demos,
# demo_lorad.json / demo_full.json (the demos' metrics) and demo_lorad.png / demo_full.png (their grids).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu_checks.sh OUT [layer] [memory] [probe] [onestep] [tasks] [demos[=SECONDS]]" >&2; exit 2; }
out=$1
shift
stages=${*:-layer memory probe onestep tasks}
demo_seconds=420
for stage in $stages; do
  case $stage in
    layer|memory|probe|onestep|tasks|demos) ;;
    demos=*) demo_seconds=${stage#demos=}; stages="$stages demos" ;;
    *) echo "unknown stage '$stage': choose from layer, memory, probe, onestep, tasks, demos[=SECONDS]" >&2; exit 2 ;;
  esac
done
wants() { [[ " $stages " == *" $1 "* ]]; }
mkdir -p "$out"
log="$out/gpu_checks.log"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "== $(date +%T) $*" | tee -a "$log"; }

say "machine"
{ nvidia-smi -L; "$py" -c "import torch, diffusers, transformers, accelerate, peft
print('torch', torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name())
print('diffusers', diffusers.__version__, '| transformers', transformers.__version__,
      '| accelerate', accelerate.__version__, '| peft', peft.__version__)"; } 2>&1 | tee -a "$log"
"$py" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || { say "no CUDA device: stopping"; exit 1; }

if wants layer; then
  say "one LoRaD layer, bf16"
  "$py" benchmarks/lorad_layer.py --json "$out/lorad_layer.json" 2>&1 | tee -a "$log"
fi

if wants memory; then
  say "an SD1.5 distillation step"
  "$py" benchmarks/distill_memory.py --batch16 --offload --json "$out/distill_memory.json" 2>&1 \
    | grep -v "^\[transformers\]" | tee -a "$log"
fi

if wants probe; then
  say "the embedded world's step on the GPU"
  probe=$(mktemp -d)
  for kind in lorad full; do
    "$py" -m wadi_cli distill --steps 20 --student-kind "$kind" --out "$probe/$kind" --report-to none \
      --checkpoint-every 0 --sample-every 0 --quiet 2>&1 | tail -n 3 | tee -a "$log"
    "$py" - "$probe/$kind/history.json" "$kind" <<'EOF' 2>&1 | tee -a "$log"
import json, statistics, sys
steps = [h["seconds"] for h in json.load(open(sys.argv[1]))][5:]
step = statistics.median(steps)
print(f"{sys.argv[2]}: {step * 1e3:.0f} ms a step (median of steps 6-20); --steps 8000 would take {step * 8000 / 60:.1f} min")
EOF
  done
  rm -rf "$probe"
fi

if wants onestep; then
  say "an SD1.5-size one-step image by dtype, and the teacher's 25 steps"
  "$py" benchmarks/onestep_speed.py --teacher --json "$out/onestep_speed.json" 2>&1 | grep -v "^\[transformers\]" \
    | tee -a "$log"
fi

if wants tasks; then
  say "the downstream commands on the GPU (embedded world), highres and controlnet against the CPU"
  tasks=$(mktemp -d)
  "$py" -m wadi_cli distill --steps 5 --out "$tasks/distill" --report-to none --checkpoint-every 0 --sample-every 0 \
    --quiet 2>&1 | tail -n 1 | tee -a "$log"
  student="$tasks/distill/student.safetensors"
  for device in cuda cpu; do
    "$py" -m wadi_cli highres --student "$student" --prompt "a red circle" --prompt "two blue squares" \
      --device "$device" --dtype fp32 --out "$tasks/highres-$device" 2>&1 | tail -n 1 | tee -a "$log"
    "$py" -m wadi_cli controlnet --student "$student" --eval 16 --device "$device" --dtype fp32 \
      --out "$tasks/controlnet-$device" 2>&1 | tail -n 2 | tee -a "$log"
  done
  "$py" - "$tasks" <<'EOF' 2>&1 | tee -a "$log"
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1])
for task in ("highres", "controlnet"):
    pairs = [(a, root / f"{task}-cpu" / a.relative_to(root / f"{task}-cuda"))
             for a in sorted((root / f"{task}-cuda").rglob("*.png"))]
    worst = max(np.abs(np.asarray(Image.open(a), float) - np.asarray(Image.open(b), float)).max() for a, b in pairs)
    print(f"{task}: {len(pairs)} PNGs, largest difference cuda vs cpu {worst:.0f} levels of 255")
EOF
  "$py" -m wadi_cli reversion --steps 20 --device cuda --out "$tasks/reversion" --quiet 2>&1 | tail -n 1 \
    | tee -a "$log"
  "$py" -m wadi_cli dreambooth --steps 20 --num-class-images 8 --student "$student" --device cuda \
    --out "$tasks/dreambooth" --quiet 2>&1 | tail -n 1 | tee -a "$log"
  rm -rf "$tasks"
fi

if wants demos; then
  say "wadi demo --steps 8000, LoRaD and every weight side by side, at most $demo_seconds s each"
  runs=$(mktemp -d)
  for kind in lorad full; do
    timeout "$demo_seconds" "$py" -m wadi_cli demo --steps 8000 --seed 0 --student-kind "$kind" --out "$runs/$kind" \
      > "$runs/$kind.log" 2>&1 &
  done
  wait
  for kind in lorad full; do
    say "demo, $kind"
    tr '\r' '\n' < "$runs/$kind.log" | grep -v "it/s\]\|s/it\]\|step/s\]\|^\[transformers\]" | tail -n 25 \
      | tee -a "$log"
    [ -f "$runs/$kind/metrics.json" ] && cp "$runs/$kind/metrics.json" "$out/demo_$kind.json"
    [ -f "$runs/$kind/grid.png" ] && cp "$runs/$kind/grid.png" "$out/demo_$kind.png"
  done
  rm -rf "$runs"
fi
say "done"
