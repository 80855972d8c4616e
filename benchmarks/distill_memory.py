"""Peak memory and time of one distillation step on a full-size SD1.5 UNet: the shared backbone against three copies.

    python benchmarks/distill_memory.py                 # writes a random-weight SD1.5 teacher to a temporary folder
    python benchmarks/distill_memory.py --batch16       # the paper's batch of 16 measured too (a CPU: 6 min a step)
    python benchmarks/distill_memory.py --plain-allocator   # glibc's defaults (what a plain run holds)
    python benchmarks/distill_memory.py --offload       # on a GPU: both layouts with AdamW's state in host memory too
    python benchmarks/distill_memory.py --processes     # also 2 processes x batch 1 under DDP and under FSDP

Each layout runs in its own process: the distiller with the paper's SD1.5 recipe (its LoRaD ranks, on the
unet-student / unet-fake presets) at batch 1, 64x64 latents, bf16 weights and gradient checkpointing, then two
training steps: the peak is taken over both (AdamW makes its moments in the first step's update, so only from the
second on does a whole step run beside them, as every later step does) and the second is timed (on a GPU the first
pays for CUDA's kernel selection); the shared backbone once more at batch 2, for the memory one more sample takes
there, and with ``--batch16`` at the paper's batch of 16 per GPU (which needs more than batch 2's growth suggests;
docs/benchmarks.md).
``--processes`` measures the shared backbone in two processes of one thread each, batch 1 apiece (the two samples
of one process at batch 2), under DDP (each holds every weight) and under FSDP (each holds half of them and gathers a
block's while it runs): the memory of one process beside that of one process alone.
``--offload`` measures both layouts again with the optimisers' state in host memory (``--offload-optimizer``),
which only a GPU's count can show: on a CPU the state is in the memory counted either way. A third step counts the
tensors alone, as CUDA counts a GPU's, on any device (tensor_count.py; the optimisers' host memory left out), and
what they were at their peak: frozen and trained weights, gradients, optimiser state, the rest.

Where the distiller runs on the CPU, the step's peak is the process's maximum resident memory during the step
(Linux's VmHWM, reset after set-up; loading the teacher peaks apart and is printed beside it), with glibc told to
return large freed blocks at once (``LIVE_MEMORY`` below), which makes the step slower than a plain run. On a GPU
(where accelerate puts the distiller when CUDA is available) it is ``torch.cuda.max_memory_allocated``, the
tensors alone, with what the caching allocator reserved printed beside it. CPUs without bf16 matrix
instructions emulate it: on a 2-core AMD EPYC without them one step took more than 15 minutes, on one with
``avx512_bf16`` 45 s. The UNet is SD1.5's, full size, random; text
encoder and VAE are small stand-ins (768-wide text features, 4 latent channels), because the step uses them only
for embeddings computed once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# glibc gives every freed block of 128 KiB or more back to the system at once, so that a CPU's resident peak counts
# the memory the step holds, not what the allocator kept after earlier frees (0.4-0.7 GB more, varying from run to
# run; docs/benchmarks.md). It slows a CPU step (more page faults); a GPU's peak is counted by CUDA either way.
LIVE_MEMORY = str(128 * 1024)
PROMPTS = ["a photo of a dog", "a red car on a street", "a bowl of fruit", "a lighthouse at dusk"]


def write_teacher(folder: Path, tiny: bool = False) -> Path:
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
    if tiny:  # SD1.5's kinds of blocks at a fraction of the width: checks this script in seconds
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=64,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                                    attention_head_dim=8, norm_num_groups=8)
    else:
        unet = sd15_unet()
    C.save_model_folder(Components(tokenizer, text.eval(), vae.eval(), unet.eval(),
                                   DDPMScheduler.from_config(SD_SCHEDULER)), folder, unet_dtype=torch.bfloat16)
    (folder.parent / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return folder


def measure(teacher: str, separate: bool, batch: int, offload: bool = False) -> dict:
    """In this process: set up the distiller, run two steps; the second's time and the peak memory of its device.
    Under ``accelerate launch`` each process measures its own."""
    import torch

    from wadi_core.distill import DistillConfig, Distiller, sharding

    config = DistillConfig.from_options(
        model=teacher, prompts=str(Path(teacher).parent / "prompts.txt"), out=tempfile.mkdtemp(prefix="wadi-mem-"),
        batch_size=batch, steps=2, mixed_precision="bf16", gradient_checkpointing=True, separate_copies=separate,
        offload_optimizer=offload, report_to="none", sample_every=0, checkpoint_every=0)
    distiller = Distiller(config, progress=False, log=lambda text: None)
    nets = (distiller.teacher.unet, distiller.student, distiller.fake)
    weights = {local.data_ptr(): local.numel() * local.element_size()  # (this process's part of sharded ones)
               for net in nets for local in map(sharding.local, net.parameters())}
    device = distiller.accelerator.device
    memory = DeviceMemory(device)
    setup_peak = memory.start()
    seconds = []
    for _ in range(2):  # the second step runs beside AdamW's moments throughout (and on a GPU, CUDA's chosen kernels)
        started = time.perf_counter()
        distiller.train_step()
        memory.wait()
        seconds.append(time.perf_counter() - started)
    step_peak, reserved = memory.peak()
    count = count_step(distiller)
    distiller.close()
    processes = distiller.accelerator.num_processes
    layout = ("three copies" if separate else "shared backbone") + (", optimiser state on the host" if offload else "")
    if processes > 1:
        layout += f", {'FSDP' if distiller.sharded else 'DDP'} over {processes} processes"
    return {"layout": layout, "offload": offload, "batch": batch, "processes": processes,
            "rank": distiller.accelerator.process_index, "step_s": seconds[-1],
            "first_step_s": seconds[0], "peak_gb": step_peak, "reserved_gb": reserved, "setup_peak_gb": setup_peak,
            "weights_gb": sum(weights.values()) / 1e9, "tensor_peak_gb": count["peak"] / 1e9,
            "tensors_at_peak_gb": {kind: size / 1e9 for kind, size in count["at_peak"].items()},
            "device": DeviceMemory.name(device), "torch": torch.__version__, "recipe": distiller.config.recipe,
            "student_rank": distiller.config.student.rank, "fake_rank": distiller.config.fake.rank}


def count_step(distiller) -> dict:
    """One more step with its tensors counted as a GPU's allocator counts them (tensor_count.py), on any device;
    an optimiser's state in host memory (--offload-optimizer) is left out, as it is of a GPU's count. In bytes: what
    was held when it started, its peak and what was held at the peak by kind, and what was held after it."""
    import torch

    from benchmarks.tensor_count import TensorCount
    from wadi_core.distill.offload import HostAdamW

    trained = distiller.student_params + distiller.fake_params
    optimisers = [getattr(opt, "optimizer", opt) for opt in (distiller.opt_student, distiller.opt_fake)]  # (unwrap)
    offloaded = [opt for opt in optimisers if isinstance(opt, HostAdamW)]
    on_host = [opt.host for opt in offloaded]  # (each HostAdamW's AdamW over its host copies)
    nets = (distiller.teacher.unet, distiller.student, distiller.fake, distiller.teacher.text_encoder,
            distiller.teacher.vae)
    sharded = fsdp_params(nets)
    count = TensorCount(distiller.accelerator.device, host=lambda: state_tensors(on_host), kinds={
        "trained weights": lambda: trained,
        "their gradients": lambda: [p.grad for p in trained],
        "optimiser state": lambda: state_tensors(optimisers),  # (their parameters: the trained weights, named first)
        **({"gathered weights": lambda: [t for p in sharded for t in p.all_gather_outputs]} if sharded else {}),
        "frozen weights": lambda: [t for net in nets for t in (*net.parameters(), *net.buffers())]
                                  + [p.sharded_param for p in sharded]})  # (FSDP: its blocks' shards)
    for opt in offloaded:  # what its step makes is in host memory (the gradients' copies, the update)
        opt.step = count.host_side()(opt.step)
    with count:
        distiller.train_step()
        if distiller.accelerator.device.type == "cuda":
            torch.cuda.synchronize()
    return {"start": count.start_bytes, "peak": count.peak_bytes, "at_peak": count.at_peak, "end": count.total}


def fsdp_params(nets) -> list:
    """FSDP's records of the sharded weights of ``nets`` (none without FSDP): each holds this process's shard
    (``sharded_param``) and the storage its block's gathered weight lives in while the block runs
    (``all_gather_outputs``, emptied after). torch's own records: there is no public name for the gathered storage."""
    from torch.distributed.fsdp import FSDPModule

    groups = [m._get_fsdp_state()._fsdp_param_group for net in nets for m in net.modules() if isinstance(m, FSDPModule)]
    return list({id(p): p for group in groups if group is not None for p in group.fsdp_params}.values())


