"""A job in the order of Forge's process_images_inner (modules/processing.py, dfdcbab6):

before_process → setup prompts → process → per batch: forge_model_reload(), ``forge_objects`` = a shallow copy of
``forge_objects_original``, before_process_batch, parse tags, extra networks activate,
``forge_objects`` = a shallow copy of ``forge_objects_after_applying_lora``, process_batch, conditioning (the text
encoder's patcher loaded first; conditionings cached on the class as Forge caches them), sampling (the UNet's
patcher loaded first; the per-step callback at each step) → extra networks deactivate → postprocess.

The "image" is what a tiny sampler computes with the model's real layers (as in ../webui_stub)."""

import types
import zlib

import torch
from backend import memory_management

from modules import extra_networks, infotext_utils, script_callbacks, sd_models, shared
from modules.sd_models import forge_model_reload  # by name, as Forge's processing.py imports it

TE_LAYER = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj"
Q_LAYER = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"
K_LAYER = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"


class Processed:
    def __init__(self, p, images, infotexts):
        self.images, self.infotexts, self.comments = images, infotexts, "\n".join(p.comments)


class StableDiffusionProcessing:
    cached_c = [None, None]  # noqa: RUF012 (Forge keeps its conditioning cache on the class)

    def __init__(self, sd_model, prompt, negative_prompt="", seed=1, steps=4, n_iter=1, batch_size=1,
                 disable_extra_networks=False, scripts=None, script_args=()):
        self.sd_model, self.prompt, self.negative_prompt, self.seed, self.steps = sd_model, prompt, negative_prompt, seed, steps
        self.n_iter, self.batch_size, self.enable_hr = n_iter, batch_size, False
        self.disable_extra_networks, self.scripts, self.script_args = disable_extra_networks, scripts, list(script_args)
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
        self.iteration = 0
        self.extra_network_data = None
        self.cached_c = StableDiffusionProcessing.cached_c

    def clear_prompt_cache(self):
        self.cached_c = [None, None]
        StableDiffusionProcessing.cached_c = [None, None]

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        self.all_prompts = [self.prompt] * (self.n_iter * self.batch_size)
        self.all_seeds = [self.seed + i for i in range(len(self.all_prompts))]

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def conditioning(self, prompt):
        """Cached on (prompt without tags, steps, checkpoint, extra-network data), as Forge's get_conds_with_caching."""
        networks = {k: [a.items for a in v] for k, v in (self.extra_network_data or {}).items()}
        key = (prompt, self.steps, self.sd_model.sd_checkpoint_info, networks)
        if self.cached_c[0] == key:
            return self.cached_c[1]
        clip = self.sd_model.forge_objects.clip
        memory_management.load_models_gpu([clip.patcher])
        layer = dict(clip.cond_stage_model.named_modules())[TE_LAYER]
        g = torch.Generator().manual_seed(zlib.crc32(" ".join(prompt.split()).encode()))
        x = torch.randn(1, layer.in_features, generator=g)
        cond = layer(x)
        self.cached_c[0], self.cached_c[1] = key, cond
        return cond

    def sample(self, cond, steps, seed):
        unet = self.sd_model.forge_objects.unet
        memory_management.load_models_gpu([unet])
        modules = dict(unet.model.named_modules())
        q, k = modules[Q_LAYER], modules[K_LAYER]
        g = torch.Generator().manual_seed(seed)
        state = getattr(q.weight, "quant_state", None)  # a packed Linear (GGUF, 4-bit) declares no in_features
        width = getattr(q, "in_features", None) or (state.shape if state is not None else q.weight.shape)[1]
        x = torch.randn(1, width, generator=g)
        denoiser = types.SimpleNamespace(step=0, p=self)  # CFGDenoiser: its ``step`` counts evaluations
        progress = 0  # shared.state.sampling_step: set by the sampler's callback after each step
        for step in range(steps):
            params = script_callbacks.CFGDenoiserParams(x, progress, steps)
            params.denoiser = denoiser
            script_callbacks.cfg_denoiser_callback(params)
            x = x + 0.1 * torch.tanh(q(x) + k(cond))
            denoiser.step += 1
            progress = step
        return x


def create_infotext(p, prompt):
    params = {"Steps": p.steps, "Seed": p.seed, **p.extra_generation_params}
    line = ", ".join(f"{k}: {infotext_utils.quote(v)}" for k, v in params.items() if v is not None)
    return f"{prompt}\n{line}"


def process_images(p):
    p.sd_model, _just_reloaded = forge_model_reload()
    if p.scripts is not None:
        p.scripts.before_process(p)
    with torch.no_grad():
        return process_images_inner(p)


def process_images_inner(p):
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    for n in range(p.n_iter):
        p.iteration = n
        sd_models.forge_model_reload()
        p.sd_model = shared.sd_model
        p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()
        p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts)
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts)
        cond = p.conditioning(p.prompts[0])
        x = p.sample(cond, p.steps, p.all_seeds[n * p.batch_size])
        images.append(x.detach().clone())
        infotexts.append(create_infotext(p, p.all_prompts[n * p.batch_size]))
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    processed = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
