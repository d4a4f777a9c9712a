"""The `trl-rankalign` command.

- `main`: the entry point (`trl-rankalign = trl_rankalign.cli.main:main`), subcommands, `accelerate launch` relaunch;
- `stages`: the training stages (registry + one run function each), on `stage_args`, `stage_data`, `stage_runner`;
- `pipeline`: multi-stage recipes; `rank`: the AI-feedback command; `eval`: the evaluation commands.
"""
