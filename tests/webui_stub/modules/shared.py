import types

from modules.options import OptionInfo, Options  # noqa: F401

opts = Options()
opts.data.update({"lora_add_hashes_to_infotext": True, "sd_lora": "None", "extra_networks_default_multiplier": 1.0,
                  "lora_preferred_name": "Alias from file"})
cmd_opts = types.SimpleNamespace(lora_dir=None, lyco_dir_backcompat=None)
sd_model = None
