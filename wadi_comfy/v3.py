"""The same nodes for ComfyUI's V3 node API (``comfy_api``), with the same node ids.

Generated from the V1 definitions in ``nodes.py`` so that the two never drift apart; each V3
node calls its V1 twin. ComfyUI 0.3.75 loads the V1 mappings when a pack has both; ComfyUIs that
prefer V3 use ``comfy_entrypoint``.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WIDGETS = {"INT": io.Int, "FLOAT": io.Float, "STRING": io.String, "BOOLEAN": io.Boolean}
SOCKETS = {"MODEL": io.Model, "CLIP": io.Clip, "VAE": io.Vae, "CONDITIONING": io.Conditioning,
           "LATENT": io.Latent, "SIGMAS": io.Sigmas, "STRING": io.String, "IMAGE": io.Image}
WIDGET_OPTIONS = {"INT": ("default", "min", "max", "step", "tooltip", "control_after_generate"),
                  "FLOAT": ("default", "min", "max", "step", "tooltip"),
                  "STRING": ("default", "multiline", "tooltip"), "BOOLEAN": ("default", "tooltip")}
V3_NAMES = {"forceInput": "force_input"}


def _input(name: str, spec: tuple, optional: bool = False):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        return io.Combo.Input(name, options=kind, tooltip=options.get("tooltip"), optional=optional)
    if kind in WIDGETS:
        return WIDGETS[kind].Input(name, optional=optional,
                                   **{k: options[k] for k in WIDGET_OPTIONS[kind] if k in options},
                                   **{V3_NAMES[k]: v for k, v in options.items() if k in V3_NAMES})
    return SOCKETS[kind].Input(name, tooltip=options.get("tooltip"), optional=optional)


def v3_node(node_id: str, v1: type) -> type:
    class Node(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            names = getattr(v1, "RETURN_NAMES", v1.RETURN_TYPES)
            return io.Schema(node_id=node_id, display_name=NODE_DISPLAY_NAME_MAPPINGS[node_id],
                             category=v1.CATEGORY, description=v1.DESCRIPTION,
                             inputs=[_input(n, s) for n, s in v1.INPUT_TYPES()["required"].items()]
                             + [_input(n, s, True) for n, s in v1.INPUT_TYPES().get("optional", {}).items()],
                             outputs=[SOCKETS[t].Output(display_name=n) for t, n in zip(v1.RETURN_TYPES, names)],
                             is_output_node=getattr(v1, "OUTPUT_NODE", False))

        @classmethod
        def execute(cls, **inputs) -> io.NodeOutput:
            result = getattr(v1(), v1.FUNCTION)(**inputs)
            return io.NodeOutput.from_dict(result) if isinstance(result, dict) else io.NodeOutput(*result)

    Node.__name__ = Node.__qualname__ = f"{node_id}V3"
    return Node


class WaDiExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [v3_node(node_id, v1) for node_id, v1 in NODE_CLASS_MAPPINGS.items()]


async def comfy_entrypoint() -> WaDiExtension:
    return WaDiExtension()
