"""Policy: compiling the configured rules and evaluating a shape request against them."""
