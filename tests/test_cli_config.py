"""Job configs and the flags derived from them: one profile mechanism, one source of defaults.

Every field of every job config has a flag or is marked API-only; a flag defaults to None (the
value comes from the profile, whose base is the field default); ``--profile`` offers exactly the
config's profiles; ``from_dict`` names unknown keys; ``--config FILE`` values reach the job;
``synth status`` is a subcommand; parsing imports no torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from medfake.engine.core.config import JobConfig, cli_metadata, field_default, is_api_only
from medfake.engine.data.phantom_config import PhantomConfig
from medfake.engine.importers.config import ImportConfig
from medfake.export.config import OnnxExportConfig, TensorRTBuildConfig
from medfake.pipelines.cli import build_parser, main
from medfake.pipelines.cli.options import config_from_args, flag_name
from medfake.pipelines.configs.dreambooth import DreamBoothConfig
from medfake.pipelines.configs.experiment import ExperimentConfig
from medfake.pipelines.configs.gan import GANSampleConfig, GANTrainConfig
from medfake.pipelines.configs.run import RunConfig
from medfake.pipelines.configs.synth import SynthConfig
from medfake.pipelines.configs.train_clip import ClipTrainConfig
from medfake.pipelines.configs.train_generator import GeneratorTrainConfig

# job command -> its config
JOBS = {
    "data phantoms": PhantomConfig, "data import": ImportConfig,
    "train generator": GeneratorTrainConfig, "train clip": ClipTrainConfig,
    "synth": SynthConfig, "run": RunConfig, "experiment": ExperimentConfig,
    "export onnx": OnnxExportConfig, "export tensorrt": TensorRTBuildConfig,
    "finetune dreambooth": DreamBoothConfig, "gan train": GANTrainConfig,
    "gan sample": GANSampleConfig,
}
CONFIGS = sorted(set(JOBS.values()), key=lambda c: c.__name__)


def subparser(command: str) -> argparse.ArgumentParser:
    p = build_parser()
    for word in command.split():
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[word]
    return p


def actions(command: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in subparser(command)._actions}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_flag_or_is_api_only(cls):
    assert issubclass(cls, JobConfig)
    unmarked = [f.name for f in dataclasses.fields(cls)
                if (cli_metadata(f) is None) == (not is_api_only(f))]
    assert not unmarked, f"{cls.__name__}: mark these option(...) or api_only(): {unmarked}"


@pytest.mark.parametrize("command", JOBS)
def test_flags_match_the_fields(command):
    cls, acts = JOBS[command], actions(command)
    for f in dataclasses.fields(cls):
        meta = cli_metadata(f)
        if meta is None:
            assert f.name not in acts, f"API-only {cls.__name__}.{f.name} has a flag"
            continue
        a = acts[f.name]
        assert (a.option_strings or [a.dest])[0] == flag_name(f)
        # the field default is the one source: the flag adds nothing (None: from the profile)
        assert a.default is None or a.default == field_default(f), (command, f.name)
        if "choices" in meta:
            assert list(a.choices) == list(meta["choices"])
    p = acts["profile"]
    assert list(p.choices) == list(cls.profiles()) and p.default == cls.DEFAULT_PROFILE
    assert "config" in acts


def test_old_flag_spellings_and_choices_are_kept():
    spellings = {
        "synth": ["--model", "--real", "--out", "--guidance", "--size", "--format",
                  "--no-paste-back", "--mask-scale", "--outpaint-scale", "--per-real",
                  "--per-class", "--negative-prompt", "--clip-filter", "--memorization-threshold",
                  "--max-pending", "--world-size", "--trust-pickle", "--backend", "--streams"],
        "train clip": ["--finetune-mode", "--freeze", "--mix", "--no-tensorboard", "--zero",
                       "--ds-config", "--ft-steps", "--resume", "--stage", "--seeds",
                       "--no-zero-shot"],
        "finetune dreambooth": ["--class-images", "--prior-weight", "--no-prior", "--tokens",
                                "--use-8bit-adam", "--lora-rank", "--image-size"],
        "data import": ["--from", "--val", "--test", "--template", "--class-names",
                        "--salt-file", "--show-skipped", "--window", "--slices"],
        "data phantoms": ["--size", "--public-per-class", "--test-per-class"],
        "gan train": ["--kind", "--size", "--lr-g", "--grid-every"],
        "gan sample": ["--gan", "--real", "--out", "--per-class", "--size"],
        "export tensorrt": ["--batch", "--size", "--fp16", "--strict-fp32", "--workspace-gb"],
        "run": ["--name", "--out-root"],
    }
    for command, flags in spellings.items():
        strings = {s for a in subparser(command)._actions for s in a.option_strings}
        assert not set(flags) - strings, (command, set(flags) - strings)
    a = actions("synth")
    assert a["mask_scale"].nargs == 2 and a["mask_scale"].metavar == ("MIN", "MAX")
    assert list(a["backend"].choices) == ["auto", "torch", "onnx", "tensorrt", "openvino"]
    assert SynthConfig.__dataclass_fields__["backend"].default == "auto"  # what the docs say
    assert list(a["mode"].choices) == ["txt2img", "inpaint", "outpaint", "inpaint-outpaint"]
    c = actions("train clip")
    assert c["ft_freeze"].option_strings == ["--freeze"] and c["mix"].option_strings == ["--mix"]
    assert list(actions("data import")["source"].choices) == ["imagefolder", "medmnist", "csv",
                                                              "dicom"]
    assert actions("gan train")["kind"].required


def test_choice_lists_equal_the_engines():
    """The configs repeat a few engine constants so the CLI imports no torch: keep them equal."""
    from medfake.engine.clip.data import AUGMENTS
    from medfake.engine.diffusion.backends import BACKEND_CHOICES
    from medfake.engine.diffusion.backends.components import ALL_COMPONENTS
    from medfake.engine.synth.modes import MODES
    from medfake.pipelines.configs import synth, train_clip
    from medfake.export.config import COMPONENT_CHOICES, EXPORT_ATTENTION_HEADS_PER_CHUNK
    from medfake.engine.diffusion.backends import components
    assert synth.BACKEND_CHOICES == BACKEND_CHOICES and synth.MODES == MODES
    assert train_clip.AUGMENT_CHOICES == AUGMENTS and COMPONENT_CHOICES == ALL_COMPONENTS
    assert EXPORT_ATTENTION_HEADS_PER_CHUNK == components.EXPORT_ATTENTION_HEADS_PER_CHUNK


def test_profiles_keep_their_names_and_values():
    assert RunConfig.profiles() == ("embedded", "test") and RunConfig.DEFAULT_PROFILE == "embedded"
    assert ClipTrainConfig.profiles() == ("default", "embedded", "test")
    assert DreamBoothConfig.profiles() == ("default", "sd15")
    assert GANTrainConfig.profiles() == GeneratorTrainConfig.profiles() == ("default", "test")
    run = RunConfig.profile("test")
    assert run.generator == GeneratorTrainConfig.profile("test")
    assert run.clip == ClipTrainConfig.profile("test") and run.seeds == (0, 1)
    assert run.phantoms == PhantomConfig(n_public_per_class=120, n_train_per_class=20,
                                         n_val_per_class=5, n_test_per_class=20)
    assert RunConfig.profile() == RunConfig()
    gan = GANTrainConfig.profile("test", kind="acgan", k=3)
    assert (gan.kind, gan.image_size, gan.k, gan.steps) == ("acgan", 16, 3, 6)
    assert DreamBoothConfig.profile("sd15", steps=5).instance_format == "{token} {prompt}"
    with pytest.raises(ValueError, match="unknown RunConfig profile 'default'.*embedded, test"):
        RunConfig.profile("default")
    # a profile's nested configs are copies: changing one does not change the next
    RunConfig.profile("test").clip.steps = 999
    assert RunConfig.profile("test").clip.steps == 6


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_from_dict_rejects_an_unknown_key_naming_it(cls):
    with pytest.raises(ValueError) as e:
        cls.from_dict({"no_such_field": 1})
    msg = str(e.value)
    first = dataclasses.fields(cls)[0].name
    assert "'no_such_field'" in msg and "valid keys" in msg and first in msg


def test_from_dict_builds_nested_configs_and_tuples_and_round_trips():
    cfg = RunConfig.from_dict({"clip": {"steps": 3}, "seeds": [4, 5],
                               "phantoms": {"image_size": 64}}, profile="test")
    assert cfg.clip.steps == 3 and cfg.clip.model == "medfake-micro"  # over the test profile's
    assert cfg.seeds == (4, 5) and cfg.phantoms.image_size == 64
    assert cfg.phantoms.n_train_per_class == 20                       # the test profile's
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    s = SynthConfig.from_dict({"model_dir": "m", "real_dataset": "r", "out_dir": "o",
                               "mask_scale": [0.1, 0.2]})
    assert s.mask_scale == (0.1, 0.2)
    with pytest.raises(ValueError, match="SynthConfig needs model_dir, real_dataset, out_dir"):
        SynthConfig.profile()
    with pytest.raises(ValueError, match="unknown key.*'stepz'"):
        RunConfig.from_dict({"clip": {"stepz": 3}})


def test_config_file_then_flags(tmp_path):
    f = tmp_path / "synth.json"
    f.write_text(json.dumps({"steps": 7, "mask_scale": [0.2, 0.4], "model_dir": "fromfile",
                             "guidance_scale": 2.0}))
    a = build_parser().parse_args(["synth", "--config", str(f), "--real", "r", "--out", "o",
                                   "--guidance", "3", "--no-paste-back"])
    cfg = config_from_args(SynthConfig, a, command="synth")
    assert (cfg.model_dir, cfg.steps, cfg.mask_scale) == ("fromfile", 7, (0.2, 0.4))
    assert cfg.guidance_scale == 3.0 and cfg.paste_back is False and cfg.backend == "auto"

    clip = tmp_path / "clip.json"
    clip.write_text(json.dumps({"steps": 9, "ft_freeze": ["image:1"]}))
    a = build_parser().parse_args(["train", "clip", "--stage", "pretrain", "--profile", "test",
                                   "--config", str(clip), "--mix", "a:0.5", "--mix", "b:1",
                                   "--no-tensorboard"])
    cfg = config_from_args(ClipTrainConfig, a, command="train clip")
    assert (cfg.steps, cfg.batch_size, cfg.ft_freeze) == (9, 8, ("image:1",))
    assert cfg.mix == ("a:0.5", "b:1") and cfg.tensorboard is False

    a = build_parser().parse_args(["export", "tensorrt", "--onnx", "x", "--out", "y",
                                   "--batch", "2:4:8", "--size", "256:512:768"])
    cfg = config_from_args(TensorRTBuildConfig, a, command="export tensorrt",
                           **TensorRTBuildConfig.parse_batch(a.batch),
                           **TensorRTBuildConfig.parse_size(a.size))
    assert (cfg.min_batch, cfg.opt_batch, cfg.max_batch, cfg.workspace_gb) == (2, 4, 8, 4.0)
    assert (cfg.min_size, cfg.opt_size, cfg.max_size, cfg.strict_fp32) == (256, 512, 768, False)

    a = build_parser().parse_args(["data", "import", "--from", "csv", "m.csv", "--out", "o",
                                   "--class-names", "a,b", "--template", "{cls} x",
                                   "--val", "0.2"])
    cfg = config_from_args(ImportConfig, a, command="data import")
    assert cfg.class_names == ["a", "b"] and cfg.templates == ["{cls} x"]
    assert cfg.val_fraction == 0.2 and cfg.test_fraction == 0.1

    a = build_parser().parse_args(["gan", "train", "--kind", "acgan", "--real", "r", "--out",
                                   "o", "--profile", "test", "--size", "32"])
    cfg = config_from_args(GANTrainConfig, a, command="gan train")
    assert (cfg.kind, cfg.image_size, cfg.steps) == ("acgan", 32, 6)


def test_config_file_reaches_the_job_and_bad_files_are_one_line(tmp_path, capsys):
    from medfake.engine.data.reader import DatasetInfo
    f = tmp_path / "world.json"
    f.write_text(json.dumps({"n_public_per_class": 2, "n_train_per_class": 2,
                             "n_val_per_class": 1, "n_test_per_class": 1,
                             "samples_per_shard": 4}))
    main(["data", "phantoms", "--out", str(tmp_path / "w"), "--config", str(f),
          "--test-per-class", "2"])
    info = DatasetInfo.load(tmp_path / "w" / "hospital")
    assert info.count("train") == 6 and info.count("test") == 6
    assert len(info.splits["train"]["shards"]) == 2  # samples_per_shard (API-only) came through
    capsys.readouterr()
    for content, expected in (("[1]", "must hold a JSON object"), ("{", "not valid JSON"),
                              ('{"sizee": 3}', "unknown key(s) 'sizee'")):
        f.write_text(content)
        with pytest.raises(SystemExit) as e:
            main(["data", "phantoms", "--out", str(tmp_path / "x"), "--config", str(f)])
        assert e.value.code == 2 and expected in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_synth_status_is_a_subcommand(tmp_path, capsys):
    a = build_parser().parse_args(["synth", "status", str(tmp_path), "--finalize",
                                   "--world-size", "2", "--json", "s.json"])
    assert a.fn.__name__ == "_status" and a.job == str(tmp_path)
    assert a.finalize and a.world_size == 2 and a.json == "s.json" and not a.no_verify
    a = build_parser().parse_args(["synth", "--model", "m", "--real", "r", "--out", "o"])
    assert a.fn.__name__ == "_run" and a.model_dir == "m"
    with pytest.raises(SystemExit) as e:
        main(["synth", "status", str(tmp_path)])
    assert e.value.code == 2 and "no synth_plan.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["synth", "--real", "r"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "needs --model, --out to run a job" in err


def test_synth_status_reports_a_real_job(small_world, tmp_path, capsys):
    """A tiny synthesis job whose settings come from --config, then `synth status` on it."""
    _, hospital = small_world
    cfg = tmp_path / "synth.json"
    cfg.write_text(json.dumps({"per_class": 1, "steps": 1, "samples_per_shard": 2,
                               "batch_size": 3, "backend": "torch"}))
    main(["model", "init", "--preset", "micro", "--out", str(tmp_path / "m")])
    main(["synth", "--config", str(cfg), "--model", str(tmp_path / "m"), "--real",
          str(hospital), "--out", str(tmp_path / "syn")])
    capsys.readouterr()
    main(["synth", "status", str(tmp_path / "syn"), "--world-size", "2", "--json",
          str(tmp_path / "st.json")])
    out = capsys.readouterr().out
    assert "3 samples planned in 2 shards" in out and "shards: 2 done" in out, out
    assert "rank 1/2: 1/1 done" in out and "dataset.json: complete" in out, out
    assert json.loads((tmp_path / "st.json").read_text())
    plan = json.loads((tmp_path / "syn" / "synth_plan.json").read_text())
    assert '"steps": 1' in json.dumps(plan) and '"backend": "torch"' in json.dumps(plan)


def test_parsing_imports_no_torch():
    code = ("import sys\nfrom medfake.pipelines.cli import build_parser\n"
            "p = build_parser()\n"
            "for argv in (['synth', '--model', 'm', '--real', 'r', '--out', 'o'],\n"
            "             ['train', 'clip', '--stage', 'pretrain'], ['run', '--profile', 'test']):\n"
            "    p.parse_args(argv)\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'open_clip', 'numpy', 'PIL')\n"
            "             if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
