"""Command-line tools on the core: inspect, demo, the model skeleton and built-in examples."""
