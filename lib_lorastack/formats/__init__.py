"""Files and formats: reading LoRA files, hashes, key maps, model tables, writers."""
