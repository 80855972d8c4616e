"""Peak memory and time of one distillation step on a full-size SD1.5 UNet: the shared backbone against three copies.

    python benchmarks/distill_memory.py            # writes a random-weight SD1.5 teacher to a temporary folder

Each layout runs in its own process; the step's peak is the process's maximum resident memory during the step
(Linux's VmHWM, reset after set-up; loading the teacher peaks apart and is printed beside it): the distiller with the
paper's SD1.5 recipe (its LoRaD ranks, on the unet-student / unet-fake presets) at batch 1, 64x64 latents, bf16
weights and gradient checkpointing, then one training step, timed; the shared backbone once more at batch 2, so
that the memory one more sample takes is measured and the paper's batch of 16 per GPU can be estimated. CPUs
without bf16 matrix units emulate it: on a 2-core AMD EPYC one step took more than 15 minutes. The UNet
is SD1.5's, full size, random; text encoder and VAE are small stand-ins (768-wide text features, 4 latent
channels), because the step uses them only for embeddings computed once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["a photo of a dog", "a red car on a street", "a bowl of fruit", "a lighthouse at dusk"]


def write_teacher(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from wadi_core.models.components import Components
    from wadi_core.models.families import sd15_unet
    from wadi_core.models.single_file import SD_SCHEDULER
    from wadi_core.shapes import components as C

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(C.write_tokenizer(folder.parent / "tokenizer-files")))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=768,
                                        num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=77))
    vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, layers_per_block=1)
    unet = sd15_unet()
    C.save_model_folder(Components(tokenizer, text.eval(), vae.eval(), unet.eval(),
                                   DDPMScheduler.from_config(SD_SCHEDULER)), folder, unet_dtype=torch.bfloat16)
    (folder.parent / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return folder


def measure(teacher: str, separate: bool, batch: int) -> dict:
    """In this process: set up the distiller, run one step; its time and the process's peak memory."""
    import resource

    from wadi_core.distill import DistillConfig, Distiller

    config = DistillConfig.from_options(
        model=teacher, prompts=str(Path(teacher).parent / "prompts.txt"), out=tempfile.mkdtemp(prefix="wadi-mem-"),
        batch_size=batch, steps=1, mixed_precision="bf16", gradient_checkpointing=True, separate_copies=separate,
        report_to="none", sample_every=0, checkpoint_every=0)
    distiller = Distiller(config, progress=False, log=lambda text: None)
    nets = (distiller.teacher.unet, distiller.student, distiller.fake)
    weights = {p.data_ptr(): p.numel() * p.element_size() for net in nets for p in net.parameters()}
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) starts again from what is held now
    started = time.perf_counter()
    distiller.train_step()
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    step_peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1e6
    distiller.close()
    return {"layout": "three copies" if separate else "shared backbone", "batch": batch, "step_s": seconds,
            "peak_gb": step_peak, "setup_peak_gb": setup_peak,
            "weights_gb": sum(weights.values()) / 1e9,
            "recipe": distiller.config.recipe, "student_rank": distiller.config.student.rank,
            "fake_rank": distiller.config.fake.rank}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        teacher, separate, batch = sys.argv[2].split("::")
        print(json.dumps(measure(teacher, separate == "1", int(batch))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print("writing a random-weight SD1.5 UNet (bf16) ...", flush=True)
        teacher = str(write_teacher(Path(tmp) / "sd15"))
        results = []
        for separate, batch in ((False, 1), (True, 1), (False, 2)):
            print(f"measuring the {'three copies' if separate else 'shared backbone'} at batch {batch} ...", flush=True)
            out = subprocess.run([sys.executable, __file__, "--measure", f"{teacher}::{int(separate)}::{batch}"],
                                 capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    shared, copies, shared2 = results
    print(f"recipe {shared['recipe']} (student LoRaD rank {shared['student_rank']}, fake rank {shared['fake_rank']}), "
          "64x64 latents, bf16 weights, gradient checkpointing, CPU")
    for r in results:
        print(f"  {r['layout']:>15}, batch {r['batch']}: step peak {r['peak_gb']:.2f} GB "
              f"(weights {r['weights_gb']:.2f} GB; loading peaked at {r['setup_peak_gb']:.2f} GB), "
              f"step {r['step_s']:.1f} s")
    print(f"  shared / three copies at batch 1: peak {shared['peak_gb'] / copies['peak_gb']:.2f}x, "
          f"weights {shared['weights_gb'] / copies['weights_gb']:.2f}x, "
          f"step time {shared['step_s'] / copies['step_s']:.2f}x")
    per_sample = shared2["peak_gb"] - shared["peak_gb"]
    print(f"  one more sample: +{per_sample:.2f} GB; the paper's batch of 16 per GPU with the shared backbone: about "
          f"{shared['peak_gb'] + 15 * per_sample:.1f} GB (three copies: {copies['peak_gb'] + 15 * per_sample:.1f} GB), "
          "host-side counting, before a GPU's own overhead")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
