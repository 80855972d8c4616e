"""Write the bundled ComfyUI workflows (UI format, as ComfyUI saves them) and their thumbnails.

    python example_workflows/build.py            # rewrite example_workflows/*.json and *.jpg
    python example_workflows/build.py --check    # fail if the committed files differ (a test runs this)

Each graph is declared once below. ComfyUI's template browser lists a pack's ``example_workflows/`` with
the same-named ``.jpg`` as the thumbnail: a drawing of the graph. File names in the graphs are what users
typically have; the tests put random-weight files under the same names.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
MERGED_CHECKPOINT = "wadi-sd15-merged.safetensors"
STUDENT = "wadi-sd15-student.safetensors"
STYLE = "wadi-style.safetensors"
CONTROLNET = "control_v11p_sd15_canny.safetensors"
CONTROL_IMAGE = "wadi_control_example.png"
SUBJECT_IMAGES = ("wadi_subject_1.png", "wadi_subject_2.png")
EMBEDDING = "wadi_relation"  # models/embeddings/wadi_relation.safetensors, from wadi reversion
RELEASED_UNET = "rotated_unet-sdv1-5.safetensors"  # the authors' released one-step SD1.5 (models/diffusion_models)
EXTRACTED = "wadi-sd15-extracted.safetensors"  # wadi extract of it: a LoRaD adapter (models/loras)
DISTILLED = "wadi_student"  # what WaDi Distill writes to models/loras (as .safetensors) and links on

# For each node type used: its link inputs and outputs as ComfyUI lists them (widgets are given per node).
NODE_SPECS = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "KSamplerSelect": ([], [("SAMPLER", "SAMPLER")]),
    "SamplerCustom": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                      [("output", "LATENT"), ("denoised_output", "LATENT")]),
    "ControlNetLoader": ([], [("CONTROL_NET", "CONTROL_NET")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "ControlNetApplyAdvanced": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                 ("control_net", "CONTROL_NET"), ("image", "IMAGE"), ("vae", "VAE")],
                                [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "WaDiLoadLoRaD": ([("model", "MODEL"), ("adapter_file", "STRING")], [("MODEL", "MODEL")]),
    "WaDiDistill": ([], [("adapter_name", "STRING"), ("preview", "IMAGE")]),
    "WaDiOneStepSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("latent_image", "LATENT")],
                           [("LATENT", "LATENT")]),
    "WaDiOneStepSigmas": ([("model", "MODEL")], [("SIGMAS", "SIGMAS")]),
    "WaDiMergeSave": ([("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE")], []),
    "ImageScaleBy": ([("image", "IMAGE")], [("IMAGE", "IMAGE")]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "ImageBatch": ([("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")]),
    "WaDiTrainLoRaD": ([("model", "MODEL"), ("instance_latents", "LATENT"), ("instance_conditioning", "CONDITIONING"),
                        ("class_latents", "LATENT"), ("class_conditioning", "CONDITIONING")],
                       [("model", "MODEL"), ("adapter_name", "STRING")]),
}
WIDTH = 320


class Graph:
    def __init__(self, name: str, title: str):
        self.name, self.title = name, title
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, kind: str, pos: tuple[int, int], widgets: list | None = None, title: str | None = None,
             **links: tuple[dict, int]) -> dict:
        inputs, outputs = NODE_SPECS[kind]
        node = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": [WIDTH, 60 + 24 * len(widgets or [])],
                "flags": {}, "order": len(self.nodes), "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": kind}, "widgets_values": list(widgets or [])}
        if title:
            node["title"] = title
        for name, (source, slot) in links.items():
            link_id = len(self.links) + 1
            target = next(i for i, (n, _) in enumerate(inputs) if n == name)
            kind_of = source["outputs"][slot]["type"]
            self.links.append([link_id, source["id"], slot, node["id"], target, kind_of])
            source["outputs"][slot]["links"].append(link_id)
            node["inputs"][target]["link"] = link_id
        # unconnected optional inputs (ControlNetApplyAdvanced's vae) are simply left unlinked
        self.nodes.append(node)
        return node

    def to_json(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "wadi": {"title": self.title}}, "version": 0.4}


def _text_to_image_base(g: Graph, checkpoint: str = CHECKPOINT):
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), [checkpoint])
    latent = g.node("EmptyLatentImage", (0, 420), [512, 512, 1])
    return ckpt, latent


def _decode_and_save(g: Graph, latent_out: tuple[dict, int], vae: tuple[dict, int], x: int, prefix: str):
    image = g.node("VAEDecode", (x, 0), samples=latent_out, vae=vae)
    g.node("SaveImage", (x, 140), [prefix], images=(image, 0))


def onestep_lorad() -> Graph:
    g = Graph("wadi_onestep_lorad", "One-step text-to-image with a LoRaD student")
    ckpt, latent = _text_to_image_base(g)
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], model=(ckpt, 0))
    prompt = g.node("CLIPTextEncode", (380, 160), ["a photo of a golden retriever in the snow"], clip=(ckpt, 1))
    sample = g.node("WaDiOneStepSampler", (760, 0), [0, "fixed"], model=(student, 0), positive=(prompt, 0),
                    latent_image=(latent, 0))
    _decode_and_save(g, (sample, 0), (ckpt, 2), 1140, "wadi/onestep")
    return g


def onestep_merged() -> Graph:
    g = Graph("wadi_onestep_merged", "One step with a merged WaDi checkpoint (SamplerCustom + WaDi sigmas)")
    ckpt, latent = _text_to_image_base(g, MERGED_CHECKPOINT)
    prompt = g.node("CLIPTextEncode", (380, 0), ["a photo of a golden retriever in the snow"], clip=(ckpt, 1))
    negative = g.node("CLIPTextEncode", (380, 200), [""], title="Negative (unused at CFG 1)", clip=(ckpt, 1))
    sigmas = g.node("WaDiOneStepSigmas", (380, 400), model=(ckpt, 0))
    sampler = g.node("KSamplerSelect", (380, 520), ["euler"])
    sample = g.node("SamplerCustom", (760, 0), [True, 0, "fixed", 1.0], model=(ckpt, 0), positive=(prompt, 0),
                    negative=(negative, 0), sampler=(sampler, 0), sigmas=(sigmas, 0), latent_image=(latent, 0))
    _decode_and_save(g, (sample, 1), (ckpt, 2), 1140, "wadi/merged")
    return g


def lorad_stack() -> Graph:
    g = Graph("wadi_lorad_stack", "Stacking LoRaD adapters with strengths (their angles add)")
    ckpt, latent = _text_to_image_base(g)
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], model=(ckpt, 0))
    style = g.node("WaDiLoadLoRaD", (380, 140), [STYLE, 0.6], model=(student, 0))
    prompt = g.node("CLIPTextEncode", (380, 280), ["a watercolor painting of a lighthouse"], clip=(ckpt, 1))
    sample = g.node("WaDiOneStepSampler", (760, 0), [0, "fixed"], model=(style, 0), positive=(prompt, 0),
                    latent_image=(latent, 0))
    _decode_and_save(g, (sample, 0), (ckpt, 2), 1140, "wadi/stack")
    return g


def onestep_controlnet() -> Graph:
    g = Graph("wadi_onestep_controlnet", "One-step ControlNet with ComfyUI's own Apply ControlNet node")
    ckpt, latent = _text_to_image_base(g)
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], model=(ckpt, 0))
    prompt = g.node("CLIPTextEncode", (380, 160), ["a modern house at dusk"], clip=(ckpt, 1))
    negative = g.node("CLIPTextEncode", (380, 360), [""], title="Negative (unused at CFG 1)", clip=(ckpt, 1))
    control = g.node("ControlNetLoader", (0, 600), [CONTROLNET])
    hint = g.node("LoadImage", (0, 720), [CONTROL_IMAGE, "image"], title="Control image (e.g. canny edges)")
    applied = g.node("ControlNetApplyAdvanced", (760, 300), [1.0, 0.0, 1.0], positive=(prompt, 0),
                     negative=(negative, 0), control_net=(control, 0), image=(hint, 0))
    sample = g.node("WaDiOneStepSampler", (760, 0), [0, "fixed"], model=(student, 0), positive=(applied, 0),
                    latent_image=(latent, 0))
    _decode_and_save(g, (sample, 0), (ckpt, 2), 1140, "wadi/controlnet")
    return g


def merge_save() -> Graph:
    g = Graph("wadi_merge_save", "Bake a LoRaD student into a checkpoint (ComfyUI and A1111 load it)")
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), [CHECKPOINT])
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], model=(ckpt, 0))
    g.node("WaDiMergeSave", (760, 0), ["checkpoints/wadi-merged"], model=(student, 0), clip=(ckpt, 1), vae=(ckpt, 2))
    return g


def highres_two_stage() -> Graph:
    g = Graph("wadi_highres_two_stage", "2x resolution: one step, upscale, a short refinement by the teacher")
    ckpt, latent = _text_to_image_base(g)
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], model=(ckpt, 0))
    prompt = g.node("CLIPTextEncode", (380, 160), ["a photo of a golden retriever in the snow"], clip=(ckpt, 1))
    negative = g.node("CLIPTextEncode", (380, 360), [""], title="Negative", clip=(ckpt, 1))
    sample = g.node("WaDiOneStepSampler", (760, 0), [0, "fixed"], model=(student, 0), positive=(prompt, 0),
                    latent_image=(latent, 0))
    image = g.node("VAEDecode", (760, 200), samples=(sample, 0), vae=(ckpt, 2))
    bigger = g.node("ImageScaleBy", (760, 320), ["bicubic", 2.0], image=(image, 0))
    encoded = g.node("VAEEncode", (1140, 0), pixels=(bigger, 0), vae=(ckpt, 2))
    refined = g.node("KSampler", (1140, 140), [0, "fixed", 15, 3.0, "ddim", "normal", 0.3],
                     title="Teacher refinement (denoise 0.3)", model=(ckpt, 0), positive=(prompt, 0),
                     negative=(negative, 0), latent_image=(encoded, 0))
    _decode_and_save(g, (refined, 0), (ckpt, 2), 1520, "wadi/highres")
    return g


def reversion_onestep() -> Graph:
    g = Graph("wadi_reversion_onestep", "One step with a ReVersion relation token (a textual-inversion file)")
    ckpt, latent = _text_to_image_base(g)
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], model=(ckpt, 0))
    prompt = g.node("CLIPTextEncode", (380, 160), [f"a cat embedding:{EMBEDDING} a basket"],
                    title="Prompt with the relation (models/embeddings/wadi_relation.safetensors)", clip=(ckpt, 1))
    sample = g.node("WaDiOneStepSampler", (760, 0), [0, "fixed"], model=(student, 0), positive=(prompt, 0),
                    latent_image=(latent, 0))
    _decode_and_save(g, (sample, 0), (ckpt, 2), 1140, "wadi/reversion")
    return g


def dreambooth_train() -> Graph:
    g = Graph("wadi_dreambooth_train", "DreamBooth-LoRaD: train on the subject, class images from the one-step "
                                       "student, then draw the subject in one step")
    ckpt, latent = _text_to_image_base(g)
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], model=(ckpt, 0))
    instance_prompt = g.node("CLIPTextEncode", (380, 160), ["a photo of sks dog"], title="Instance prompt",
                             clip=(ckpt, 1))
    class_prompt = g.node("CLIPTextEncode", (380, 360), ["a photo of a dog"], title="Class prompt", clip=(ckpt, 1))
    first = g.node("LoadImage", (0, 600), [SUBJECT_IMAGES[0], "image"], title="Subject image 1")
    second = g.node("LoadImage", (0, 960), [SUBJECT_IMAGES[1], "image"], title="Subject image 2")
    both = g.node("ImageBatch", (380, 600), image1=(first, 0), image2=(second, 0))
    instance = g.node("VAEEncode", (380, 720), pixels=(both, 0), vae=(ckpt, 2))
    batch = g.node("EmptyLatentImage", (380, 480), [512, 512, 4], title="Class image batch")
    classes = g.node("WaDiOneStepSampler", (760, 360), [1, "fixed"], title="Class images by the one-step student",
                     model=(student, 0), positive=(class_prompt, 0), latent_image=(batch, 0))
    trained = g.node("WaDiTrainLoRaD", (760, 0), [300, 0.005, 8, 2, 0, "fixed", "wadi_dreambooth"],
                     model=(ckpt, 0), instance_latents=(instance, 0), instance_conditioning=(instance_prompt, 0),
                     class_latents=(classes, 0), class_conditioning=(class_prompt, 0))
    subject = g.node("WaDiLoadLoRaD", (1140, 0), [STUDENT, 1.0], title="The student on the trained model",
                     model=(trained, 0))
    prompt = g.node("CLIPTextEncode", (1140, 160), ["a photo of sks dog on the beach"], clip=(ckpt, 1))
    sample = g.node("WaDiOneStepSampler", (1520, 0), [0, "fixed"], model=(subject, 0), positive=(prompt, 0),
                    latent_image=(latent, 0))
    _decode_and_save(g, (sample, 0), (ckpt, 2), 1900, "wadi/dreambooth")
    return g


def released_unet() -> Graph:
    g = Graph("wadi_released_unet", "The authors' released one-step UNet (Load Diffusion Model) with the SD1.5 "
                                    "checkpoint's CLIP and VAE, in one step")
    ckpt, latent = _text_to_image_base(g)
    unet = g.node("UNETLoader", (0, 240), [RELEASED_UNET, "default"], title="Load Diffusion Model (the released UNet)")
    prompt = g.node("CLIPTextEncode", (380, 0), ["a photo of a golden retriever in the snow"], clip=(ckpt, 1))
    sample = g.node("WaDiOneStepSampler", (760, 0), [0, "fixed"], model=(unet, 0), positive=(prompt, 0),
                    latent_image=(latent, 0))
    _decode_and_save(g, (sample, 0), (ckpt, 2), 1140, "wadi/released")
    return g


def extracted_adapter() -> Graph:
    g = Graph("wadi_extracted_adapter", "The released model as a LoRaD adapter (wadi extract), at strengths 1 "
                                        "and 0.5")
    ckpt, latent = _text_to_image_base(g)
    prompt = g.node("CLIPTextEncode", (380, 320), ["a photo of a golden retriever in the snow"], clip=(ckpt, 1))
    for row, strength in enumerate((1.0, 0.5)):
        adapter = g.node("WaDiLoadLoRaD", (380, 160 * row), [EXTRACTED, strength], title=f"LoRaD at {strength}",
                         model=(ckpt, 0))
        sample = g.node("WaDiOneStepSampler", (760, 300 * row), [0, "fixed"], model=(adapter, 0),
                        positive=(prompt, 0), latent_image=(latent, 0))
        image = g.node("VAEDecode", (1140, 300 * row), samples=(sample, 0), vae=(ckpt, 2))
        g.node("SaveImage", (1140, 300 * row + 140), [f"wadi/extracted-{strength}"], images=(image, 0))
    return g


DISTILL_PROMPTS = "\n".join(["a photo of a golden retriever in the snow", "a red vintage car on a city street",
                             "a bowl of ramen, studio lighting", "a watercolor painting of a lighthouse at dusk"])


def distill() -> Graph:
    g = Graph("wadi_distill", "Distil the checkpoint into a one-step LoRaD student (WaDi Distill), then draw with "
                              "it in one step")
    ckpt, latent = _text_to_image_base(g)
    run = g.node("WaDiDistill", (0, 600), [CHECKPOINT, DISTILL_PROMPTS, 0, 0, 0, DISTILLED, True],
                 title="WaDi Distill (the paper's recipe: GPU-days for SD1.5)")
    g.node("SaveImage", (380, 600), ["wadi/distill-preview"], title="Teacher vs student", images=(run, 1))
    student = g.node("WaDiLoadLoRaD", (380, 0), [STUDENT, 1.0], title="WaDi Load LoRaD (the distilled file)",
                     model=(ckpt, 0), adapter_file=(run, 0))
    prompt = g.node("CLIPTextEncode", (380, 200), ["a photo of a golden retriever in the snow"], clip=(ckpt, 1))
    sample = g.node("WaDiOneStepSampler", (760, 0), [0, "fixed"], model=(student, 0), positive=(prompt, 0),
                    latent_image=(latent, 0))
    _decode_and_save(g, (sample, 0), (ckpt, 2), 1140, "wadi/distilled")
    return g


GRAPHS = (onestep_lorad, onestep_merged, lorad_stack, onestep_controlnet, merge_save, highres_two_stage,
          reversion_onestep, dreambooth_train, released_unet, extracted_adapter, distill)


def thumbnail(g: Graph) -> bytes:
    """A drawing of the graph (boxes, titles, widget values, links) as a JPEG."""
    from PIL import Image, ImageDraw

    scale = 0.5
    right = max(n["pos"][0] + n["size"][0] for n in g.nodes)
    bottom = max(n["pos"][1] + n["size"][1] for n in g.nodes)
    image = Image.new("RGB", (int(right * scale) + 40, int(bottom * scale) + 60), (32, 32, 36))
    draw = ImageDraw.Draw(image)
    draw.text((20, 8), g.title, fill=(235, 235, 235))
    boxes = {n["id"]: [20 + n["pos"][0] * scale, 30 + n["pos"][1] * scale,
                       20 + (n["pos"][0] + n["size"][0]) * scale, 30 + (n["pos"][1] + n["size"][1]) * scale]
             for n in g.nodes}
    for _, source, _, target, _, _ in g.links:
        a, b = boxes[source], boxes[target]
        draw.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(120, 170, 220), width=2)
    for n in g.nodes:
        box = boxes[n["id"]]
        ours = n["type"].startswith("WaDi")
        draw.rectangle(box, fill=(70, 45, 95) if ours else (55, 55, 60), outline=(200, 200, 200))
        draw.text((box[0] + 4, box[1] + 3), n.get("title", n["type"])[:26], fill=(255, 255, 255))
        for i, value in enumerate(n["widgets_values"][:3]):
            draw.text((box[0] + 4, box[1] + 16 + 11 * i), str(value)[:26], fill=(190, 190, 190))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def render_all() -> dict[Path, bytes]:
    files = {}
    for build in GRAPHS:
        g = build()
        text = json.dumps(g.to_json(), indent=1) + "\n"
        files[HERE / f"{g.name}.json"] = text.encode()
        files[HERE / f"{g.name}.jpg"] = thumbnail(g)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    files = render_all()
    if args.check:
        stale = [p.name for p, data in files.items() if not p.is_file() or
                 (p.suffix == ".json" and p.read_bytes() != data)]
        if stale:
            print(f"out of date: {', '.join(stale)}; run python example_workflows/build.py", file=sys.stderr)
            return 1
        return 0
    for path, data in files.items():
        path.write_bytes(data)
    print(f"wrote {len(files)} files to {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
