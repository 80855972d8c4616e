"""WaDi core library: LoRaD adapters, rotation merge, key conversion and (later) distillation."""

__version__ = "0.1.0"
