"""A job, in the order the WebUI runs it (modules/processing.py, process_images and the hires pass):

before_process → setup prompts → process → per batch: before_process_batch, parse tags, extra networks activate
(before the text encoder), process_batch, conditioning, sampling (the per-step callback at each step) → hires pass:
activate the hires prompt's tags, its conditioning, before_hr, sampling → extra networks deactivate → postprocess.

The "image" is what a tiny sampler computes with the model's real layers: a text-encoder layer turns the prompt
into a conditioning, and each step runs UNet layers on the latent and that conditioning, so text-encoder LoRAs,
UNet LoRAs and step schedules all show in the result.
"""

import zlib

import torch

from modules import extra_networks, infotext_utils, script_callbacks, sd_models, shared

TE_LAYER = "cond_stage_model.wrapped.transformer.text_model.encoder.layers.0.self_attn.q_proj"
Q_LAYER = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"
K_LAYER = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"


class Processed:
    def __init__(self, p, images, infotexts):
        self.images, self.infotexts, self.comments = images, infotexts, "\n".join(p.comments)


class StableDiffusionProcessing:
    def __init__(self, sd_model, prompt, negative_prompt="", seed=1, steps=4, n_iter=1, batch_size=1, enable_hr=False,
                 hr_prompt="", hr_steps=2, disable_extra_networks=False, scripts=None, script_args=(), refiner=None):
        self.sd_model, self.prompt, self.negative_prompt, self.seed, self.steps = sd_model, prompt, negative_prompt, seed, steps
        self.n_iter, self.batch_size, self.enable_hr, self.hr_prompt, self.hr_steps = n_iter, batch_size, enable_hr, hr_prompt, hr_steps
        self.disable_extra_networks, self.scripts, self.script_args = disable_extra_networks, scripts, list(script_args)
        self.refiner = refiner  # a CheckpointInfo swapped in half-way through sampling, as the SDXL refiner is
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
        self.iteration = 0
        self.extra_network_data = None
        self.hr_extra_network_data = None

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        self.all_prompts = [self.prompt] * (self.n_iter * self.batch_size)
        self.all_hr_prompts = [self.hr_prompt or self.prompt] * (self.n_iter * self.batch_size)
        self.all_seeds = [self.seed + i for i in range(len(self.all_prompts))]

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)
        if self.enable_hr:
            hr = self.all_hr_prompts[self.iteration * self.batch_size:(self.iteration + 1) * self.batch_size]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(hr)

    def conditioning(self, prompt):
        modules = dict(self.sd_model.named_modules())
        g = torch.Generator().manual_seed(zlib.crc32(" ".join(prompt.split()).encode()))  # as tokens: spacing does not matter
        layer = modules[TE_LAYER]
        x = torch.randn(1, layer.in_features, generator=g).to(layer.weight.dtype)
        return layer(x)

    def sample(self, cond, steps, seed, start=None):
        modules = dict(shared.sd_model.named_modules())
        q, k = modules[Q_LAYER], modules[K_LAYER]
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, q.in_features, generator=g).to(q.weight.dtype) if start is None else start
        progress = 0  # shared.state.sampling_step: the sampler's callback sets it after each step (0, 0, 1, 2, …)
        for step in range(steps):
            script_callbacks.cfg_denoiser_callback(script_callbacks.CFGDenoiserParams(x, progress, steps))
            if self.refiner is not None and step == steps // 2 and not self.is_hr_pass:
                sd_models.reload_model_weights(info=self.refiner)
                modules = dict(shared.sd_model.named_modules())
                q, k = modules[Q_LAYER], modules[K_LAYER]
            x = x + 0.1 * torch.tanh(q(x) + k(cond))
            progress = step
        return x


def create_infotext(p, prompt):
    params = {"Steps": p.steps, "Seed": p.seed, **p.extra_generation_params}
    line = ", ".join(f"{k}: {infotext_utils.quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    shared.sd_model = p.sd_model
    with torch.no_grad():
        return process_images_inner(p)


def process_images_inner(p):
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    for n in range(p.n_iter):
        p.iteration = n
        p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts)
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts)
        cond = p.conditioning(p.prompts[0])
        x = p.sample(cond, p.steps, p.all_seeds[n * p.batch_size])
        if p.enable_hr:
            p.is_hr_pass = True
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.hr_extra_network_data)
            hr_cond = p.conditioning(p.hr_prompts[0])
            if p.scripts is not None:
                p.scripts.before_hr(p)
            x = p.sample(hr_cond, p.hr_steps, 0, start=x)
            p.is_hr_pass = False
        images.append(x.detach().clone())
        infotexts.append(create_infotext(p, p.all_prompts[n * p.batch_size]))
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    processed = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
