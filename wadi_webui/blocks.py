"""The WaDi Gradio Blocks: tabs Distill, Generate, ControlNet, ReVersion, DreamBooth and Analyze.

Shared by ``wadi ui`` (standalone, newest gradio) and the AUTOMATIC1111 (gradio 3.41) / Forge
(gradio 4.40) extension, so it uses only what all three provide: Blocks, Tab, Row, Column,
Textbox, Number, Dropdown, Checkbox, Button, Image, Gallery, Markdown, ``click`` events and
generator handlers for live progress (no Timer, no ``every=``, no ``.style()``).
"""

from __future__ import annotations

import time

from wadi_core import students

from . import actions

POLL_SECONDS = 1.0


def _error(err: Exception) -> str:
    return f"**Error:** {err}"


def _showing_errors(function, empty=None):
    """``function`` for an event: a user error becomes its message in the page (after ``empty`` outputs)."""
    def call(*values):
        try:
            return function(*values)
        except actions.user_errors() as err:
            return _error(err) if empty is None else (empty, _error(err))
    return call


def _watch(job, out):
    """Yield (status, loss plot, sample grid) about once a second until the run ends."""
    while True:
        loss, grid = actions.run_files(out)
        yield actions.progress_text(job), loss, grid
        if job.state.done:
            return
        time.sleep(POLL_SECONDS)


def _watch_command(start, files):
    """An event handler: start a command job, then yield (status, gallery of ``files`` that exist) about once a
    second until it ends."""
    def handler(*values):
        try:
            job = start(*values)
        except actions.user_errors() as err:
            yield _error(err), []
            return
        while True:
            yield actions.progress_text(job), actions.existing_files(job.out, files)
            if job.state.done:
                return
            time.sleep(POLL_SECONDS)
    return handler


def backbone_field(gr):
    """The optional replacement of a model's whole UNet (the authors' released one-step models)."""
    return gr.Textbox(label="Replacement UNet (optional)",
                      info="a state dict of the whole UNet that replaces the model's, e.g. the authors' "
                           "rotated_unet-sdv1-5.safetensors, or on the Hugging Face Hub "
                           "gudaochangsheng/WaDi/rotated_unet-sdv1-5.safetensors")


def model_field(gr, models, label: str = "Model (the teacher)",
                info: str = "a diffusers folder, a .safetensors file or a Hugging Face Hub id (owner/name); empty "
                            "or 'embedded' for the built-in shapes model", **options):
    """A model's path: typed in standalone; inside A1111 / Forge also picked from the host's checkpoint files
    (``models``), a typed path still being taken."""
    if models is None:
        return gr.Textbox(label=label, value=actions.EMBEDDED, info=info, **options)
    return gr.Dropdown([actions.EMBEDDED, *models], value=actions.EMBEDDED, label=label, info=info,
                       allow_custom_value=True, **options)


def device_field(gr):
    """Where a tab draws or trains (``wadi generate --device``)."""
    return gr.Dropdown(["auto", "cpu", "cuda"], value="auto", label="Device", allow_custom_value=True,
                       info="auto: a CUDA GPU when torch sees one (the UNet in fp16 there), else the CPU; also cuda:N "
                            "or mps")


