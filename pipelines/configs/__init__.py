"""The job configs of ``pipelines/`` (one module per job), apart from the jobs themselves.

Each is a dataclass with the ``engine.core.config.JobConfig`` profile mechanism and the CLI
description of its fields; these modules import no torch, so the `medfake` command builds its
parser from them at once. The job modules import their config from here (``from
medfake.pipelines.synth import SynthConfig`` keeps working).
"""
