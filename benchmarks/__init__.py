"""Speed and memory of the patch engine, side by side with diffusers and with a plain copy (the floor)."""
