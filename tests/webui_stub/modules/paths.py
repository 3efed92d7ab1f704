import os
import tempfile

data_path = os.environ.get("STUB_DATA_PATH") or tempfile.mkdtemp(prefix="webui-data-")
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
