"""``python -m medfake.pipelines.cli``: the `medfake` command (launchers such as torchrun,
``deepspeed --module`` and srun start it this way)."""
from . import main

if __name__ == "__main__":
    main()