def distill_tab(gr, models=None) -> None:
    with gr.Row():
        with gr.Column():
            teacher = model_field(gr, models)
            teacher_unet = backbone_field(gr)
            prompts_path = gr.Textbox(label="Prompt file", placeholder="prompts.txt (one per line, or JSONL)")
            pasted = gr.Textbox(label="...or paste prompts, one per line", lines=4)
            # the fields start at the embedded teacher's recipe and follow the recipe of the teacher chosen
            d = dict(zip(actions.RECIPE_FIELDS, actions.recipe_fields(actions.EMBEDDED, "lorad", "lorad")))
            with gr.Row():
                student = gr.Dropdown(list(students.KINDS), value="lorad", label="Student adapter kind")
                student_rank = gr.Number(value=d["student_rank"], precision=0, label="Student rank",
                                         elem_id="wadi_student_rank")
                fake = gr.Dropdown(list(students.KINDS), value="lorad", label="Fake model adapter kind")
                fake_rank = gr.Number(value=d["fake_rank"], precision=0, label="Fake model rank")
            with gr.Row():
                steps = gr.Number(value=d["steps"], precision=0, label="Steps", elem_id="wadi_steps")
                lr_student = gr.Number(value=d["lr_student"], label="Student learning rate")
                lr_fake = gr.Number(value=d["lr_fake"], label="Fake model learning rate")
                guidance = gr.Number(value=d["guidance"], label="Guidance (teacher)")
                fake_guidance = gr.Number(value=d["fake_guidance"], label="Guidance (fake model)",
                                          info="1: the student aims at the teacher's guided images (DMD2); "
                                               "= the teacher's: the paper's script")
            out = gr.Textbox(label="Output folder", value="wadi-ui-run", elem_id="wadi_distill_out")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="wadi_start")
                stop = gr.Button("Stop", elem_id="wadi_stop")
                resume = gr.Button("Resume", elem_id="wadi_resume")
        with gr.Column():
            status = gr.Markdown("idle", elem_id="wadi_distill_status")
            samples = gr.Image(label="Teacher (25 steps) vs student (1 step), latest", type="filepath",
                               interactive=False, elem_id="wadi_samples")
            loss = gr.Image(label="Losses", type="filepath", interactive=False, elem_id="wadi_loss")
            with gr.Row():
                merge = gr.Button("Merge into the teacher", elem_id="wadi_merge")
                lora_rank = gr.Number(value=64, precision=0, label="LoRA rank")
                export = gr.Button("Export as LoRA", elem_id="wadi_export")
            after = gr.Markdown("", elem_id="wadi_after")

    settings = [teacher, prompts_path, pasted, student, student_rank, fake, fake_rank, steps, lr_student, lr_fake,
                guidance, fake_guidance, out, teacher_unet]

    def launch(resume_run, *values):
        *fields, backbone = values
        try:
            job = actions.start_distillation(*fields, resume=resume_run, backbone=backbone)
        except actions.user_errors() as err:
            yield _error(err), None, None
            return
        yield from _watch(job, fields[-1])

    def on_start(*values):
        yield from launch(False, *values)

    def on_resume(*values):
        yield from launch(True, *values)

    def on_stop(out_text):
        job = actions.DistillJob.find(out_text or "")
        if job is None or job.state.done:
            return "no run is training in this output folder"
        job.stop()
        return "stopping after the current step (a checkpoint is written; Resume continues it)"

    teacher.blur(actions.recipe_fields, inputs=[teacher, student, fake],
                 outputs=[student_rank, fake_rank, steps, lr_student, lr_fake, guidance, fake_guidance])
    student.change(lambda kind, model: actions.learning_rate_for("student", kind, model), inputs=[student, teacher],
                   outputs=[lr_student])
    fake.change(lambda kind, model: actions.learning_rate_for("fake", kind, model), inputs=[fake, teacher],
                outputs=[lr_fake])
    start.click(on_start, inputs=settings, outputs=[status, loss, samples])
    resume.click(on_resume, inputs=settings, outputs=[status, loss, samples])
    stop.click(on_stop, inputs=[out], outputs=[after], queue=False)  # never waits behind a running Start
    merge.click(_showing_errors(actions.merge_student), inputs=[out, teacher], outputs=[after])
    export.click(_showing_errors(actions.export_lora_file), inputs=[out, teacher, lora_rank], outputs=[after])


