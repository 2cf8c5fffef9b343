"""The control plane: the process and its lifecycle (`app`), signals and reloads, the worker
processes under their supervisor (`supervisor`, `worker`) and what passes between them."""
