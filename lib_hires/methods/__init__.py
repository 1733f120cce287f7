"""One module per method: each turns its parameters into a plan for a pass and the hooks that run it."""
