"""Typed parameters, configuration files and the job's flags (no Spark)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pmf_spark.config.files import load_config_file, resolve, to_toml
from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.errors import ConfigError

import train_pmf

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("field,value,message", [
    ("rank", 0, "rank: must be >= 1"),
    ("rank", 2.5, "rank: expected an integer"),
    ("lambda_u", -1.0, "lambda_u: must be >= 0"),
    ("lambda_v", float("nan"), "lambda_v: must be finite"),
    ("epochs", 0, "epochs: must be >= 1"),
    ("link", "tanh", "link: 'tanh' is not one of linear, sigmoid"),
    ("reg_scaling", "n", "reg_scaling: 'n' is not one of none, count"),
    ("biases", "yes", "biases: expected true or false"),
])
def test_model_params_name_the_bad_field(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        PMFParams.of(**{field: value})


@pytest.mark.parametrize("changes,message", [
    ({"test_fraction": 0.0}, "test_fraction: must be > 0"),
    ({"test_fraction": 1.0}, "test_fraction: must be < 1"),
    ({"format": "tsv"}, "format: 'tsv' is not one of"),
    ({"rating_min": 5.0, "rating_max": 1.0}, "rating_min"),
    ({"test": "x.test"}, "needs --ratings"),
    ({"synthetic": "huge"}, "synthetic: 'huge'"),
])
def test_job_config_names_the_bad_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        JobConfig(**changes)


def test_params_round_trip_through_dicts():
    p = PMFParams.of(rank=7, lambda_u=3.5, link="sigmoid", biases=False, blocks=3)
    assert PMFParams.from_dict(p.to_dict()) == p
    j = JobConfig(ratings="a.csv", user_col="u", test_fraction=0.2)
    assert JobConfig.from_dict(j.to_dict()) == j


def test_unknown_key_suggests_the_nearest(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nlamda_u = 3.0\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lamda_u' in \[model\] "
                                          r"\(did you mean 'lambda_u'\?\)"):
        load_config_file(str(cfg))
    cfg.write_text("[modle]\nrank = 3\n")
    with pytest.raises(ConfigError, match=r"unknown table \[modle\] \(did you mean \[model\]\?\)"):
        load_config_file(str(cfg))


def test_precedence_defaults_file_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nrank = 12\nlambda_u = 4.0\n[job]\noutput = "from-file"\n')
    parser = train_pmf.build_parser()
    ns = parser.parse_args(["--config", str(cfg), "--rank", "5", "--no-biases"])
    job, params = resolve(load_config_file(str(cfg)), train_pmf.flags_to_sections(ns))
    assert params.model.rank == 5                  # flag beats file
    assert params.fit.lambda_u == 4.0              # file beats default
    assert params.fit.lambda_v == PMFParams().fit.lambda_v
    assert params.model.biases is False
    assert job.output == "from-file"


def test_lambda_shortcut_sets_both_sides():
    ns = train_pmf.build_parser().parse_args(["--lambda", "20"])
    _, params = resolve(None, train_pmf.flags_to_sections(ns))
    assert (params.fit.lambda_u, params.fit.lambda_v) == (20.0, 20.0)


def test_effective_config_round_trips_through_toml(tmp_path):
    job = JobConfig(ratings="r.dat", format="movielens-dat", output="o")
    model = PMFParams.of(rank=9, link="sigmoid", lambda_u=20.0, chunk_ratings=5000)
    text = to_toml(job, model)
    path = tmp_path / "eff.toml"
    path.write_text(text)
    job2, model2 = resolve(load_config_file(str(path)), None)
    assert (job2, model2) == (job, model)


@pytest.mark.parametrize("name", ["default", "seed", "movielens-10m", "bpmf"])
def test_named_configurations_load(name):
    path = ROOT / "conf" / f"{name}.toml"
    job, model = resolve(load_config_file(str(path)), None)
    if name == "default":
        assert (job, model) == (JobConfig(), PMFParams())   # the file documents the defaults
    if name == "seed":
        assert (model.model.rank, model.fit.lambda_u, model.fit.lambda_v, model.model.link,
                model.model.biases) == \
            (30, 20.0, 20.0, "sigmoid", False)
        assert job.test_fraction == 0.15
    assert tomllib.loads(path.read_text())  # valid TOML


def test_print_config_prints_effective_toml(capsys):
    assert train_pmf.main(["--print-config", "--rank", "11"]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text)["model"]["rank"] == 11


def test_bad_flag_value_is_one_line_exit_2(capsys):
    assert train_pmf.main(["--rank", "0", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: rank: must be >= 1, got 0"]


def test_groups_tables_and_legacy_files(tmp_path):
    """[model]/[fit]/[engine] tables; old files with everything under [model] still load;
    a key in the wrong new table names the table it belongs to."""
    new = tmp_path / "new.toml"
    new.write_text("[model]\nrank = 7\n[fit]\nlambda_u = 3.0\n[engine]\nblocks = 2\n")
    legacy = tmp_path / "legacy.toml"
    legacy.write_text("[model]\nrank = 7\nlambda_u = 3.0\nblocks = 2\n")
    a = resolve(load_config_file(str(new)), None)[1]
    b = resolve(load_config_file(str(legacy)), None)[1]
    assert a == b == PMFParams.of(rank=7, lambda_u=3.0, blocks=2)
    assert (a.model.rank, a.fit.lambda_u, a.engine.blocks) == (7, 3.0, 2)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[engine]\nrank = 7\n")
    with pytest.raises(ConfigError, match=r"'rank' belongs in \[model\], not \[engine\]"):
        load_config_file(str(wrong))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config_file(str(tmp_path))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("[job]\noutput = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(str(bad))


def test_engine_knobs_stay_out_of_the_fingerprint_and_the_model_section():
    from types import SimpleNamespace

    from pmf_spark.train.checkpoint import fingerprint

    data = SimpleNamespace(summary=lambda: {"n_users": 3, "n_items": 4, "n_train": 9,
                                            "n_test": 2, "fingerprint": "ab"})
    base = PMFParams.of(rank=5)
    for engine_change in ({"blocks": 7}, {"gram_dtype": "float32"}, {"chunk_ratings": 5000},
                          {"resident_mb": 0}):
        assert fingerprint(base.replace(**engine_change), JobConfig(), data) == \
            fingerprint(base, JobConfig(), data)
        assert base.replace(**engine_change).to_dict()["model"] == base.to_dict()["model"]
        assert base.replace(**engine_change).to_dict()["fit"] == base.to_dict()["fit"]
    assert fingerprint(base.replace(lambda_u=1.0), JobConfig(), data) != \
        fingerprint(base, JobConfig(), data)
    assert "blocks" not in str(fingerprint(base, JobConfig(), data))


def test_every_registered_model_states_its_math():
    """Adding a model is one module and one registry line: each strategy's module
    documents its objective (or model), its update and what it broadcasts."""
    import sys

    from pmf_spark.config.params import FitParams
    from pmf_spark.models import REGISTRY

    assert set(REGISTRY) >= {"pmf", "bpmf"}
    for name, cls in REGISTRY.items():
        doc = sys.modules[cls.__module__].__doc__ or ""
        assert "Broadcast" in doc and "kernel" in doc.lower() and "update" in doc.lower(), name
        assert FitParams(model=name).model == name
    with pytest.raises(ConfigError, match="model: 'nope' is not one of"):
        FitParams(model="nope")