def generate_tab(gr, models=None) -> None:
    with gr.Row():
        with gr.Column():
            model = model_field(gr, models, "Model", "the teacher (a diffusers folder, a .safetensors file or a "
                                                     "Hub id) or a merged student", elem_id="wadi_model")
            unet = backbone_field(gr)
            adapters = gr.Textbox(label="Students / LoRaD adapters, one per line (path or path:strength)", lines=3,
                                  elem_id="wadi_adapters")
            prompt = gr.Textbox(label="Prompt", value="a red circle", elem_id="wadi_prompt")
            embeddings = gr.Textbox(label="Learned tokens (reversion.safetensors or textual-inversion files), one per "
                                          "line", lines=2, elem_id="wadi_embeddings")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed")
                batch = gr.Number(value=4, precision=0, label="Images")
                compare = gr.Checkbox(value=False, label="Also the multi-step teacher (25 steps, guidance 3)")
                twice = gr.Checkbox(value=False, label="2x size (one step, upscale, 4 teacher steps)")
            device = device_field(gr)
            run = gr.Button("Generate", variant="primary", elem_id="wadi_generate")
            with gr.Accordion("One step in AUTOMATIC1111 / Forge txt2img", open=False, elem_id="wadi_a1111_recipe"):
                gr.Markdown(actions.a1111_recipe_markdown())
        with gr.Column():
            timing = gr.Markdown("", elem_id="wadi_generate_status")
            gallery = gr.Gallery(label="One-step images", elem_id="wadi_gallery")

    run.click(_showing_errors(actions.generate_images, empty=[]),
              inputs=[model, adapters, prompt, seed, batch, compare, twice, embeddings, unet, device],
              outputs=[gallery, timing])


def controlnet_tab(gr, models=None) -> None:
    with gr.Row():
        with gr.Column():
            model = model_field(gr, models)
            unet = backbone_field(gr)
            adapter = gr.Textbox(label="Student (student.safetensors of a distillation; empty with a replacement "
                                       "UNet)", elem_id="wadi_cn_student")
            controlnet = gr.Textbox(label="ControlNet folder (empty: the built-in silhouette ControlNet)")
            control = gr.Image(label="Control image", type="numpy", elem_id="wadi_cn_control")
            prompt = gr.Textbox(label="Prompt", value="a red circle")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed")
                compare = gr.Checkbox(value=True, label="Also the teacher (25 steps)")
            device = device_field(gr)
            run = gr.Button("Generate with ControlNet", variant="primary", elem_id="wadi_cn_generate")
        with gr.Column():
            timing = gr.Markdown("", elem_id="wadi_cn_status")
            gallery = gr.Gallery(label="Images", elem_id="wadi_cn_gallery")

    run.click(_showing_errors(actions.controlnet_images, empty=[]),
              inputs=[model, adapter, controlnet, control, prompt, seed, compare, unet, device],
              outputs=[gallery, timing])


def reversion_tab(gr, models=None) -> None:
    from wadi_core.shapes.novel import NOVEL_RELATIONS
    with gr.Row():
        with gr.Column():
            model = model_field(gr, models)
            unet = backbone_field(gr)
            exemplars = gr.Textbox(label="Exemplar folder (images + text.json with <R> in every caption)",
                                   info="empty: render an embedded relation", elem_id="wadi_rev_exemplars")
            relation = gr.Dropdown(list(NOVEL_RELATIONS), value="larger", label="Embedded relation")
            with gr.Row():
                token = gr.Textbox(label="Token", value="<R>")
                init = gr.Textbox(label="Initialiser word (empty: the relation's)")
                steps = gr.Number(value=400, precision=0, label="Steps", elem_id="wadi_rev_steps")
            out = gr.Textbox(label="Output folder", value="wadi-ui-reversion", elem_id="wadi_rev_out")
            device = device_field(gr)
            run = gr.Button("Learn the relation", variant="primary", elem_id="wadi_rev_start")
            gr.Markdown("Then use the token in the Generate tab: add `OUT/reversion.safetensors` under learned "
                        "tokens and write it in the prompt. ComfyUI: copy `OUT/embeddings/wadi_relation.safetensors` "
                        "to models/embeddings and write `embedding:wadi_relation`.")
        with gr.Column():
            status = gr.Markdown("", elem_id="wadi_rev_status")
            gallery = gr.Gallery(label="Exemplars and the teacher with the token; loss", elem_id="wadi_rev_gallery")

    run.click(_watch_command(actions.start_reversion, ["samples.png", "loss.png", "exemplars/00.png"]),
              inputs=[model, exemplars, relation, token, init, steps, out, unet, device], outputs=[status, gallery])


