"""medfake.pipelines: jobs composed from the engine, and the `medfake` CLI."""
