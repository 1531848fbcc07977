"""graft's LoRA trainer: a lower package that runs in its own process.

The gateway writes training examples (JSONL) and a config (JSON), then spawns

    python -m training.run CONFIG_JSON_PATH

which prints one JSON event per line on stdout (see `training.protocol`) and writes a PEFT
adapter (adapter_config.json + adapter_model.safetensors) into the config's out_dir.

Modules:
- `training.protocol`: the config (`TrainConfig.from_dict`), the events, exit codes.
- `training.data`: reading, tokenizing, batching and collating the examples.
- `training.device`: device and precision choice (measurements in its docstring).
- `training.checkpoint`: atomic checkpoints (LoRA weights + optimizer state + step) for resume.
- `training.trainer`: `train(config, on_event)`, the importable API.
- `training.run`: the process entry point (niceness, threads, SIGTERM, stdout protocol).
- `training.ray_task`: a training as a Ray task (GRAFT_TRAINER=ray; needs the `ray` extra).
- `training.durable`: crash-safe file writes (every package's: `adapters_store.durable` re-exports them).

This package never imports `service`, `indexer` or `adapters_store`; importing it (or
`training.protocol`) does not import torch.
"""