def dreambooth_tab(gr, models=None) -> None:
    from wadi_core.shapes import novel
    with gr.Row():
        with gr.Column():
            model = model_field(gr, models)
            unet = backbone_field(gr)
            instance = gr.Textbox(label="Subject images folder (3-8 images)", info="empty: the embedded subject, "
                                  "an orange diamond", elem_id="wadi_db_instance")
            with gr.Row():
                instance_prompt = gr.Textbox(label="Instance prompt", value=novel.INSTANCE_PROMPT)
                class_prompt = gr.Textbox(label="Class prompt (empty: no prior preservation)",
                                          value=novel.CLASS_PROMPT)
            student = gr.Textbox(label="Student (generates the class images in one step; optional)",
                                 elem_id="wadi_db_student")
            with gr.Row():
                adapter = gr.Dropdown(["lorad", "lora", "full"], value="lorad", label="Subject adapter kind")
                rank = gr.Number(value=8, precision=0, label="Rank")
                steps = gr.Number(value=300, precision=0, label="Steps", elem_id="wadi_db_steps")
            out = gr.Textbox(label="Output folder", value="wadi-ui-dreambooth", elem_id="wadi_db_out")
            device = device_field(gr)
            run = gr.Button("Train the subject", variant="primary", elem_id="wadi_db_start")
            gr.Markdown("Then stack `OUT/subject.safetensors` after the student in the Generate tab (LoRaD angles "
                        "add), or load it with WaDi Load LoRaD in ComfyUI.")
        with gr.Column():
            status = gr.Markdown("", elem_id="wadi_db_status")
            gallery = gr.Gallery(label="Subject images, then the trained model; loss", elem_id="wadi_db_gallery")

    run.click(_watch_command(actions.start_dreambooth, ["samples.png", "loss.png"]),
              inputs=[model, instance, instance_prompt, class_prompt, student, adapter, rank, steps, out, unet,
                      device],
              outputs=[status, gallery])


def analyze_tab(gr, models=None) -> None:
    with gr.Row():
        with gr.Column():
            base = model_field(gr, models)
            unet = backbone_field(gr)
            other = gr.Textbox(label="Other model (folder, checkpoint, a student / adapter file for the base, or a "
                                     "released UNet)", elem_id="wadi_analyze_other")
            out = gr.Textbox(label="Output folder", value="wadi-ui-analysis")
            with gr.Row():
                convs = gr.Checkbox(value=False, label="Also convolutions")
                swap = gr.Checkbox(value=True, label="Swap ablation (samples both swaps)")
            run = gr.Button("Analyze", variant="primary", elem_id="wadi_analyze")
        with gr.Column():
            report = gr.Markdown("", elem_id="wadi_analyze_report")
            plots = gr.Gallery(label="Plots", elem_id="wadi_analyze_plots")

    run.click(_showing_errors(actions.analyze_models, empty=[]),
              inputs=[base, other, out, convs, swap, unet], outputs=[plots, report])


def build_blocks(models=None):
    """The WaDi Blocks (call ``.queue()`` before launching standalone; A1111/Forge queue themselves). ``models``: a
    function listing the host's checkpoint files, offered in every model field (A1111 / Forge)."""
    models = sorted(models()) if models else None
    import gradio as gr

    with gr.Blocks(title="WaDi") as blocks:
        gr.Markdown("## WaDi: one-step distillation with LoRaD")
        with gr.Tab("Distill"):
            distill_tab(gr, models)
        with gr.Tab("Generate"):
            generate_tab(gr, models)
        with gr.Tab("ControlNet"):
            controlnet_tab(gr, models)
        with gr.Tab("ReVersion"):
            reversion_tab(gr, models)
        with gr.Tab("DreamBooth"):
            dreambooth_tab(gr, models)
        with gr.Tab("Analyze"):
            analyze_tab(gr, models)
    return blocks
