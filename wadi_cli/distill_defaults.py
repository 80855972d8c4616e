"""The defaults of ``wadi distill``, apart so that the UI reads them without importing torch or diffusers
(an A1111 host may carry a huggingface_hub too old for our diffusers)."""

# Paper defaults (SD1.5 / SD2.1) and the smaller ones of the embedded world. None in a config means
# "the default for this teacher".
PAPER_DEFAULTS = dict(student_rank=256, fake_rank=32, lr_student=1e-4, lr_fake=1e-2, guidance=1.5, batch_size=128,
                      steps=20000, sample_guidance=7.5, fake_updates=1, ema=0.0, late_fraction=0.0)
# The embedded world's budget is 15 CPU minutes; three fake updates per student step over 600 steps beat
# one update over 900 steps in the same time, an EMA of the student (decay 0.99) lowered FID by a fifth
# in two seeds of the same run, and an unguided fake model with the teacher at CFG 2 raised shape accuracy
# by 11-12 points in two seeds with FID under 2x the teacher's; 800 steps whose last 300 draw the gradient's
# timesteps from t <= 400 only (colour is decided at low noise) beat 600 full-range steps on colour, position
# and FID (docs/results.md, session 14).
EMBEDDED_DEFAULTS = dict(student_rank=24, fake_rank=8, lr_student=5e-3, lr_fake=1e-2, guidance=2.0, fake_guidance=1.0,
                         batch_size=16, steps=800, sample_guidance=3.0, fake_updates=3, ema=0.99, late_fraction=0.375,
                         late_t_max=400)

# The learning rates above are LoRaD's (angles). Additive LoRA/DoRA factors and raw weights need smaller steps, so
# another adapter kind takes its own rate unless one is given. Embedded: the students' rates of the adapter ablation
# and the fake models' of session 11 (docs/results.md). Real teachers: DMD2's rate for a fully trained SD1.5 UNet;
# LoRA and DoRA keep the paper's rates there (not measured on SD here).
EMBEDDED_LRS_BY_KIND = {"student": {"lora": 1e-3, "dora": 1e-3, "full": 1e-4},
                        "fake": {"lora": 3e-3, "dora": 3e-3, "full": 5e-4}}
PAPER_LRS_BY_KIND = {"student": {"full": 1e-5}, "fake": {"full": 1e-5}}


def default_lr(role: str, kind: str, embedded: bool) -> float:
    """The default learning rate of the ``role`` ("student" or "fake") network trained as ``kind``."""
    table, by_kind = (EMBEDDED_DEFAULTS, EMBEDDED_LRS_BY_KIND) if embedded else (PAPER_DEFAULTS, PAPER_LRS_BY_KIND)
    return by_kind[role].get(kind, table[f"lr_{role}"])
