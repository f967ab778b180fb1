"""Each job option is stated once, in its pydantic field: the flags and their help are generated from it."""

import importlib
import json

import pytest
from pydantic import BaseModel, Field

from jobs.cli import add_model_flags, config_only_fields, flag_name, job_parser
from jobs.common import merge_config

JOB_MODELS = {
    "jobs.build_catalog": "CatalogJobConfig",
    "jobs.synthesize": "SynthJobConfig",
    "jobs.simulate": "SimulateJobConfig",
    "jobs.demo": "DemoConfig",
    "jobs.sample_novelty": "SampleNoveltyConfig",
    "jobs.build_retrieval": "RetrievalConfig",
    "jobs.export_movielens_ctr": "ExportConfig",
    "jobs.best_of_n": "BestOfNConfig",
    "jobs.serve": "ServeJobConfig",
    "jobs.train_novelty": "NoveltyTrainConfig",
    "jobs.train_alignment": "AlignmentTrainConfig",
    "jobs.train_ranker": "TrainJobConfig",
    "jobs.ablate_ranker": "AblationJobConfig",
    "jobs.join_feedback": "JoinConfig",
    "jobs.loop": "LoopConfig",
    "jobs.report": "ReportConfig",
}


def _model(module: str):
    return getattr(importlib.import_module(module), JOB_MODELS[module])


@pytest.mark.parametrize("module", sorted(JOB_MODELS))
def test_every_field_is_a_flag_whose_help_is_its_description(module, capsys):
    model = _model(module)
    parser = job_parser(model, "doc")
    flags = {a.dest: a for a in parser._actions}
    for name, field in model.model_fields.items():
        if name in config_only_fields(model):
            continue
        assert name in flags, f"{module}: field {name} has no flag"
        action = flags[name]
        assert action.option_strings[0] == flag_name(name)
        assert field.description in action.help
        if not field.is_required() and field.default not in (None, []):
            shown = " ".join(map(str, field.default)) if isinstance(field.default, list) else field.default
            assert f"default: {shown}" in action.help
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert "--config" in capsys.readouterr().out


def test_flags_override_the_config_file_and_the_rest_keeps_its_values(tmp_path):
    from jobs.best_of_n import BestOfNConfig

    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"catalog": "c", "novelty": "n", "alignment": "a", "slots": 3, "seed": 9}))
    parser = job_parser(BestOfNConfig, None)
    cfg = merge_config(BestOfNConfig, parser.parse_args(["--config", str(cfg_file), "--slots", "6"]))
    assert (cfg.slots, cfg.seed, cfg.temperature) == (6, 9, 1.5)  # flag, file, default
    assert cfg.samples_per_key == 30
    forced = merge_config(BestOfNConfig, parser.parse_args(["--config", str(cfg_file), "--force-publish"]))
    assert forced.force_publish is True and cfg.force_publish is False
    assert (
        merge_config(
            BestOfNConfig, parser.parse_args(["--config", str(cfg_file), "--no-force-publish"])
        ).force_publish
        is False
    )


def test_a_typed_flag_refuses_a_bad_value_and_literal_fields_are_choices(capsys):
    from jobs.simulate import SimulateJobConfig

    parser = job_parser(SimulateJobConfig, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--policy", "greedy"])
    assert "invalid choice: 'greedy'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--slate-size", "ten"])
    assert "invalid int value: 'ten'" in capsys.readouterr().err


def test_a_field_without_a_description_is_refused():
    class Bad(BaseModel):
        documented: int = Field(1, description="has help")
        bare: int = 2

    import argparse

    with pytest.raises(TypeError, match="Bad.bare: give the field a description"):
        add_model_flags(argparse.ArgumentParser(), Bad)


def test_the_sampling_jobs_share_one_options_model():
    from jobs.best_of_n import BestOfNFields
    from jobs.sample_novelty import SampleNoveltyFields, SamplingOptions

    shared = set(SamplingOptions.model_fields)
    assert {"slots", "n", "temperature", "seed", "novelty_actors", "novelty_gpus", "kv_cache_mib"} <= shared
    assert issubclass(BestOfNFields, SamplingOptions) and issubclass(SampleNoveltyFields, SamplingOptions)


def test_a_ranked_decoding_with_a_token_top_k_is_refused_up_front():
    from jobs.best_of_n import BestOfNFields

    cfg = BestOfNFields(catalog="c", novelty="n", alignment="a", decoding="distinct", temperature=0.7)
    assert cfg.sampling().decoding == "distinct" and cfg.sampling().temperature == 0.7
    with pytest.raises(
        ValueError, match="--top-k 5 truncates sampled tokens; --decoding top ranks whole names"
    ):
        BestOfNFields(catalog="c", novelty="n", alignment="a", decoding="top", top_k=5)
    with pytest.raises(ValueError, match="decoding"):
        BestOfNFields(catalog="c", novelty="n", alignment="a", decoding="beam")
