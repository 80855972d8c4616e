"""What the web UI's buttons do, as plain functions (testable without a browser).

Every function checks its inputs first and raises :class:`UIError` with one sentence naming the
problem and the fix; the Blocks show that sentence in the page.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from wadi_core.distill.recipes import Recipe, recipe_for_family
from wadi_core.choices import EMBEDDED_MODEL as MODEL_DIR
from wadi_core.choices import SHAPES_CONTROLNET

from .jobs import DistillJob, JobRefused, TaskJob

EMBEDDED = "embedded (shapes world)"


class UIError(ValueError):
    pass


def user_errors() -> tuple[type[BaseException], ...]:
    from wadi_core.errors import user_errors as core_errors
    return (UIError, JobRefused, *core_errors())


def names_embedded(text: str) -> bool:
    """Whether a teacher field asks for the embedded model (empty, its label or its folder, as `wadi distill` sees it)."""
    text = (text or "").strip()
    return text in ("", EMBEDDED) or Path(text).expanduser().resolve() == MODEL_DIR.resolve()


def model_path(text: str) -> str:
    """The embedded default, an existing folder / .safetensors file, or a Hugging Face Hub id."""
    from wadi_core.models.hub import is_hub_name

    if names_embedded(text):
        return str(MODEL_DIR)
    text = text.strip()
    if is_hub_name(text):
        return text  # the library fetches it from the Hub, or finds it in the Hub's cache
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise UIError(f"the model path {path} does not exist; give a diffusers folder, a .safetensors file or a "
                      "Hugging Face Hub id (owner/name), or leave it empty for the embedded model")
    return str(path)


def lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def a1111_recipe_markdown() -> str:
    """The txt2img settings that draw a LoRaD student in one step in A1111 / Forge, as a table."""
    from wadi_core.sampling.onestep import A1111_ONE_STEP
    rows = "\n".join(f"| {name} | {value.replace('<', '&lt;')} |" for name, value in A1111_ONE_STEP)
    return "| setting | value |\n|---|---|\n" + rows


def prompt_file(path_text: str, pasted: str) -> str | None:
    """A prompt file path: the given one, or the pasted prompts written to a temporary file."""
    pasted_lines = lines(pasted)
    if (path_text or "").strip():
        if pasted_lines:
            raise UIError("give either a prompt file or pasted prompts, not both")
        path = Path(path_text.strip()).expanduser().resolve()
        if not path.is_file():
            raise UIError(f"the prompt file {path} does not exist; give a text file with one prompt per line")
        return str(path)
    if not pasted_lines:
        return None  # the embedded teacher's own training prompts
    path = Path(tempfile.mkdtemp(prefix="wadi-ui-")) / "prompts.txt"
    path.write_text("\n".join(pasted_lines) + "\n")
    return str(path)


def positive_int(value, name: str) -> int:
    if value is None or int(value) != value or int(value) < 1:
        raise UIError(f"{name} must be a whole number of at least 1, got {value}")
    return int(value)


def positive_float(value, name: str) -> float:
    if value is None or not float(value) > 0:
        raise UIError(f"{name} must be positive, got {value}")
    return float(value)


def cfg_scale(value, name: str) -> float:
    if value is None or not float(value) >= 1:
        raise UIError(f"{name} must be 1 (no guidance) or more, got {value}")
    return float(value)


def output_folder(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise UIError("choose an output folder for the run")
    path = Path(text).expanduser().resolve()
    if not path.parent.is_dir():
        raise UIError(f"the folder {path.parent} for the output does not exist; create it first")
    return str(path)


def family_of(teacher: str) -> str:
    """The family the weights of the teacher a field names show; "unknown" for a path that is not a model (yet)."""
    from wadi_core.models import CheckpointError, family_of_path

    try:
        return family_of_path(model_path(teacher))
    except (UIError, CheckpointError):
        return "unknown"


def recipe_of(teacher: str) -> Recipe:
    """The recipe of the teacher's family (the paper's for a path that is not a model yet: every real teacher
    gets it)."""
    return recipe_for_family(family_of(teacher))


# The Distill tab's fields that follow the recipe, in the order of recipe_fields' values.
RECIPE_FIELDS = ("student_rank", "fake_rank", "steps", "lr_student", "lr_fake", "guidance", "fake_guidance")


def recipe_fields(teacher: str, student_kind: str, fake_kind: str) -> tuple:
    """The values the Distill tab shows for a teacher: its family's recipe (the fake model's guidance, which the
    paper leaves equal to the teacher's, as that number)."""
    r = recipe_of(teacher)
    return (r.student_rank, r.fake_rank, r.steps, r.learning_rate("student", student_kind),
            r.learning_rate("fake", fake_kind), r.guidance, r.guidance if r.fake_guidance is None else r.fake_guidance)