def state_tensors(optimisers) -> list:
    """The tensors that ``optimisers`` hold: their parameters and their state."""
    import torch
    return [t for opt in optimisers for t in (*(p for g in opt.param_groups for p in g["params"]),
                                              *(v for s in opt.state.values() for v in s.values()))
            if torch.is_tensor(t)]


class DeviceMemory:
    """The peak memory of one step: the process's resident memory on a CPU, the tensors' on a GPU."""

    def __init__(self, device):
        import torch
        self.torch, self.cuda = torch, device.type == "cuda"

    @staticmethod
    def name(device) -> str:
        import platform

        import torch
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def start(self) -> float:
        """Forget the peak so far (returned: set-up's, in GB) and count again from what is held now."""
        if self.cuda:
            self.wait()
            setup = self.torch.cuda.max_memory_allocated() / 1e9
            self.torch.cuda.reset_peak_memory_stats()
            return setup
        setup = resident_peak_gb()  # (not getrusage's ru_maxrss: Linux carries it over from the parent process)
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) starts again from what is held now
        return setup

    def wait(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak(self) -> tuple[float, float | None]:
        """The peak since start() in GB, and on a GPU what the caching allocator reserved at most."""
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 1e9, self.torch.cuda.max_memory_reserved() / 1e9
        return resident_peak_gb(), None


def largest(ranks: list[dict]) -> dict:
    """One result for the processes of a launch: the process with the larger peak (its step time: they wait for
    each other at every step)."""
    return max(ranks, key=lambda r: (r["peak_gb"], r["tensor_peak_gb"]))


def resident_peak_gb() -> float:
    """This process's peak resident memory (Linux's VmHWM) in GB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1e6


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        teacher, separate, batch, offload = sys.argv[2].split("::")
        result = json.dumps(measure(teacher, separate == "1", int(batch), offload == "1")) + "\n"
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), result.encode())  # (one write: launched processes share the pipe)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of several processes: no teardown (as wadi_cli's)
            sys.stderr.flush()
            os._exit(0)
        return 0
    sys.path.insert(0, str(ROOT))  # (not on import: load_memory.py measures other trees with these helpers)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch16", action="store_true",
                        help="also measure the shared backbone at the paper's batch of 16 (a CPU: 6 min a step)")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--processes", action="store_true",
                        help="also measure the shared backbone in 2 processes x batch 1, under DDP and under FSDP")
    parser.add_argument("--offload", action="store_true",
                        help="also measure both layouts with the optimisers' state in host memory (meant for a GPU)")
    parser.add_argument("--tiny", action="store_true", help="a small UNet instead of SD1.5's: checks the script only")
    parser.add_argument("--plain-allocator", action="store_true",
                        help="leave glibc's defaults: the peaks then count what it keeps after frees (varies by run)")
    args = parser.parse_args()
    # (three copies, batch, optimiser state on the host, launched as)
    layouts = ([(False, 1, False, ""), (True, 1, False, ""), (False, 2, False, "")]
               + ([(False, 16, False, "")] if args.batch16 else [])
               + ([(False, 1, False, "--multi_gpu"), (False, 1, False, "--use_fsdp")] if args.processes else [])
               + ([(False, 1, True, ""), (True, 1, True, "")] if args.offload else []))
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing a random-weight {'small' if args.tiny else 'SD1.5'} UNet (bf16) ...", flush=True)
        teacher = str(write_teacher(Path(tmp) / "sd15", args.tiny))
        results = []
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if not args.plain_allocator:
            env["MALLOC_MMAP_THRESHOLD_"] = LIVE_MEMORY
        for separate, batch, offload, launch in layouts:
            print(f"measuring the {'three copies' if separate else 'shared backbone'} at batch {batch}"
                  f"{' with the optimiser state on the host' if offload else ''}"
                  f"{f' in 2 processes of one thread ({launch[2:]})' if launch else ''} ...", flush=True)
            command = [sys.executable, __file__, "--measure", f"{teacher}::{int(separate)}::{batch}::{int(offload)}"]
            if launch:  # (one thread a process: the two share this machine's cores)
                command[1:1] = ["-m", "accelerate.commands.launch", launch, "--num_processes", "2",
                                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                "--main_process_port", str(29500 + os.getpid() % 1000)]
            out = subprocess.run(command, capture_output=True, text=True,
                                 env=dict(env, OMP_NUM_THREADS="1") if launch else env)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(largest([json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shared, copies, shared2 = results[:3]
    ddp, fsdp = [r for r in results if r["processes"] > 1] or (None, None)  # (--processes: DDP's, then FSDP's)
    print(f"recipe {shared['recipe']} (student LoRaD rank {shared['student_rank']}, fake rank {shared['fake_rank']}), "
          f"64x64 latents, bf16 weights, gradient checkpointing; {shared['device']}, torch {shared['torch']}")
    for r in results:
        reserved = "" if r["reserved_gb"] is None else f", {r['reserved_gb']:.2f} GB reserved"
        each = " each, the larger process's" if r["processes"] > 1 else ""
        print(f"  {r['layout']}, batch {r['batch']:>2}{each}: step peak {r['peak_gb']:.2f} GB{reserved} "
              f"(weights {r['weights_gb']:.2f} GB; loading peaked at {r['setup_peak_gb']:.2f} GB), "
              f"step {r['step_s']:.2f} s (first {r['first_step_s']:.2f} s)")
        kinds = ", ".join(f"{kind} {size:.2f}" for kind, size in r["tensors_at_peak_gb"].items())
        print(f"    tensors alone (as a GPU counts them), a third step: peak {r['tensor_peak_gb']:.2f} GB ({kinds})")
    print(f"  shared / three copies at batch 1: peak {shared['peak_gb'] / copies['peak_gb']:.2f}x, "
          f"weights {shared['weights_gb'] / copies['weights_gb']:.2f}x, "
          f"step time {shared['step_s'] / copies['step_s']:.2f}x; tensors alone "
          f"{shared['tensor_peak_gb'] / copies['tensor_peak_gb']:.2f}x")
    print(f"  one more sample at batch 2: +{shared2['peak_gb'] - shared['peak_gb']:.2f} GB (the growth is not linear "
          f"further on: --batch16 measures the paper's 16)")
    if args.processes:
        print(f"  2 processes x batch 1 / 1 process x batch 2 (the same 2 samples a step), a process's peak: DDP "
              f"{ddp['peak_gb'] / shared2['peak_gb']:.2f}x, FSDP {fsdp['peak_gb'] / shared2['peak_gb']:.2f}x; tensors "
              f"alone: DDP {ddp['tensor_peak_gb'] / shared2['tensor_peak_gb']:.2f}x, FSDP "
              f"{fsdp['tensor_peak_gb'] / shared2['tensor_peak_gb']:.2f}x; step time: DDP "
              f"{ddp['step_s'] / shared2['step_s']:.2f}x, FSDP {fsdp['step_s'] / shared2['step_s']:.2f}x")
    if args.offload:
        shared_host, copies_host = results[-2:]
        print(f"  optimiser state on the host: shared {shared_host['peak_gb']:.2f} GB, "
              f"{shared_host['peak_gb'] / copies['peak_gb']:.2f}x the three copies' peak, "
              f"{shared_host['peak_gb'] / copies_host['peak_gb']:.2f}x theirs with the state on the host too; step "
              f"{shared_host['step_s'] / shared['step_s']:.2f}x the time of the state on the device")
        print(f"  optimiser state on the host, tensors alone: shared {shared_host['tensor_peak_gb']:.2f} GB, "
              f"{shared_host['tensor_peak_gb'] / copies['tensor_peak_gb']:.2f}x the three copies' peak, "
              f"{shared_host['tensor_peak_gb'] / copies_host['tensor_peak_gb']:.2f}x theirs with the state on the "
              f"host too")
    if args.batch16:
        r = results[3]
        held = r["reserved_gb"] or r["peak_gb"]
        fits = held + 1.0 <= 24 * 2**30 / 1e9  # a 24 GiB card, about 1 GB of it CUDA's own context
        reserved = "" if r["reserved_gb"] is None else f" ({held:.2f} GB reserved)"
        print(f"  batch 16 measured: step peak {r['peak_gb']:.2f} GB{reserved}, tensors alone "
              f"{r['tensor_peak_gb']:.2f} GB, {r['step_s']:.2f} s a step: {'fits' if fits else 'does not fit'} a "
              f"24 GiB card with about 1 GB of CUDA context beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
