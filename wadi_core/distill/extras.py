"""The terms of a distillation that are not WaDi's, behind one seam: DMD's regression loss and DMD2's GAN term.

The trainer calls :class:`Extras` at four places of a step (the batch, the student's loss, the fake model's
inputs and loss, the record) and reads the same whether a term is on or not: with both off every hook returns
what it was given. Neither term helped on the embedded world (docs/lab/results.md); both are kept because they are
the published recipes' (DMD's and DMD2's) for real teachers, where they are measured to matter.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..images import read_image_folder
from ..models import encode
from ..sampling import image_size, initial_latents, sample_latents
from . import gan, losses

# Regression pairs' seeds start here, away from the seeds of sample grids and evaluations.
PAIR_SEED_OFFSET = 10_000_000


class Extras:
    def __init__(self, trainer):
        self.trainer = trainer
        c = trainer.config.extras
        self.regression = c.regression if c.regression.pairs else None
        self.gan = c.gan if c.gan.weight else None
        self.pairs = None
        self.head = self.tap = self.real = None
        self._real_batch = None

    # ----- set-up

    def fake_param_groups(self, device) -> list[dict]:
        """The GAN head's parameters, trained in the fake model's optimiser at their own rate."""
        if self.gan is None:
            return []
        t = self.trainer
        torch.manual_seed(t.config.seed + 1)
        self.tap = gan.FeatureTap(t.fake, self.gan.features)
        self.head = gan.DiscriminatorHead(gan.feature_channels(t.fake, self.gan.features),
                                          tokens=gan.reads_tokens(t.fake)).to(device).train()
        return [{"params": list(self.head.parameters()), "lr": self.gan.head_lr}]

    def prepare(self, accelerator) -> None:
        """The head's gradients are averaged across processes too: under DDP it is wrapped like the fake model; under
        FSDP, which shards the backbones, the small head stays whole in every process behind a DDP wrapper of its
        own."""
        if self.head is None:
            return
        if self.trainer.sharded:  # (set only with several processes)
            self.head = torch.nn.parallel.DistributedDataParallel(self.head)
        else:
            self.head = accelerator.prepare(self.head)

    def check_prompts(self) -> None:
        """Before the teacher is loaded: the GAN term needs real images, the world's renders of each batch's prompts
        (every prompt must be one it can draw) or ``--gan-images``."""
        t = self.trainer
        if self.gan is None or self.gan.images:
            return
        if not t.world.has_images:
            raise ValueError("the GAN term needs real images for this teacher: pass --gan-images FOLDER (PNG/JPEG, "
                             "captions in same-named .txt files), or --gan-weight 0")
        for prompt in t.prompts:
            if not t.world.can_render(prompt):
                raise ValueError(f"the GAN term renders real images of the prompts, but '{prompt}' is not a prompt "
                                 f"of {t.world.name}; use its training prompts, pass --gan-images, or --gan-weight 0")

    def load_real_images(self) -> None:
        """``--gan-images`` as uint8 images at the teacher's size, with the captions of same-named .txt files."""
        if self.gan is None or not self.gan.images:
            return
        t = self.trainer
        names, images = read_image_folder(self.gan.images, image_size(t.teacher))
        folder = Path(self.gan.images)
        sidecars = [(folder / name).with_suffix(".txt") for name in names]
        captions = [path.read_text().strip() if path.is_file() else "" for path in sidecars]
        t.log(f"GAN term: {len(names)} real images from {folder}, {sum(map(bool, captions))} with captions")
        self.real = {"images": images, "captions": captions}

    def captions(self) -> list[str]:
        """Captions whose text embeddings the run should compute once, with its prompts'."""
        return self.real["captions"] if self.real else []

    @torch.no_grad()
    def make_pairs(self) -> None:
        """(noise, prompt, teacher latent) triples for the regression loss, deterministic from the seed (a resumed
        run makes the same ones again)."""
        if self.regression is None:
            return
        t, n = self.trainer, self.regression.pairs
        rng = np.random.default_rng([t.config.seed, 7])
        prompts = [t.prompts[i] for i in rng.integers(len(t.prompts), size=n)]
        seeds = [PAIR_SEED_OFFSET + t.config.seed * n + i for i in range(n)]
        t.log(f"making {len(prompts)} teacher samples for the regression loss")
        latents = sample_latents(t.teacher, prompts, seeds, steps=25, guidance=t.config.guidance,
                                 progress=t.progress)
        self.pairs = {"prompts": prompts, "noise": initial_latents(seeds, t.shape), "latents": latents.float().cpu()}

    # ----- the step

    def edit_batch(self, prompts: list[str], z: torch.Tensor, rng: np.random.Generator) -> np.ndarray | None:
        """DMD's pairs take the first places of the batch (their prompts and noise); returns which pairs."""
        if self.pairs is None:
            return None
        pick = rng.integers(self.regression.pairs, size=max(1, len(prompts) // 4))
        prompts[:len(pick)] = [self.pairs["prompts"][i] for i in pick]
        z[:len(pick)] = self.pairs["noise"][pick]
        return pick

    def student_loss(self, x0, noise, t, cond, pick) -> tuple[torch.Tensor | None, dict]:
        """The weighted sum of the student's extra terms (None when none is on) and their values."""
        total, record = None, {}
        if self.gan is not None:
            loss = self._gan_generator_loss(x0, noise, t, cond)
            total, record["loss_gan"] = self.gan.weight * loss, loss.item()
        if pick is not None:
            target = self.pairs["latents"][pick].to(x0.device)
            loss = losses.regression_loss(x0[:len(pick)], target)
            weighted = self.regression.weight * loss
            total = weighted if total is None else total + weighted
            record["loss_regression"] = loss.item()
        return total, record

    def _gan_generator_loss(self, x0, noise, t, cond) -> torch.Tensor:
        """The student's GAN loss on its noised x0, through the frozen fake model's features and the head."""
        tr = self.trainer
        fake = tr.accelerator.unwrap_model(tr.fake)  # no DDP: no fake weight takes a gradient here
        x_t = tr.teacher.scheduler.add_noise(x0, noise, t.cpu())
        with gan.frozen(tr.fake_params), self.tap.capture(), tr.accelerator.autocast():
            dtype = next(fake.parameters()).dtype
            fake(x_t.to(dtype), t, cond.to(dtype))
            return gan.generator_loss(self.unwrapped_head()(self.tap.features))

    def unwrapped_head(self):
        return self.trainer.accelerator.unwrap_model(self.head)

    @torch.no_grad()
    def before_fake_updates(self, prompts: list[str], gen: torch.Generator) -> None:
        """A batch of real latents and their text embeddings for the discriminator (the first fake update's)."""
        if self.gan is None:
            return
        t, n = self.trainer, len(prompts)
        if self.real is None:  # the world's renders of this batch's own prompts
            rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=gen)))
            images, captions = t.world.render(prompts, rng), prompts
        else:
            pick = torch.randint(len(self.real["captions"]), (n,), generator=gen).tolist()
            images, captions = self.real["images"][pick], [self.real["captions"][i] for i in pick]
        self._real_batch = (encode(t.teacher, images).float(), t.embed(captions))

    def fake_inputs(self, x_t, t, cond_f, noise, drop, first: bool):
        """The fake model's batch: with the GAN term, its first update also sees the real latents, noised alike."""
        if self.gan is None or not first:
            return x_t, t, cond_f
        tr = self.trainer
        latents, embeddings = self._real_batch
        null = tr.null.expand(len(x_t), -1, -1)
        real_noisy = tr.teacher.scheduler.add_noise(latents.to(x_t.device), noise, t.cpu()).to(x_t.device)
        real_cond = torch.where(drop[:, None, None], null, embeddings)
        return torch.cat([x_t, real_noisy]), torch.cat([t, t]), torch.cat([cond_f, real_cond])

    def capture(self, first: bool):
        return self.tap.capture() if self.gan is not None and first else contextlib.nullcontext()

    def fake_loss(self, first: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The discriminator's weighted loss on the captured features (None unless the GAN term's first update),
        and its value."""
        if self.gan is None or not first:
            return None, torch.zeros(())
        student_logits, real_logits = self.head(self.tap.features).chunk(2)
        loss = gan.discriminator_loss(real_logits, student_logits)
        return self.gan.disc_weight * loss, loss

    # ----- bookkeeping

    def logged(self) -> tuple[str, ...]:
        return (("loss_regression",) if self.regression else ()) + \
            (("loss_gan", "loss_discriminator") if self.gan else ())

    def curves(self, history: list[dict]) -> dict[str, list[float]]:
        names = {"loss_regression": "regression loss", "loss_gan": "GAN loss (student)",
                 "loss_discriminator": "discriminator loss"}
        return {names[k]: [r[k] for r in history] for k in self.logged()}

    def state(self) -> dict:
        return {"gan_head": self.unwrapped_head().state_dict() if self.head is not None else None}

    def load_state(self, state: dict) -> None:
        if self.head is not None:
            own = self.unwrapped_head().state_dict()  # (checkpoints before 2026-12-07 hold both kinds of head)
            self.unwrapped_head().load_state_dict({key: state["gan_head"][key] for key in own})