def learning_rate_for(role: str, kind: str, teacher: str) -> float:
    """The default learning rate of the student or fake ``role`` trained as ``kind`` (LoRaD's angles take larger
    steps than additive factors or raw weights), for the field to follow its adapter dropdown."""
    return recipe_of(teacher).learning_rate(role, kind)


def start_distillation(teacher, prompts_path, pasted, student_kind, student_rank, fake_kind, fake_rank, steps,
                       lr_student, lr_fake, guidance, fake_guidance, out, resume=False,
                       sample_every=None, backbone="") -> DistillJob:
    from wadi_core.distill import DistillConfig
    from wadi_core.distill.world import world_for_family

    prompts = prompt_file(prompts_path, pasted)
    if prompts is None and world_for_family(family_of(teacher)).training_prompts() is None:
        raise UIError("this teacher needs prompts: give a prompt file or paste prompts, one per line")
    steps = positive_int(steps, "steps")
    config = DistillConfig.from_options(
        out=output_folder(out), model=model_path(teacher), backbone=optional_file(backbone, "replacement UNet"),
        prompts=prompts, student_kind=student_kind,
        student_rank=positive_int(student_rank, "student rank"), fake_kind=fake_kind,
        fake_rank=positive_int(fake_rank, "fake rank"), steps=steps,
        lr_student=positive_float(lr_student, "student learning rate"),
        lr_fake=positive_float(lr_fake, "fake learning rate"), guidance=cfg_scale(guidance, "teacher guidance"),
        fake_guidance=cfg_scale(fake_guidance, "fake model guidance"),
        checkpoint_every=max(1, min(100, steps // 4)), sample_every=sample_every or max(1, min(100, steps // 4)),
        report_to="none", resume=bool(resume))
    return DistillJob.start(config)


def progress_text(job: DistillJob) -> str:
    state = job.state
    parts = [f"**{state.status}**", f"step {state.step} / {state.total or '?'}"]
    if "loss_student" in state.last:
        parts.append(f"student loss {state.last['loss_student']:.4g}, fake loss {state.last['loss_fake']:.4g}")
    elif state.last:
        parts.append(", ".join(f"{k} {v:.4g}" for k, v in state.last.items() if k != "step"))
    eta = state.eta_seconds()
    if eta is not None and not state.done:
        parts.append(f"ETA {eta / 60:.1f} min")
    if state.message:
        parts.append(state.message)
    return " · ".join(parts)


def run_files(out: str) -> tuple[str | None, str | None]:
    """``(loss plot, latest sample grid)`` of a run folder, where they exist yet."""
    folder = Path(out).expanduser().resolve()
    loss, grid = folder / "loss.png", folder / "samples" / "latest.png"
    return (str(loss) if loss.is_file() else None), (str(grid) if grid.is_file() else None)


def existing_files(out: str, names) -> list[str]:
    folder = Path(out).expanduser().resolve()
    return [str(folder / name) for name in names if (folder / name).is_file()]


def optional_folder(text: str, what: str) -> str | None:
    """An existing folder, or None for the embedded default when the box is empty."""
    if not (text or "").strip():
        return None
    path = Path(text.strip()).expanduser().resolve()
    if not path.is_dir():
        raise UIError(f"the {what} folder {path} does not exist; give a folder of images, or leave it empty for the "
                      "embedded example")
    return str(path)


def optional_file(text: str, what: str) -> str | None:
    """None for an empty field, else an existing file, or a file on the Hugging Face Hub
    (``owner/name/file.safetensors``, fetched by the library)."""
    from wadi_core.models.hub import is_hub_name

    if not (text or "").strip():
        return None
    if is_hub_name(text.strip()):
        return text.strip()
    path = Path(text.strip()).expanduser().resolve()
    if not path.is_file():
        raise UIError(f"the {what} {path} does not exist")
    return str(path)


def start_reversion(model, exemplars, relation, token, init, steps, out, backbone="", device="auto") -> TaskJob:
    """ReVersion in the background (embedded exemplars of ``relation`` when no folder is given), on ``device``."""
    from wadi_core.devices import resolve
    from wadi_core.shapes import novel
    from wadi_core.tasks import reversion
    from wadi_core.tasks.reversion import ReVersionConfig

    folder = optional_folder(exemplars, "exemplar")
    init = (init or "").strip() or ("and" if folder else novel.novel_relation(relation).init)
    config = ReVersionConfig(token=(token or "").strip() or "<R>", init=init, steps=positive_int(steps, "steps"))
    model, out, backbone = model_path(model), output_folder(out), optional_file(backbone, "replacement UNet")
    resolve(device)  # a device this machine lacks is refused now, not in the background
    return TaskJob.start(out, lambda progress: drawn_on(device, lambda where: reversion.train(
        model, out, config, folder, relation, progress=progress, backbone=backbone, device=where)))


def start_dreambooth(model, instance_dir, instance_prompt, class_prompt, student, adapter_kind, rank, steps,
                     out, backbone="", device="auto") -> TaskJob:
    """DreamBooth in the background (the embedded subject when no folder is given), on ``device``."""
    from wadi_core import students
    from wadi_core.devices import resolve
    from wadi_core.tasks import dreambooth

    if not (instance_prompt or "").strip():
        raise UIError("write the instance prompt (a rare word and the class, e.g. 'a sks dog')")
    class_prompt = (class_prompt or "").strip()
    spec = students.AdapterSpec(adapter_kind, positive_int(rank, "rank"), "unet-student")
    config = dreambooth.DreamBoothConfig(instance_prompt.strip(), class_prompt, spec, positive_int(steps, "steps"),
                                         prior_weight=1.0 if class_prompt else 0.0)
    folder = optional_folder(instance_dir, "instance image")
    student_file = optional_file(student, "student")
    model, out, backbone = model_path(model), output_folder(out), optional_file(backbone, "replacement UNet")
    resolve(device)  # a device this machine lacks is refused now, not in the background
    return TaskJob.start(out, lambda progress: drawn_on(device, lambda where: dreambooth.train(
        model, out, config, folder, student=student_file, progress=progress, backbone=backbone, device=where)))


def finished_student(out: str) -> Path:
    path = Path(output_folder(out)) / "student.safetensors"
    if not path.is_file():
        raise UIError(f"{path} does not exist yet; let the distillation finish first")
    return path


def merge_student(out: str, teacher: str) -> str:
    from wadi_core.merge import export_merged
    teacher = model_path(teacher)
    single = Path(teacher).is_file()  # a host's checkpoint: the merged model is one file the host loads too
    merged = Path(output_folder(out)) / ("merged.safetensors" if single else "merged")
    export_merged(teacher, finished_student(out), merged, overwrite=True)
    kind = "a single-file checkpoint" if single else "a diffusers folder"
    return f"wrote the merged model to {merged} ({kind}; sample it in one step)"


def export_lora_file(out: str, teacher: str, rank) -> str:
    from wadi_core import students
    from wadi_core.merge import export_lora
    adapter = finished_student(out)
    if students.read_spec(adapter).kind != "lorad":
        raise UIError("only a LoRaD student can be exported as a LoRA (a LoRA student already is one)")
    target = Path(output_folder(out)) / "student-lora.safetensors"
    result = export_lora(model_path(teacher), [(adapter, 1.0)], target, positive_int(rank, "LoRA rank"),
                         overwrite=True, progress=False)
    return f"wrote {target}: rank {result.rank}, relative error {result.relative_error:.2%}"


def parse_adapters(text: str) -> list[str]:
    """One ``path[:strength]`` per line, each path checked (a file on the Hugging Face Hub is fetched later)."""
    from wadi_core.merge import parse_adapter_spec
    from wadi_core.models.hub import is_hub_name

    specs = lines(text)
    for spec in specs:
        path, _ = parse_adapter_spec(spec)
        if not Path(path).expanduser().is_file() and not is_hub_name(path):
            raise UIError(f"the adapter {path} does not exist; give one adapter file per line (or a file on the "
                          "Hugging Face Hub, owner/name/file.safetensors), optionally followed by :strength")
    return specs


def generate_images(model, adapters, prompt, seed, batch, compare, twice_the_size=False,
                    embedding_files="", backbone="", device="auto") -> tuple[list, str]:
    """One-step images (with the adapters, or of the model whose UNet ``backbone`` replaces) and optionally the
    multi-step teacher beside them; with ``twice_the_size`` the two-stage route (one step, upscale, a short
    teacher refinement). ``device`` as ``wadi generate --device`` (the backbone in fp16 on a CUDA GPU); the GPU's
    memory is given back afterwards, for the host's own model."""
    from wadi_core.merge import parse_adapter_spec

    if not (prompt or "").strip():
        raise UIError("write a prompt first")
    batch = positive_int(batch, "batch size")
    specs = parse_adapters(adapters)
    backbone = optional_file(backbone, "replacement UNet")
    if twice_the_size and not specs and not backbone:
        raise UIError("the 2x route needs a student: give its student.safetensors under adapters, or a released "
                      "UNet")
    model = model_path(model)
    tokens = [optional_file(path, "embedding") for path in lines(embedding_files)]
    adapters = [parse_adapter_spec(spec) for spec in specs]
    label = f" with {', '.join(specs)}" if specs else ""
    gallery, text = drawn_on(device, lambda where: _draw(model, adapters, tokens, backbone, prompt.strip(),
                                                         int(seed or 0), batch, compare, twice_the_size, where, label))
    return [(np.asarray(image), caption) for image, caption in gallery], text


def drawn_on(device: str, draw):
    """``draw(device)`` on the ``device`` a Device field names (``wadi generate --device``'s choices); a GPU's
    cached memory is given back afterwards, for the host's own model (``draw``'s models are gone by then)."""
    from wadi_core.devices import resolve
    where = resolve(device)
    try:
        return draw(where)
    finally:
        release(where)


def _draw(model, adapters, tokens, backbone, prompt, seed, batch, compare, twice_the_size, device, label):
    from wadi_core.sampling import MultiStep, OneStep, TwoStage, build_generator

    placed = dict(device=device, dtype="auto")
    student = build_generator(model, adapters, tokens, one_step=True, backbone=backbone, **placed)
    prompts, seeds = [prompt] * batch, [seed + i for i in range(batch)]
    sampler = TwoStage(build_generator(model, embeddings=tokens, **placed).components) if twice_the_size else OneStep()
    start = time.perf_counter()
    images = student(prompts, seeds, sampler)
    seconds = time.perf_counter() - start
    description = sampler.describe() + label
    del student, sampler  # before the teacher is read
    gallery = [(image, f"one step, seed {s}") for image, s in zip(images, seeds)]
    text = f"{batch} one-step images in {seconds:.2f} s on {device} ({batch / seconds:.1f} images/s; {description})"
    if compare:
        teacher, reference_sampler = build_generator(model, embeddings=tokens, **placed), MultiStep()
        start = time.perf_counter()
        reference = teacher(prompts, seeds, reference_sampler)
        teacher_seconds = time.perf_counter() - start
        gallery += [(image, f"teacher, seed {s}") for image, s in zip(reference, seeds)]
        text += (f"; teacher: {teacher_seconds:.2f} s ({reference_sampler.describe()}), "
                 f"{teacher_seconds / seconds:.1f}x slower")
    return gallery, text


def release(device) -> None:
    """Give a GPU's cached memory back once a drawing's models are gone (the host's model shares the GPU)."""
    import gc

    import torch
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def analyze_models(base, other, out, convs, swap, backbone="") -> tuple[list[str], str]:
    """``wadi analyze`` of two models; returns its plots and report."""
    from wadi_core.analysis import Swap, analyze

    other_path = Path((other or "").strip()).expanduser().resolve()
    if not (other or "").strip() or not other_path.exists():
        raise UIError(f"the second model {other!r} does not exist; give a folder, a checkpoint or an adapter file")
    folder = analyze(model_path(base), other_path, output_folder(out), convs, Swap(enabled=bool(swap), num_prompts=64),
                     overwrite=True, progress=False, backbone=optional_file(backbone, "replacement UNet"))
    plots = [str(folder / name) for name in ("changes.png", "svd_energy.png", "swap.png", "swap_samples.png")
             if (folder / name).is_file()]
    return plots, (folder / "report.md").read_text()


def controlnet_images(model, adapter, controlnet, control, prompt, seed, compare, backbone="",
                      device="auto") -> tuple[list, str]:
    """One-step ControlNet images with a student (and the teacher's 25 steps beside them), on ``device`` as in
    :func:`generate_images`."""
    from wadi_core.tasks import controlnet as C

    if control is None:
        raise UIError("upload a control image first (for the built-in ControlNet: white shapes on black)")
    if not (prompt or "").strip():
        raise UIError("write a prompt first")
    folder = Path((controlnet or "").strip() or SHAPES_CONTROLNET).expanduser()
    if not (folder / "config.json").is_file():
        raise UIError(f"{folder} is not a ControlNet folder (no config.json)")
    backbone = optional_file(backbone, "replacement UNet")
    adapter_path = Path((adapter or "").strip()).expanduser()
    if not backbone and not adapter_path.is_file():
        raise UIError(f"the student {adapter_path} does not exist; give the student.safetensors of a distillation "
                      "(or a released UNet as the replacement)")
    hint = np.asarray(control)[None, ..., :3].astype(np.uint8)
    adapters = [(adapter_path, 1.0)] if (adapter or "").strip() else []
    model, net = model_path(model), C.load_controlnet(folder)
    return drawn_on(device, lambda where: _draw_controlled(model, adapters, backbone, net, hint, prompt.strip(),
                                                           int(seed or 0), compare, where))


def _draw_controlled(model, adapters, backbone, net, hint, prompt, seed, compare, device):
    from wadi_core.sampling import Controlled, MultiStep, build_generator

    placed = dict(device=device, dtype="auto")
    student = build_generator(model, adapters, one_step=True, backbone=backbone, **placed)
    start = time.perf_counter()
    image = student([prompt], [seed], Controlled(net, hint))
    gallery = [(image[0], "student, one step")]
    text = f"one step with ControlNet on {device}: {time.perf_counter() - start:.2f} s"
    del student
    if compare:
        teacher = build_generator(model, **placed)
        start = time.perf_counter()
        reference = teacher([prompt], [seed], Controlled(net, hint, MultiStep()))
        gallery.append((reference[0], "teacher, 25 steps"))
        text += f"; teacher 25 steps: {time.perf_counter() - start:.2f} s"
    return gallery, text
