"""Policy: the YAML config model, its loader and the pure request evaluator."""
