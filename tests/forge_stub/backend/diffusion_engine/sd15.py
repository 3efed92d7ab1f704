from backend.diffusion_engine.base import ForgeDiffusionEngine


class StableDiffusion(ForgeDiffusionEngine):
    def __init__(self, forge_objects):
        super().__init__(forge_objects)
        self.is_sd1 = True


class StableDiffusion3(ForgeDiffusionEngine):
    """A family LoRA Stack does not handle (its tags go to the built-in)."""

    def __init__(self, forge_objects):
        super().__init__(forge_objects)
        self.is_sd3 = True
